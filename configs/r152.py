"""ResNet-152 on ImageNet, the paper's recipe (section 3.4).

Scale augmentation (shorter side in [256, 480], random 224 crop, flip, per-pixel mean, PCA colour
noise), batch 256, SGD momentum 0.9, weight decay 1e-4, lr 0.1 (x batch / 256) divided by 10 when
the validation error plateaus, ~60e4 iterations (120 epochs at batch 256). No dropout.

  python -m resnet_jax.main --config=configs/r152.py --workdir=gs://BUCKET/r152 \
    --config.data_dir=gs://BUCKET/tensorflow_datasets
Plain net: --config.model=plain152. Shortcut option: --config.shortcut=A|B|C.
Compile each stage's identical blocks once (2.3x faster compile, same numbers):
--config.scan_blocks=True.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.model = 'resnet152'
  return c
