"""The project's CPU kernels (``native.KERNELS``, ``cpu_kernels``).

BatchNorm's sums (``channel_sums.cc``): statistics and gradients as accurate as XLA's against
float64, one call per BatchNorm in the compiled CPU program and none in programs for other
platforms, statistics shared across devices, sums that do not depend on the number of threads.
The stem's max pool (``max_pool.cc``): values bitwise lax's, gradients those of the XLA lowering,
one call each way in an ImageNet network. (The fallback without a compiler and the command
line's refusal of 'native' are in test_onednn.py, beside the same checks for the convolutions.)
"""

import contextlib
import io
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import train_gradient_and_hlo
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax.cpu import native
from resnet_jax.errors import UserError
from resnet_jax.models import batch_norm, registry, stem

needs_kernels = pytest.mark.skipif(
  bool(native.unavailable_reason(native.KERNELS)),
  reason=f'kernels unavailable: {native.unavailable_reason(native.KERNELS)}',
)
MOMENTS, GRADIENT_SUMS, POOL, POOL_GRADIENT = native.KERNELS.targets


def _reference(x, scale, bias, dy, epsilon=1e-5):
  """Training BatchNorm and its gradients in float64 (numpy)."""
  x, scale, bias, dy = (np.asarray(a, np.float64) for a in (x, scale, bias, dy))
  axes, count = tuple(range(x.ndim - 1)), np.prod(x.shape[:-1])
  mean, var = x.mean(axes), x.var(axes)
  rstd = 1 / np.sqrt(var + epsilon)
  xhat = (x - mean) * rstd
  dbias, dscale = dy.sum(axes), (dy * xhat).sum(axes)
  dx = scale * rstd * (dy - dbias / count - xhat * dscale / count)
  return {'y': xhat * scale + bias, 'mean': mean, 'var': var, 'dx': dx, 'dscale': dscale,
          'dbias': dbias}  # fmt: skip


def _ours(x, scale, bias, dy, use_native):
  def forward(x, scale, bias):
    return batch_norm.train_batch_norm(x, scale, bias, 1e-5, jnp.float32, None, use_native)

  (y, mean, var), vjp = jax.vjp(forward, x, scale, bias)
  dx, dscale, dbias = vjp((dy, jnp.zeros_like(mean), jnp.zeros_like(var)))
  return {'y': y, 'mean': mean, 'var': var, 'dx': dx, 'dscale': dscale, 'dbias': dbias}


@needs_kernels
@pytest.mark.parametrize(
  'shape',
  [
    (8, 9, 9, 16),  # 648 rows: ten full blocks of 64 and a partial one
    (5, 7, 3, 33),  # an odd channel count
    (2, 3, 3, 2048),  # ResNet-50's last stage at 96 px: few rows, many channels
    (193, 5),  # the kernels take any rank
  ],
)
def test_statistics_and_gradients_are_as_accurate_as_xlas(shape):
  """Against float64, on channels whose mean is up to 4,000x their spread (where an unshifted
  E[x^2] - E[x]^2 loses every digit): each output's error at most twice XLA's own, plus 1e-7 of
  the output's largest value."""
  rng = np.random.default_rng(0)
  channels = shape[-1]
  spread, offset = rng.uniform(0.01, 3, channels), rng.uniform(-40, 40, channels)
  x = (rng.standard_normal(shape) * spread + offset).astype(np.float32)
  scale = rng.uniform(0.5, 2, channels).astype(np.float32)
  bias = rng.standard_normal(channels).astype(np.float32)
  dy = rng.standard_normal(shape).astype(np.float32)
  ref = _reference(x, scale, bias, dy)
  results = {
    mode: jax.jit(lambda *a, mode=mode: _ours(*a, mode))(x, scale, bias, dy) for mode in (0, 1)
  }
  for name, expected in ref.items():
    size = np.max(np.abs(expected))
    xla, ours = (
      np.max(np.abs(np.asarray(results[m][name], np.float64) - expected)) for m in (0, 1)
    )
    assert ours <= 2 * xla + 1e-7 * size, (name, ours / size, xla / size)


@needs_kernels
def test_the_cpu_program_calls_each_kernel_once_per_batch_norm_and_others_never():
  images = jax.random.normal(jax.random.key(2), (8, 16, 16, 3))
  grads, counts = {}, {}
  for mode in ('auto', 'xla'):
    model = registry.get_model('cifar_resnet14', num_classes=10, cpu_kernels=mode)
    grads[mode], text = train_gradient_and_hlo(model, images)
    counts[mode] = [text.count(f'custom_call_target="{t}"') for t in (MOMENTS, GRADIENT_SUMS)]
  variables = model.init(jax.random.key(0), images, train=False)
  assert len(jax.tree.leaves(variables['batch_stats'])) == 2 * 13  # the stem's, two per block
  assert counts == {'auto': [13, 13], 'xla': [0, 0]}
  for value, ref in zip(jax.tree.leaves(grads['auto']), jax.tree.leaves(grads['xla']), strict=True):
    np.testing.assert_allclose(value, ref, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(ref))))

  def loss(x):
    y, _, _ = batch_norm.train_batch_norm(x, jnp.ones(4), jnp.zeros(4), 1e-5, jnp.float32, None, 1)
    return jnp.sum(y**3)

  x = jnp.zeros((2, 4, 4, 4))
  assert MOMENTS in jax.jit(jax.grad(loss)).lower(x).as_text()
  for platform in ('cuda', 'tpu'):
    module = jax.export.export(jax.jit(jax.grad(loss)), platforms=[platform])(x).mlir_module()
    assert 'ResnetJax' not in module, platform


@needs_kernels
def test_statistics_shared_across_devices_equal_xlas():
  """BatchNorm over a device axis (``bn_group_size``): the kernels sum each device's rows, the
  collective the rest, as with XLA's sums."""
  mesh = jax.make_mesh((4,), ('d',))
  x = jax.random.normal(jax.random.key(0), (16, 6, 6, 8)) * 3 + 5
  dy = jax.random.normal(jax.random.key(1), x.shape)

  def run(use_native):
    def per_device(x, dy):
      def forward(x):
        return batch_norm.train_batch_norm(
          x, jnp.ones(8), jnp.zeros(8), 1e-5, jnp.float32, ('d', None), use_native
        )

      (y, mean, var), vjp = jax.vjp(forward, x)
      return y, mean[None], var[None], vjp((dy, jnp.zeros_like(mean), jnp.zeros_like(var)))[0]

    spec = P('d')
    operands = jax.device_put((x, dy), NamedSharding(mesh, spec))
    sharded = jax.shard_map(per_device, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)
    return jax.jit(sharded)(*operands)  # check_vma=False: as parallel.DataParallel runs steps

  for ours, ref in zip(run(True), run(False), strict=True):
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-6 * float(jnp.max(jnp.abs(ref))))
  means = np.asarray(run(True)[1])
  np.testing.assert_array_equal(means, np.broadcast_to(means[:1], means.shape))  # one statistic


_SUMS = """
import jax, numpy as np
from resnet_jax.models import batch_norm
x = np.random.default_rng(0).standard_normal((4, 32, 32, 32)).astype(np.float32) * 3 + 7
moments = batch_norm._native_sums(batch_norm.MOMENTS, x, x[0, 0, 0])
grads = batch_norm._native_sums(batch_norm.GRADIENT_SUMS, x[::-1], x, x.mean((0, 1, 2)))
print(np.asarray(moments).tobytes().hex() + np.asarray(grads).tobytes().hex())
"""


@needs_kernels
def test_sums_are_bitwise_the_same_on_one_thread_and_on_all():
  """Fixed blocks, summed in order: one process's statistics equal another's whatever the threads
  (131,072 elements: above the size that runs in parallel)."""
  env = {**os.environ, 'OMP_NUM_THREADS': '1'}
  done = subprocess.run(
    [sys.executable, '-c', _SUMS], capture_output=True, text=True, env=env, timeout=300
  )
  assert done.returncode == 0, done.stderr
  here = io.StringIO()
  with contextlib.redirect_stdout(here):
    exec(_SUMS, {})  # this process: OpenMP's default, a thread per core
  assert done.stdout.strip().splitlines()[-1] == here.getvalue().strip()


@needs_kernels
@pytest.mark.parametrize('shape', [(2, 14, 14, 16), (3, 9, 12, 5), (1, 2, 3, 64)])
def test_the_max_pool_is_laxs_and_its_gradient_the_xla_lowerings(shape):
  """Odd and even sides, an odd channel count, a 2x3 image; integer-valued inputs, so windows
  hold ties and the first maximum must win."""
  x = jnp.round(jax.random.normal(jax.random.key(0), shape) * 2)
  dy = jax.random.normal(
    jax.random.key(1), (shape[0], *[(s - 1) // 2 + 1 for s in shape[1:3]], shape[3])
  )
  results = {}
  for use_native in (False, True):
    y, vjp = jax.jit(lambda x, n=use_native: jax.vjp(lambda x: stem.max_pool_3x3(x, n), x))(x)
    results[use_native] = y, vjp(dy)[0]
  np.testing.assert_array_equal(results[True][0], results[False][0])
  reference = jax.lax.reduce_window(
    x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
  )
  np.testing.assert_array_equal(results[True][0], reference)
  # The same shares of dy, summed per input pixel (at most four) in another order.
  np.testing.assert_allclose(results[True][1], results[False][1], rtol=0, atol=1e-6)


@pytest.mark.slow
@needs_kernels
def test_an_imagenet_network_pools_through_the_kernels_on_the_cpu_only():
  model = registry.get_model('resnet18', num_classes=10)
  _, text = train_gradient_and_hlo(model, jax.random.normal(jax.random.key(0), (2, 32, 32, 3)))
  assert [text.count(f'custom_call_target="{t}"') for t in (POOL, POOL_GRADIENT)] == [1, 1]
  x = jnp.zeros((2, 8, 8, 4))
  grad = jax.jit(jax.grad(lambda x: jnp.sum(stem.max_pool_3x3(x, True) ** 2)))
  for platform in ('cuda', 'tpu'):
    assert 'ResnetJax' not in jax.export.export(grad, platforms=[platform])(x).mlir_module()


def test_unknown_modes_are_refused():
  with pytest.raises(UserError, match="cpu_kernels='fast': must be one of auto, native, xla"):
    native.kernels_enabled('fast')
  assert native.kernels_enabled('xla') is False
