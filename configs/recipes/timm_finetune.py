"""Fine-tuning released weights the way timm's train.py is driven for it: AdamW with layer-wise
learning-rate decay, a cosine schedule after a warm-up, and timm's augmentation.

The flags of timm's train.py this config mirrors (8 processes x 128 images):

  train.py --pretrained --opt adamw --lr 1e-3 --weight-decay 0.05 --layer-decay 0.75 \\
    --sched cosine --epochs 50 --warmup-epochs 5 --warmup-lr 1e-6 --smoothing 0.1 \\
    --mixup 0.8 --cutmix 1.0 --aa rand-m9-mstd0.5-inc1 --drop-path 0.1 -b 128

that is: torch's AdamW (betas 0.9, 0.999, eps 1e-8; decoupled decay on kernels only, timm's
no-decay list), each stage's rate times 0.75 per stage above it (timm's param_groups_layer_decay),
label smoothing 0.1, mixup 0.8 or CutMix 1.0 per batch at odds 0.5, random-resized crops and
flips with RandAugment rand-m9-mstd0.5-inc1, stochastic depth 0.1, tested at 224 of 256. The
argument is the epochs (default 50).

  python -m resnet_jax.main --config=configs/recipes/timm_finetune.py:30 --workdir=/tmp/ft \\
    --config.dataset=folder --config.data_dir=/data/my_images \\
    --config.model=resnet50 --config.init_from=timm:resnet50.a1_in1k

Differences: timm's --warmup-lr is an absolute rate (1e-6); here the warm-up starts at the same
fraction of the peak (1e-3 of it).
"""

from configs import default

BATCH, LEARNING_RATE = 1024, 1e-3


def get_config(epochs: str = '50'):
  c = default.get_config()
  c.batch_size = BATCH
  c.learning_rate, c.lr_reference_batch = LEARNING_RATE, BATCH
  c.optimizer = 'adamw'
  c.adam_betas, c.adam_eps = (0.9, 0.999), 1e-8
  c.weight_decay = 0.05
  c.layer_decay = 0.75
  c.num_epochs = float(epochs)
  c.schedule = 'cosine'
  c.warmup_epochs = 5.0
  c.warmup_start_factor = 1e-6 / LEARNING_RATE
  c.label_smoothing = 0.1
  c.mixup_alpha, c.cutmix_alpha = 0.8, 1.0
  c.train_augment = 'inception'
  c.image_size = 224
  c.eval_resize = 256
  c.normalization = 'channel_mean_std'
  c.lighting_std = 0.0
  c.augment_policy = 'randaugment_timm'
  c.randaugment_magnitude = 9
  c.randaugment_magnitude_std = 0.5
  c.randaugment_increasing = True
  c.drop_path_rate = 0.1
  return c
