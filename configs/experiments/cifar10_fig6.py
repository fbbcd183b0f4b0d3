"""CIFAR-10, section 4.2: Fig. 6 and Table 6 (plain vs residual, 20 to 1202 layers).

Each run is the paper's recipe (configs/cifar10.py): batch 128, lr 0.1 (ResNet-110 and deeper
warm up at 0.01 until training error < 80%), /10 at 32k and 48k, stop at 64k, option A, single
32x32 test view. Paper's test errors (Table 6): ResNet-20 8.75, 32 7.51, 44 7.17, 56 6.97, 110
6.43, 1202 7.93 (configs/experiments/paper.py); plain nets get worse with depth (Fig. 6).

Hardware: one GPU or TPU host; ResNet-110 is about 1.5 h on one A100 (not measured with this
code yet), 1202 several times that.

  python -m resnet_jax.study --study=configs/experiments/cifar10_fig6.py --root=gs://BUCKET/fig6 \\
    --config.data_dir=gs://BUCKET/tensorflow_datasets
  python -m resnet_jax.report gs://BUCKET/fig6/*
"""

from configs import cifar10

DEPTHS = (20, 32, 44, 56, 110)
RUNS = (
  *(f'cifar_plain{d}' for d in DEPTHS),
  *(f'cifar_resnet{d}' for d in DEPTHS),
  'cifar_resnet1202',
)


def get_config(run: str = 'cifar_resnet20'):
  if run not in RUNS:
    raise ValueError(f'run must be one of {RUNS}, got {run!r}')
  depth = run.removeprefix('cifar_plain').removeprefix('cifar_resnet')
  c = cifar10.get_config(depth)
  c.model = run
  return c
