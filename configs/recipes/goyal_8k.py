"""ResNet-50 on ImageNet in one hour: Goyal et al. 2017, "Accurate, Large Minibatch SGD".

Published: 76.3% top-1 (23.74% error, Table 1, kn = 8k), one 224 crop of the 256-px image, on
256 Tesla P100 GPUs (32 per BN group of 32 images each) in about one hour for 90 epochs.

The recipe: batch 8,192, the linear scaling rule (lr 0.1 x 8192 / 256 = 3.2) after a gradual
warm-up from 0 over 5 epochs, SGD with momentum 0.9 (torch's form, which is their momentum
correction), weight decay 1e-4 on the weights but not on BN's scale and shift (here: on no
parameter but conv and dense kernels), step decay x0.1 at epochs 30, 60 and 80 of 90, the last
BN of each residual block initialised to zero, scale and aspect-ratio augmentation
(random-resized crop) and flip, per-channel normalisation. BatchNorm statistics per device:
keep 32 images per device (256 devices), or group devices with --config.bn_group_size to reach
32 images per group.

  python -m resnet_jax.main --config=configs/recipes/goyal_8k.py --workdir=gs://BUCKET/goyal \\
    --config.data_dir=gs://BUCKET/tensorflow_datasets
  python -m resnet_jax.report gs://BUCKET/goyal

On fewer devices, grad_accum_steps keeps the 8k batch in memory (each micro-batch normalises by
its own statistics).
"""

from configs import r50


def get_config():
  c = r50.get_config()
  c.recipe = 'goyal_8k'
  c.batch_size = 8192
  c.learning_rate = 0.1
  c.lr_reference_batch = 256
  c.num_epochs = 90
  c.schedule = 'step'
  c.lr_boundaries = (30.0, 60.0, 80.0)
  c.warmup_epochs = 5
  c.zero_init_residual = True
  c.train_augment = 'inception'
  c.normalization = 'channel_mean_std'
  c.lighting_std = 0.0
  c.eval_every = -1
  return c
