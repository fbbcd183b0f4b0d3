"""ImageNet, Tables 3 and 4: ResNet-34 shortcut options A/B/C, and ResNet-50/101/152.

The paper's recipe (section 3.4, configs/r50.py) with 10-crop testing (Table 3); the deep nets are
also scored with fully-convolutional multi-scale testing (Table 4) by
``python -m resnet_jax.evaluate --config.eval_mode=multiscale`` on the finished workdir.
Paper (top-1 / top-5, 10-crop): ResNet-34 A 25.03 / 7.76, B 24.52 / 7.46, C 24.19 / 7.40;
ResNet-50 22.85 / 6.71, 101 21.75 / 6.05, 152 21.43 / 5.71. Multi-scale: ResNet-50 20.74 / 5.25,
ResNet-152 19.38 / 4.49.

Hardware: a TPU v4-32 slice or 8 GPUs per run, ImageNet as ArrayRecord; not measured with this
code yet.

  python -m resnet_jax.study --study=configs/experiments/imagenet_table3.py --root=gs://BUCKET/t3 \\
    --config.data_dir=gs://BUCKET/tensorflow_datasets
  python -m resnet_jax.report gs://BUCKET/t3/*
"""

from configs import r50

RUNS = ('resnet34_A', 'resnet34_B', 'resnet34_C', 'resnet50', 'resnet101', 'resnet152')


def get_config(run: str = 'resnet50'):
  if run not in RUNS:
    raise ValueError(f'run must be one of {RUNS}, got {run!r}')
  c = r50.get_config()
  model, _, shortcut = run.partition('_')
  c.model, c.shortcut = model, shortcut
  c.eval_mode = '10crop'
  return c
