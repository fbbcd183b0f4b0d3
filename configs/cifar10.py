"""CIFAR-10 ResNets of section 4.2; the depth is the config argument (6n+2).

Batch 128, lr 0.1, /10 at 32k and 48k iterations, stop at 64k; weight decay 1e-4, momentum 0.9;
4-pixel pad + random 32x32 crop + flip, per-pixel mean; option A shortcuts; single 32x32 test view.
ResNet-110 starts at lr 0.01 until training error < 80% (about 400 iterations), as in the paper.

  python -m resnet_jax.main --config=configs/cifar10.py:56 --workdir=/tmp/cifar_r56
  python -m resnet_jax.main --config=configs/cifar10.py:56 --workdir=/tmp/cifar_p56 \
    --config.model=cifar_plain56
The paper's 45k/5k split for choosing: --config.train_split='train[:45000]'
  --config.eval_split='train[45000:]'.
Deep nets (110, 1202) compile each stage's identical blocks once with --config.scan_blocks=True
(ResNet-1202: seconds instead of many minutes; same numbers).
"""

from configs import default


def get_config(depth: str = '20'):
  depth = int(depth)
  c = default.get_config()
  c.dataset = 'cifar10'
  c.train_split, c.eval_split = 'train', 'test'
  c.model = f'cifar_resnet{depth}'
  c.image_size = 32
  c.eval_resize = 32
  # The paper's multi-scale sizes (224, 256, 384, 480, 640 at a 224 crop) scaled to this crop.
  c.multiscale_sizes = (32, 37, 55, 69, 91)
  c.train_augment = 'pad_crop'
  c.pad = 4
  c.lighting_std = 0.0
  c.mean_image_examples = 0  # all 50k training images
  c.batch_size = 128
  c.learning_rate = 0.1
  c.lr_reference_batch = 128
  c.num_train_steps = 64_000
  c.schedule = 'step'
  c.lr_boundaries = (32_000, 48_000)
  c.lr_boundaries_unit = 'steps'
  c.warmup_until_train_error = 0.8 if depth >= 110 else 0.0
  c.eval_every = 2_000
  c.checkpoint_every = 2_000
  c.log_every = 100
  return c
