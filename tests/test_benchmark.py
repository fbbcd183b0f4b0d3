"""The benchmark's modes print consistent JSON (fields and their relations, never a speed)."""

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO

from resnet_jax import summary
from resnet_jax.models import registry

pytestmark = pytest.mark.slow

TINY_FAKE = [
  '--config=configs/fake.py',
  '--config.model=cifar_resnet8',
  '--config.image_size=16',
  '--config.batch_size=16',
  '--config.num_classes=10',
]


# The benchmark as a command with TensorFlow made unimportable, as on an accelerator image that has
# only JAX and flax.
WITHOUT_TENSORFLOW = (
  'import runpy, sys; '
  'sys.modules.update(tensorflow=None, tensorflow_datasets=None); '
  "sys.argv[0] = 'benchmark'; "
  "runpy.run_module('resnet_jax.benchmark', run_name='__main__')"
)


def benchmark(*args, tensorflow: bool = True) -> tuple[dict, str]:
  env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  runner = ['-m', 'resnet_jax.benchmark'] if tensorflow else ['-c', WITHOUT_TENSORFLOW]
  out = subprocess.run(
    [sys.executable, *runner, *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def test_end_to_end_reports_the_loop_beside_the_device_step():
  result, table = benchmark(*TINY_FAKE, '--mode=end_to_end', '--steps=8')
  assert result['mode'] == 'end_to_end' and result['devices'] == 2
  assert result['end_to_end_over_device'] == pytest.approx(
    result['images_per_sec'] / result['device_images_per_sec']
  )
  assert result['step_time_s'] == pytest.approx(16 / result['images_per_sec'])
  model = registry.get_model('cifar_resnet8', num_classes=10)
  macs = sum(r.mult_adds for r in summary.layer_rows(model, (1, 16, 16, 3)))
  assert result['train_flops_per_image'] == 6 * macs
  assert result['achieved_flops_per_sec'] == pytest.approx(6 * macs * result['images_per_sec'])
  assert result['mfu'] == pytest.approx(
    result['achieved_flops_per_sec'] / result['peak_matmul_flops_per_sec']
  )
  # Two simulated CPU devices share one process's cores: the peak is one device's, not two.
  assert result['peak_units'] == 1
  assert 0 < result['mfu'] < 1 and result['compile_time_s'] > 0
  assert result['peak_host_memory_mb'] > 100  # jax + tensorflow alone take more
  assert f'{"mfu":<28}' in table  # the human-readable table went to stderr


def test_device_step_and_input_modes_print_their_fields():
  train, _ = benchmark(*TINY_FAKE, '--mode=train', '--steps=2', tensorflow=False)
  assert train['mode'] == 'train' and train['global_batch'] == 16
  assert train['images_per_sec'] == pytest.approx(16 / train['step_time_s'])
  assert train['achieved_flops_per_sec'] == pytest.approx(
    train['train_flops_per_image'] * train['images_per_sec']
  )
  assert 0 < train['mfu'] < 1
  for mode in ('input', 'input_baseline'):
    result, _ = benchmark(*TINY_FAKE, f'--mode={mode}', '--steps=2', '--cores=1')
    assert result['mode'] == mode and result['images_per_sec'] > 0
    assert result['pixel_ops'] == ('device' if mode == 'input' else 'host')
    assert result['images_per_sec'] == pytest.approx(16 / result['step_time_s'])


# Compiles a convolution's gradient after the commands' start-up and counts YNNPACK fusions.
YNN_FUSIONS = (
  'import jax, jax.numpy as jnp; from jax import lax; '
  'from resnet_jax import distributed; distributed.initialize(); '
  'conv = lambda x, w: jnp.sum(lax.conv(x, w, (1, 1), "SAME") ** 2); '
  'grad = jax.jit(jax.grad(conv, argnums=(0, 1))); '
  'text = grad.lower(jnp.ones((32, 16, 32, 32)), jnp.ones((16, 16, 3, 3))).compile().as_text(); '
  'print(text.count("__ynn_fusion"))'
)


def test_commands_use_xlas_eigen_convolutions_on_cpu_unless_the_user_chose():
  def ynn_fusions(xla_flags: str) -> int:
    env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS=xla_flags)
    out = subprocess.run(
      [sys.executable, '-c', YNN_FUSIONS], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return int(out.stdout.strip().splitlines()[-1])

  assert ynn_fusions('') == 0
  assert ynn_fusions('--xla_cpu_experimental_ynn_fusion_type=individual_convolution') > 0
