"""ImageNet, Fig. 4 and Table 2: plain-18/34 against ResNet-18/34 (option A shortcuts).

The paper's recipe (configs/r18.py, section 3.4), evaluated with 10-crop testing as in Table 2.
Paper's top-1 errors (10-crop): plain-18 27.94, plain-34 28.54, ResNet-18 27.88, ResNet-34 25.03.

Hardware: a TPU v4-32 slice or 8 GPUs, ImageNet prepared as ArrayRecord; each run is ~60e4
iterations at batch 256 (several hours on 8 A100s; not measured with this code yet).

  python -m resnet_jax.study --study=configs/experiments/imagenet_table2.py --root=gs://BUCKET/t2 \\
    --config.data_dir=gs://BUCKET/tensorflow_datasets
  python -m resnet_jax.report gs://BUCKET/t2/*
"""

from configs import r18

RUNS = ('plain18', 'plain34', 'resnet18', 'resnet34_A')


def get_config(run: str = 'resnet18'):
  if run not in RUNS:
    raise ValueError(f'run must be one of {RUNS}, got {run!r}')
  c = r18.get_config()
  c.model = run.removesuffix('_A')
  c.shortcut = 'A' if run.startswith('resnet') else ''
  c.eval_mode = '10crop'
  return c
