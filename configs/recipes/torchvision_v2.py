"""ResNet-50 with torchvision's "new training recipe" (its ResNet50_Weights.IMAGENET1K_V2).

Published: 80.858% top-1 (19.142% error) on ImageNet val, one 224 crop of the 232-px image
(torchvision's weights table; Vryniotis, "How to Train State-Of-The-Art Models Using TorchVision's
Latest Primitives", 2021). torchvision's reference trained it with 8 GPUs x 128 images per step
(batch 1,024) for 600 epochs; the post gives no wall time.

The recipe (torchvision's references/classification command for these weights): SGD momentum 0.9,
lr 0.5 at batch 1,024 with cosine decay after a 5-epoch linear warm-up from 0.01 of it, weight
decay 2e-5 with none on norm layers, label smoothing 0.1, mixup 0.2 and CutMix 1.0 (one of the
two per batch), random-resized crops of 176 px and flip, TrivialAugmentWide, random erasing 0.1,
repeated augmentation x4, the weights' moving average every 32 steps (decay 0.99998 adjusted to
the batch and epochs: 1 - 2e-5 x 1024 x 32 / 600), tested at 224 of 232.

Differences: weight decay here spares every tensor but conv and dense kernels (torchvision's
--norm-weight-decay 0.0 spares norm layers only: the classifier's bias is decayed there);
torchvision resets its average to the weights during the warm-up epochs, this average starts from
the initial weights (ema_warmup is off, as torchvision's).

  python -m resnet_jax.main --config=configs/recipes/torchvision_v2.py --workdir=gs://BUCKET/v2 \\
    --config.data_dir=gs://BUCKET/tensorflow_datasets --config.half_precision=True
"""

from configs import r50

EPOCHS, BATCH, EMA_EVERY = 600, 1024, 32


def get_config():
  c = r50.get_config()
  c.recipe = 'torchvision_v2'
  c.batch_size = BATCH
  c.learning_rate = 0.5
  c.lr_reference_batch = BATCH
  c.momentum = 0.9
  c.weight_decay = 2e-5
  c.label_smoothing = 0.1
  c.num_epochs = EPOCHS
  c.schedule = 'cosine'
  c.warmup_epochs = 5
  c.warmup_start_factor = 0.01
  c.mixup_alpha, c.cutmix_alpha = 0.2, 1.0
  c.train_augment = 'inception'
  c.image_size = 176
  c.eval_image_size, c.eval_resize = 224, 232
  c.normalization = 'channel_mean_std'
  c.lighting_std = 0.0
  c.augment_policy = 'trivialaugment'
  c.random_erasing = 0.1
  c.repeated_augmentation = 4
  c.ema_every = EMA_EVERY
  c.ema_decay = 1.0 - min(1.0, (1.0 - 0.99998) * BATCH * EMA_EVERY / EPOCHS)
  c.best_metric = 'ema_top1_err'
  return c
