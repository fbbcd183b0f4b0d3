"""The published training recipes of configs/recipes/, one run each, with their published numbers
(configs/experiments/paper.py) set beside the results by resnet_jax.report.

Each recipe's docstring gives its source, number, hardware and time.

  python -m resnet_jax.study --study=configs/experiments/recipes.py --root=gs://BUCKET/recipes \\
    --only=torchvision_v2,rsb_a3 --config.data_dir=gs://BUCKET/tensorflow_datasets
  python -m resnet_jax.report gs://BUCKET/recipes/*
"""

from configs.recipes import goyal_8k, mlperf_lars, preact_cifar, rsb, torchvision_v2

RUNS = (
  'torchvision_v2',
  'rsb_a1',
  'rsb_a2',
  'rsb_a3',
  'goyal_8k',
  'mlperf_lars',
  'preact_cifar164',
  'preact_cifar1001',
)
NAMED = {'torchvision_v2': torchvision_v2, 'goyal_8k': goyal_8k, 'mlperf_lars': mlperf_lars}


def get_config(run: str = 'goyal_8k'):
  if run not in RUNS:
    raise ValueError(f'run must be one of {RUNS}, got {run!r}')
  if run.startswith('preact_cifar'):
    return preact_cifar.get_config(run.removeprefix('preact_cifar'))
  if run.startswith('rsb_'):
    return rsb.get_config(run.removeprefix('rsb_'))
  return NAMED[run].get_config()
