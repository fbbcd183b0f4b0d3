"""Today's training recipe against the paper's at CPU scale, on real data that ships with
scikit-learn: the handwritten digits (configs/digits.py: CIFAR ResNet-20 at 16 px, 15 epochs) and
JPEG crops of the two sample photos through the ImageNet path (configs/photos.py: 32 px, 12
epochs), three seeds each, the same net, batch, steps and learning-rate schedule for both.

'paper': the paper's augmentation (digits: pad-and-crop; photos: scale augmentation, flip, PCA
colour noise), softmax cross-entropy, weight decay 1e-4.
'modern': the parts of torchvision's and "ResNet strikes back"'s recipes that fit a short run on
top of the same augmentation: RandAugment (2 ops at magnitude 9 of 31), random erasing 0.1,
mixup 0.2 and CutMix 1.0, label smoothing 0.1, weight decay 5e-5 on kernels only, and the
weights' moving average (decay 0.99 with timm's warm-up), whose error is reported beside the raw
weights'. Left out: the long schedules (600 epochs), repeated augmentation (it shows its gain over
many epochs), LAMB (large batches).
'rsb': "ResNet strikes back"'s A3 procedure's parts on top of the same augmentation: LAMB at
5e-3 (A1's rate; of 2e-3, 5e-3 and 1e-2 on a fourth seed, none was best on both datasets) with
the gradients clipped to norm 1, weight decay 0.02 on kernels only, BCE with target threshold
0.2, mixup 0.1 and CutMix 1.0, timm's RandAugment rand-m6-mstd0.5-inc1.

Hardware: a 2-core CPU; about 15 minutes for the twelve runs of 'paper' and 'modern', 7 for
'rsb''s six (2-core Intel Xeon, 2026-12-02).

  python -m resnet_jax.study --study=configs/experiments/modern_vs_paper.py --root=/tmp/modern
  python -m resnet_jax.report /tmp/modern/*
"""

from configs import digits, photos

SEEDS = (0, 1, 2)
RUNS = tuple(
  f'{data}_{recipe}_s{seed}'
  for data in ('digits', 'photos')
  for recipe in ('paper', 'modern', 'rsb')
  for seed in SEEDS
)


def get_config(run: str = 'digits_modern_s0'):
  if run not in RUNS:
    raise ValueError(f'run must be one of {RUNS}, got {run!r}')
  data, recipe, seed = run.split('_')
  c = {'digits': digits, 'photos': photos}[data].get_config()
  c.seed = int(seed[1:])
  if recipe == 'modern':
    c.augment_policy = 'randaugment'
    c.random_erasing = 0.1
    c.mixup_alpha, c.cutmix_alpha = 0.2, 1.0
    c.label_smoothing = 0.1
    c.weight_decay = 5e-5
    c.ema_decay, c.ema_warmup = 0.99, True
  if recipe == 'rsb':
    c.optimizer = 'lamb'
    c.learning_rate, c.lr_reference_batch = 5e-3, c.batch_size
    c.grad_clip_norm = 1.0
    c.weight_decay = 0.02
    c.loss, c.bce_target_threshold = 'bce', 0.2
    c.mixup_alpha, c.cutmix_alpha = 0.1, 1.0
    c.augment_policy = 'randaugment_timm'
    c.randaugment_magnitude, c.randaugment_magnitude_std = 6, 0.5
    c.randaugment_increasing = True
  return c
