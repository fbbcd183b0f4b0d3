"""ResNet-20 on scikit-learn's bundled handwritten digits: a real training run, offline, on a CPU.

The 8x8 digits are upsampled to 16x16 and trained with the paper's CIFAR recipe (pad-and-crop,
per-pixel mean); reaches >= 97% test accuracy in a few CPU-minutes.

  python -m resnet_jax.main --config=configs/digits.py --workdir=/tmp/digits
"""

from configs import default


def get_config():
  c = default.get_config()
  c.dataset = 'digits'
  c.train_split, c.eval_split = 'train', 'test'
  c.model = 'cifar_resnet20'
  c.image_size = 16
  c.eval_resize = 16
  # The paper's multi-scale sizes (224, 256, 384, 480, 640 at a 224 crop) scaled to this crop.
  c.multiscale_sizes = (16, 18, 27, 34, 46)
  c.train_augment = 'pad_crop'
  c.pad = 2
  c.random_flip = False  # Digits are not mirror-symmetric.
  c.lighting_std = 0.0
  c.mean_image_examples = 0  # all training images
  c.batch_size = 64
  c.learning_rate = 0.1
  c.lr_reference_batch = 64
  c.num_epochs = 15
  c.schedule = 'cosine'
  c.warmup_epochs = 1
  c.log_every = 20
  c.checkpoint_every = 200
  return c
