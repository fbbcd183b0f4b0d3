"""ResNet-50 with "ResNet strikes back" (Wightman, Touvron, Jegou 2021): procedures A1, A2 and
A3, the procedure the config argument.

Published (ImageNet val top-1 of one 224 crop, crop ratio 0.95): A1 80.4% (600 epochs), A2 79.8%
(300), A3 78.1% (100 epochs at 160 px, tested at 224). The paper trained A1 in 4.6 days on one
node of 4 V100 32GB GPUs (batch 2,048, mixed precision); A2 and A3 cost about half and a tenth of
that by epochs and pixels (an estimate, not a published time).

The procedures (the paper's Table 1 and timm's Lamb, Mixup and RandAugment, which it ran): LAMB
(betas 0.9 and 0.999, eps 1e-6, gradients clipped to global norm 1, timm's default) at lr 5e-3
(A3 8e-3) for batch 2,048, cosine decay after 5 linear warm-up epochs, weight decay 0.01 (A2 and
A3 0.02) on kernels only, which alone take LAMB's trust ratio; binary cross-entropy with target
threshold 0.2 (timm's --bce-target-thresh of the published A1-A3 runs) and no label smoothing;
mixup 0.2 (A2, A3 0.1) and CutMix 1.0, one of the two per batch at odds 0.5; random-resized crops
and flip, then timm's RandAugment rand-m7-mstd0.5-inc1 (A3 m6): two ops of its 15, each applied
at odds 0.5, at a level of normal(7, 0.5) of 10, the geometric ones bilinear or bicubic at random
with the mean colour as fill; repeated augmentation x3 (not A3); stochastic depth 0.05 (not A3);
no EMA, dropout or random erasing; tested with the shorter side at 235 (224 / 0.95).

Differences, all of the data path's randomness rather than the optimisation: mixup's partner and
CutMix's box follow torchvision (each row with the row before it in the global batch; its box
rule), timm pairs each row with its batch reversed and rounds the box its own way; the crops are
resized with TF's bilinear filter, timm's with PIL's bilinear or bicubic (chosen per image); the
learning rate moves every step, timm's scheduler once per epoch (its warm-up starts at 1e-5
absolute, here at 1e-5 / lr of the peak); with k = 3 not dividing 2,048, each batch holds 683
examples, the last one twice (timm's sampler lets the copies run across batches).

  python -m resnet_jax.main --config=configs/recipes/rsb.py:a1 --workdir=gs://BUCKET/rsb_a1 \\
    --config.data_dir=gs://BUCKET/tensorflow_datasets --config.half_precision=True
"""

from configs import r50

PROCEDURES = {
  # epochs, lr, weight decay, mixup, RandAugment level, repeats, drop path, train size
  'a1': (600, 5e-3, 0.01, 0.2, 7, 3, 0.05, 224),
  'a2': (300, 5e-3, 0.02, 0.1, 7, 3, 0.05, 224),
  'a3': (100, 8e-3, 0.02, 0.1, 6, 1, 0.0, 160),
}
BATCH = 2048


def get_config(procedure: str = 'a1'):
  if procedure not in PROCEDURES:
    raise ValueError(f'procedure must be one of {tuple(PROCEDURES)}, got {procedure!r}')
  epochs, lr, decay, mixup, level, repeats, drop_path, size = PROCEDURES[procedure]
  c = r50.get_config()
  c.recipe = f'rsb_{procedure}'
  c.batch_size = BATCH
  c.optimizer = 'lamb'
  c.learning_rate = lr
  c.lr_reference_batch = BATCH
  c.adam_betas, c.adam_eps = (0.9, 0.999), 1e-6
  c.grad_clip_norm = 1.0
  c.weight_decay = decay
  c.num_epochs = epochs
  c.schedule = 'cosine'
  c.warmup_epochs = 5
  c.warmup_start_factor = 1e-5 / lr
  c.loss = 'bce'
  c.bce_target_threshold = 0.2
  c.label_smoothing = 0.0
  c.mixup_alpha, c.cutmix_alpha = mixup, 1.0
  c.train_augment = 'inception'
  c.image_size = size
  c.eval_image_size, c.eval_resize = 224, 235
  c.normalization = 'channel_mean_std'
  c.lighting_std = 0.0
  c.augment_policy = 'randaugment_timm'
  c.randaugment_magnitude = level
  c.randaugment_magnitude_std = 0.5
  c.randaugment_increasing = True
  c.repeated_augmentation = repeats
  c.drop_path_rate = drop_path
  return c
