"""The alternative lowerings against lax on the backend this runs on (GPU, TPU or CPU).

The test suite runs on CPU only. On an accelerator, run this script (it needs JAX, flax and the
repository, not TensorFlow or pytest) to check there what the suite checks on CPU:

  python tests/backend_check.py

1. ``conv.same_conv`` (the scanned blocks' convolution with hand-written gradients),
   ``conv.conv_general_dilated`` (what the scanned blocks call: ``same_conv`` on CPU, lax
   elsewhere) and ``conv.conv_general_dilated_stored_input`` (what the per-block networks call)
   against ``lax.conv_general_dilated``: outputs, input and kernel gradients, float32 and bfloat16;
   on a CPU where it builds, ``onednn.conv`` (lax's forward, oneDNN's gradients) too.
2. The scanned ResNet-50 (``scan_blocks=True``) against the per-block one with the same weights:
   eval logits, train logits and parameter gradients.
3. Training BatchNorm (``batch_norm.train_batch_norm``: one-pass shifted statistics, written-out
   backward pass) against JAX's autodiff of the textbook two-pass expressions, float32 and bfloat16;
   on a CPU where they build, with ``channel_sums.cc``'s sums too.
4. The ImageNet stem (``stem.stem_conv``, space-to-depth on CUDA GPUs; ``stem.max_pool_3x3``,
   with ``max_pool.cc``'s kernels too on a CPU where they build) against lax: outputs and
   gradients, float32 and bfloat16.
5. The time of a stack of 3x3 convolutions, forward and backward inside ``lax.scan``, through
   ``same_conv`` and through lax: whether the CPU's lowering would help or hurt here.

Errors are ||a - b|| / ||b||, computed at HIGHEST matmul precision (no TF32 on GPUs). Prints one
line per check and exits 1 if any exceeds its tolerance.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from resnet_jax import distributed
from resnet_jax.cpu import native, onednn
from resnet_jax.models import batch_norm, block_layout, conv, registry, stem

distributed.set_cpu_xla_flags()  # on CPU, check the convolutions the commands run

TOLERANCE = {'float32': 1e-5, 'bfloat16': 2e-2}
NETWORK_TOLERANCE = 1e-4  # float32 through 50 layers; XLA fuses the two layouts differently


def relative_error(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _lax_conv(x, w):
  pad = w.shape[0] // 2
  return lax.conv_general_dilated(x, w, (1, 1), [(pad, pad)] * 2, dimension_numbers=conv.NHWC)


def _through(lowering):
  def conv_fn(x, w):
    pad = w.shape[0] // 2
    numbers = lax.conv_dimension_numbers(x.shape, w.shape, conv.NHWC)
    return lowering(x, w, (1, 1), [(pad, pad)] * 2, dimension_numbers=numbers)

  return conv_fn


def check_convolutions() -> list[tuple[str, float, float]]:
  rows = []
  candidates = {
    'same_conv': lambda x, w: conv.same_conv(x, w, w.shape[0] // 2),
    'conv_general_dilated': _through(conv.conv_general_dilated),
    'conv_general_dilated_stored_input': _through(conv.conv_general_dilated_stored_input),
  }
  if onednn.enabled('auto'):  # a CPU backend where oneDNN builds
    candidates['onednn'] = _through(conv.cpu_convolution(lax.conv_general_dilated, 'onednn'))
  for kernel, dtype in [(3, 'float32'), (1, 'float32'), (3, 'bfloat16')]:
    kx, kw, kd = jax.random.split(jax.random.key(kernel), 3)
    x = jax.random.normal(kx, (8, 28, 28, 64), dtype)
    w = jax.random.normal(kw, (kernel, kernel, 64, 96), dtype) / (kernel * 8)
    dy = jax.random.normal(kd, (8, 28, 28, 96), dtype)
    expected, vjp = jax.vjp(_lax_conv, x, w)
    expected_grads = vjp(dy)
    for name, fn in candidates.items():
      out, fn_vjp = jax.vjp(fn, x, w)
      grads = fn_vjp(dy)
      for what, a, b in [
        ('out', out, expected),
        ('dx', grads[0], expected_grads[0]),
        ('dw', grads[1], expected_grads[1]),
      ]:
        rows.append(
          (f'{name} {kernel}x{kernel} {dtype} {what}', relative_error(a, b), TOLERANCE[dtype])
        )
  return rows


def check_scanned_resnet50() -> list[tuple[str, float, float]]:
  per_block = registry.get_model('resnet50', num_classes=10)
  scanned = registry.get_model('resnet50', num_classes=10, scan_blocks=True)
  images = jax.random.normal(jax.random.key(1), (4, 64, 64, 3))
  variables = per_block.init(jax.random.key(0), images, train=False)
  stacked = block_layout.stack_blocks(variables)
  labels = jnp.arange(4)

  def loss(model, params, stats):
    logits, _ = model.apply(
      {'params': params, 'batch_stats': stats}, images, train=True, mutable=['batch_stats']
    )
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels]), logits

  eval_a = scanned.apply(stacked, images, train=False)
  eval_b = per_block.apply(variables, images, train=False)
  grad_fn = jax.grad(loss, 1, has_aux=True)
  grads_a, train_a = grad_fn(scanned, stacked['params'], stacked['batch_stats'])
  grads_b, train_b = grad_fn(per_block, variables['params'], variables['batch_stats'])
  grads_b = block_layout.stack_blocks(grads_b)
  flat_a, flat_b = jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)
  worst = max(relative_error(a, b) for a, b in zip(flat_a, flat_b, strict=True))
  return [
    ('scanned resnet50 eval logits', relative_error(eval_a, eval_b), NETWORK_TOLERANCE),
    ('scanned resnet50 train logits', relative_error(train_a, train_b), NETWORK_TOLERANCE),
    ('scanned resnet50 worst parameter gradient', worst, NETWORK_TOLERANCE),
  ]


def _plain_batch_norm(x, scale, bias):
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, (0, 1, 2))
  var = jnp.mean(jnp.square(x32 - mean), (0, 1, 2))
  return ((x32 - mean) * (lax.rsqrt(var + 1e-5) * scale) + bias).astype(x.dtype)


def check_batch_norm() -> list[tuple[str, float, float]]:
  rows = []
  sums = native.kernels_enabled('auto')  # a CPU where channel_sums.cc builds: its sums too
  for dtype in ('float32', 'bfloat16'):
    x = (jax.random.normal(jax.random.key(0), (32, 14, 14, 64)) * 3 + 2).astype(dtype)
    dy = jax.random.normal(jax.random.key(1), x.shape).astype(dtype)
    scale, bias = jnp.linspace(0.5, 1.5, 64), jnp.linspace(-1.0, 1.0, 64)
    plain = jax.vjp(_plain_batch_norm, x, scale, bias)
    for use_native in (False, True) if sums and dtype == 'float32' else (False,):

      def train(x, s, b, use_native=use_native):
        return batch_norm.train_batch_norm(x, s, b, 1e-5, x.dtype, None, use_native)[0]

      ours = jax.vjp(train, x, scale, bias)
      pairs = [('out', ours[0], plain[0])]
      pairs += list(zip(('dx', 'dscale', 'dbias'), ours[1](dy), plain[1](dy), strict=True))
      name = 'native batch norm' if use_native else 'batch norm'
      for what, a, b in pairs:
        rows.append((f'{name} {dtype} {what}', relative_error(a, b), TOLERANCE[dtype]))
  return rows


def check_stem() -> list[tuple[str, float, float]]:
  """The stem's convolution (space-to-depth on CUDA, lax elsewhere) and its max pool."""
  rows = []
  native_kernels = native.kernels_enabled('auto')
  for dtype in ('float32', 'bfloat16'):
    x = jax.random.normal(jax.random.key(0), (16, 224, 224, 3), dtype)
    w = (jax.random.normal(jax.random.key(1), (7, 7, 3, 64)) / 10).astype(dtype)
    numbers = lax.conv_dimension_numbers(x.shape, w.shape, conv.NHWC)

    def plain(x, w, numbers=numbers):
      return lax.conv_general_dilated(x, w, (2, 2), [(3, 3)] * 2, dimension_numbers=numbers)

    def lowered(x, w, numbers=numbers):
      return stem.stem_conv(x, w, (2, 2), [(3, 3)] * 2, dimension_numbers=numbers)

    def folded(x, w):
      return stem.space_to_depth_conv(x, w, 3)

    dy = jax.random.normal(jax.random.key(2), (16, 112, 112, 64), dtype)
    for name, fn in (('stem_conv', lowered), ('space_to_depth_conv', folded)):
      out, vjp = jax.vjp(fn, x, w)
      expected, vjp_ref = jax.vjp(plain, x, w)
      pairs = [('out', out, expected)]
      pairs += list(zip(('dx', 'dw'), vjp(dy), vjp_ref(dy), strict=True))
      for what, a, b in pairs:
        rows.append((f'{name} 7x7/2 {dtype} {what}', relative_error(a, b), TOLERANCE[dtype]))
    h = jax.nn.relu(jax.random.normal(jax.random.key(3), (16, 112, 112, 64), dtype))
    expected, vjp_ref = jax.vjp(
      lambda v: lax.reduce_window(
        v, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
      ),
      h,
    )
    dy = jax.random.normal(jax.random.key(4), expected.shape, dtype)
    # On a CPU where they build, max_pool.cc's kernels too (float32 only).
    for use_native in (False, True) if native_kernels and dtype == 'float32' else (False,):
      pooled, vjp = jax.vjp(lambda v, n=use_native: stem.max_pool_3x3(v, n), h)
      name = 'native max_pool_3x3' if use_native else 'max_pool_3x3'
      rows.append((f'{name} {dtype} out', relative_error(pooled, expected), 0.0))
      rows.append(
        (f'{name} {dtype} dx', relative_error(vjp(dy)[0], vjp_ref(dy)[0]), TOLERANCE[dtype])
      )
  return rows


def time_scanned_convolutions(depth: int = 8, repeats: int = 5) -> dict[str, float]:
  """Seconds per forward + backward of ``depth`` 3x3 convolutions (64 channels, 56 px) inside
  ``lax.scan``, as in a scanned stage: batch 32 in bfloat16 on accelerators, batch 4 in float32
  on CPU (whose bfloat16 convolutions are emulated)."""
  on_cpu = jax.default_backend() == 'cpu'
  dtype = jnp.float32 if on_cpu else jnp.bfloat16
  x = jax.random.normal(jax.random.key(0), (4 if on_cpu else 32, 56, 56, 64), dtype)
  ws = jax.random.normal(jax.random.key(1), (depth, 3, 3, 64, 64), dtype) / 24
  times = {}
  for name, fn in [('lax', _lax_conv), ('same_conv', lambda x, w: conv.same_conv(x, w, 1))]:

    def loss(ws, x, fn=fn):
      out, _ = lax.scan(lambda h, w: (jax.nn.relu(fn(h, w)), None), x, ws)
      return jnp.sum(out.astype(jnp.float32))

    step = jax.jit(jax.grad(loss))
    jax.block_until_ready(step(ws, x))
    start = time.perf_counter()
    for _ in range(repeats):
      out = step(ws, x)
    jax.block_until_ready(out)
    times[name] = (time.perf_counter() - start) / repeats
  return times


def main() -> int:
  print(f'backend {jax.default_backend()}: {jax.devices()[0].device_kind}, jax {jax.__version__}')
  with jax.default_matmul_precision('highest'):
    rows = check_convolutions() + check_scanned_resnet50() + check_batch_norm() + check_stem()
  failed = 0
  for name, error, tolerance in rows:
    ok = error <= tolerance
    failed += not ok
    print(f'{"ok  " if ok else "FAIL"} {name:<48} {error:.2e} (tolerance {tolerance:.0e})')
  times = time_scanned_convolutions()
  print(
    'scanned 3x3 convolutions, forward + backward: '
    + ', '.join(f'{name} {seconds * 1e3:.2f} ms' for name, seconds in times.items())
  )
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
