"""Train-step compile time and speed beside flax's examples/imagenet, one after the other, one run.

flax's own code is imported from a checkout the user names (nothing of it is copied here): its
``models.py`` network and ``train.py`` train step, pmapped as its ``train_and_evaluate`` does. Ours
runs through ``python -m resnet_jax.benchmark --mode=train``, per-block and with scanned stages.
Compile time is, for both, the first call minus one steady step. Needs ``pip install clu
tensorboard`` (flax's train.py imports clu):

  git clone https://github.com/google/flax /tmp/flax
  python benchmarks/flax_compile_side_by_side.py --flax-examples=/tmp/flax/examples/imagenet \
    --model=resnet152 --image-size=64 --batch=8
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAX_MODELS = {'resnet18': 'ResNet18', 'resnet50': 'ResNet50', 'resnet152': 'ResNet152'}


def time_flax(examples: str, model: str, image_size: int, batch: int, steps: int) -> dict:
  sys.path.insert(0, examples)
  import models as flax_models  # flax's examples/imagenet/models.py
  import train as flax_train  # flax's examples/imagenet/train.py

  spec = importlib.util.spec_from_file_location(
    'flax_imagenet_config', os.path.join(examples, 'configs', 'default.py')
  )
  config_module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(config_module)
  config = config_module.get_config()
  net = flax_train.create_model(
    model_cls=getattr(flax_models, FLAX_MODELS[model]), half_precision=False
  )
  schedule = flax_train.create_learning_rate_fn(config, 0.1, 1000)
  state = flax_train.create_train_state(jax.random.key(0), config, net, image_size, schedule)
  devices = jax.local_device_count()
  step = jax.pmap(  # as its train_and_evaluate pmaps it: the state unmapped
    functools.partial(flax_train.train_step, learning_rate_fn=schedule),
    in_axes=(None, 0),
    out_axes=(None, 0),
    axis_name='batch',
  )
  per_device = batch // devices
  images = np.random.default_rng(0).normal(size=(devices, per_device, image_size, image_size, 3))
  batch_arrays = {
    'image': jnp.asarray(images, jnp.float32),
    'label': jnp.zeros((devices, per_device), jnp.int32),
  }
  start = time.perf_counter()
  state, _ = jax.block_until_ready(step(state, batch_arrays))
  first_call = time.perf_counter() - start
  for _ in range(2):
    state, _ = step(state, batch_arrays)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(steps):
    state, _ = step(state, batch_arrays)
  jax.block_until_ready(state)
  step_time = (time.perf_counter() - start) / steps
  return {'compile_time_s': first_call - step_time, 'images_per_sec': batch / step_time}


def time_ours(model: str, image_size: int, batch: int, steps: int, scan: bool) -> dict:
  command = [
    sys.executable,
    '-m',
    'resnet_jax.benchmark',
    '--config=configs/fake.py',
    '--mode=train',
    f'--steps={steps}',
    f'--config.model={model}',
    f'--config.image_size={image_size}',
    f'--config.batch_size={batch}',
    f'--config.scan_blocks={scan}',
  ]
  out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--flax-examples', required=True, help="flax's examples/imagenet folder")
  parser.add_argument('--model', default='resnet152', choices=sorted(FLAX_MODELS))
  parser.add_argument('--image-size', type=int, default=64)
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--steps', type=int, default=3)
  args = parser.parse_args()
  sys.path.insert(0, REPO)
  from resnet_jax import distributed

  distributed.set_cpu_xla_flags()  # flax's step under the XLA options our commands run with
  rows = {
    'resnet_jax per-block': time_ours(args.model, args.image_size, args.batch, args.steps, False),
    'resnet_jax scan_blocks': time_ours(args.model, args.image_size, args.batch, args.steps, True),
  }
  rows["flax's example"] = time_flax(
    args.flax_examples, args.model, args.image_size, args.batch, args.steps
  )
  flax_compile = rows["flax's example"]['compile_time_s']
  print(f'{args.model}, {args.image_size} px, batch {args.batch}, {jax.devices()[0].device_kind}')
  print('| train step | compile s | / flax | img/s |\n| --- | --- | --- | --- |')
  for name, row in rows.items():
    print(
      f'| {name} | {row["compile_time_s"]:.1f} | {row["compile_time_s"] / flax_compile:.2f} '
      f'| {row["images_per_sec"]:.2f} |'
    )


if __name__ == '__main__':
  main()
