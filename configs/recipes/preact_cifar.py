"""Pre-activation ResNet-164 and ResNet-1001 on CIFAR-10: He et al. 2016, "Identity Mappings in
Deep Residual Networks"; the depth is the config argument.

Published (CIFAR-10 test error, mean of 5 runs): ResNet-164 5.46%, ResNet-1001 4.92% (Table 2),
trained on 2 GPUs (a batch of 64 each); the paper gives no training times. Not measured with
this code yet.

The recipe is the original paper's CIFAR one (configs/cifar10.py): batch 128, lr 0.1 divided by
10 at 32k and 48k iterations, 64k in all, weight decay 1e-4, momentum 0.9, 4-pixel pad-and-crop
and flip, per-pixel mean; the pre-activation nets' own shortcuts (a 1x1 projection where the
shape changes, as the authors' Torch code); a 0.01 warm-up until the training error is below 80%
(about 400 iterations, as the original paper's ResNet-110).

  python -m resnet_jax.main --config=configs/recipes/preact_cifar.py:164 --workdir=/tmp/p164
  python -m resnet_jax.main --config=configs/recipes/preact_cifar.py:1001 --workdir=/tmp/p1001 \\
    --config.scan_blocks=True
"""

from configs import cifar10


def get_config(depth: str = '164'):
  if depth not in ('164', '1001'):
    raise ValueError(f'depth must be 164 or 1001 (the published nets), got {depth!r}')
  c = cifar10.get_config('110')
  c.model = f'cifar_preact_resnet{depth}'
  c.warmup_until_train_error = 0.8
  c.scan_blocks = depth == '1001'  # 333 blocks: compiled once per stage
  return c
