"""ResNet-50 with LARS at batch 3,200, as MLPerf Training's ResNet-50 benchmark trains it.

Published: MLPerf's quality target is 75.9% top-1 (24.1% error) on ImageNet val (one 224 crop);
v4.0 submissions reached it at this batch in about 35 epochs, 8 x H200 in 12.03 min (about
7,950 img/s per GPU), 8 x H100 in about 13.2 min (../shared/FAMILY.md).

The recipe: ResNet-50 v1.5 (the stride on the 3x3: torchvision's and this project's default),
LARS (trust coefficient 0.001, momentum 0.9; BN and biases out of the trust ratio and the
decay), weight decay 5e-5, label smoothing 0.1, a linear warm-up then polynomial decay of power
2 to 0, random-resized crop and flip, per-channel normalisation. The peak rate and warm-up are
what each submission tunes for its batch and hardware; 10.0 over 2 epochs are starting values
here, not a verified submission's (sweep them with resnet_jax.study's extra flags). MLPerf
stops at the target; this run trains its 35 epochs and evaluates every epoch.

  python -m resnet_jax.main --config=configs/recipes/mlperf_lars.py --workdir=gs://BUCKET/lars \\
    --config.data_dir=gs://BUCKET/tensorflow_datasets --config.half_precision=True
"""

from configs import r50


def get_config():
  c = r50.get_config()
  c.recipe = 'mlperf_lars'
  c.batch_size = 3200
  c.optimizer = 'lars'
  c.learning_rate = 10.0
  c.lr_reference_batch = 3200  # LARS's rate is set for the batch, not scaled from 256
  c.lars_trust_coefficient = 0.001
  c.momentum = 0.9
  c.weight_decay = 5e-5
  c.label_smoothing = 0.1
  c.num_epochs = 35
  c.schedule = 'poly'
  c.poly_power = 2.0
  c.warmup_epochs = 2
  c.train_augment = 'inception'
  c.normalization = 'channel_mean_std'
  c.lighting_std = 0.0
  return c
