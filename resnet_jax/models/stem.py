"""The ImageNet stem's two layers (7x7/2 convolution, 3x3/2 max pool), lowered for speed.

Both are ~12% of a ResNet-50 bf16 training step on an H100 although they hold ~4% of its FLOPs
(profile in PERFORMANCE.md): a convolution over 3 input channels fills matrix units poorly, and
autodiff of the max pool recomputes the pool in the backward pass and scatters through XLA's
``select_and_scatter``.

- ``space_to_depth_conv``: a stride-2 convolution as a stride-1 one over 2x2 pixel blocks (4x the
  channels, the kernel zero-padded to an even size and folded the same way). The same products
  summed in another order: on an H100, 7x7/2 over 224 px at batch 256 in bf16 took 1.82 ms forward
  and 3.28 ms with its kernel gradient; folded 0.91 and 1.84 ms. On XLA:CPU it is 2.5-3x slower,
  so ``stem_conv`` takes it only when lowering for CUDA GPUs (TPUs: not measured).
- ``max_pool_3x3``: torch's 3x3/2 max pool (padding 1) whose backward pass finds each window's
  first maximum (torch's and XLA's choice among ties) and gathers the output gradients back per
  input pixel (four interleaved phases of shifted selections) instead of scattering them.
  Gradients are autodiff's up to the order in which an input's share of two windows is summed.
  Forward + backward over 112 px, 64 channels: H100 batch 256 bf16 2.55 -> 1.13 ms; this 2-core
  CPU batch 8 float32 135 -> 46 ms. (Nine strided interior pads summed, the first version, took
  1.73 ms on the H100: the fusion recomputed each window's maximum index per term.) On the CPU,
  float32 pools take ``max_pool.cc``'s custom calls instead (``cpu_kernels``): one pass over each
  window, forward and backward, where XLA's passes recompute the padded input (PERFORMANCE.md).

``tests/backend_check.py`` checks both against lax on whatever backend it runs on.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from resnet_jax.cpu import native
from resnet_jax.models import conv


def space_to_depth_conv(x, w, pad: int, precision=None):
  """``x`` (NHWC) convolved with ``w`` (HWIO, odd k x k) at stride 2 and symmetric ``pad``.

  Needs ``H + 2 * pad`` and ``W + 2 * pad`` even. Output pixel (i, j) is the sum over taps
  (2u + p, 2v + q) of the padded input at (2i + 2u + p, 2j + 2v + q): a stride-1 convolution with a
  ((k + 1) / 2)^2 kernel over the input's 2x2 blocks, channels ordered (p, q, c).
  """
  n, h, width, c = x.shape
  k, _, _, features = w.shape
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  hb, wb = (h + 2 * pad) // 2, (width + 2 * pad) // 2
  blocks = xp.reshape(n, hb, 2, wb, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, hb, wb, 4 * c)
  taps = (k + 1) // 2
  wp = jnp.pad(w, ((0, 1), (0, 1), (0, 0), (0, 0)))
  folded = wp.reshape(taps, 2, taps, 2, c, features).transpose(0, 2, 1, 3, 4, 5)
  folded = folded.reshape(taps, taps, 4 * c, features)
  return lax.conv_general_dilated(
    blocks, folded, (1, 1), 'VALID', dimension_numbers=conv.NHWC, precision=precision
  )


# The stem's 7x7/2 convolution: space-to-depth when lowering for CUDA GPUs (its 2x2 blocks need
# an even padded input), lax's convolution elsewhere.
stem_conv = conv.per_platform(
  2, fits=lambda lhs: lhs.shape[1] % 2 == 0 and lhs.shape[2] % 2 == 0, cuda=space_to_depth_conv
)


def _pool(x):
  return lax.reduce_window(
    x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def max_pool_3x3(x, use_native: bool = False):
  """3x3 max pool, stride 2, padding 1 (torch's ``MaxPool2d(3, 2, 1)``), NHWC. ``use_native``:
  ``max_pool.cc``'s kernels where the program is lowered for the CPU (float32 only)."""
  return _pool_forward(x, use_native)[0]


def _pool_forward(x, use_native):
  n, h, w, c = x.shape
  result = jax.ShapeDtypeStruct((n, (h - 1) // 2 + 1, (w - 1) // 2 + 1, c), x.dtype)
  y = native.on_cpu(
    use_native, lambda: native.call('ResnetJaxMaxPoolForward', result, x), lambda: _pool(x)
  )
  return y, (x, y)


def _pool_backward(use_native, residuals, dy):
  x, y = residuals
  result = jax.ShapeDtypeStruct(x.shape, x.dtype)
  return (
    native.on_cpu(
      use_native,
      lambda: native.call('ResnetJaxMaxPoolBackward', result, x, y, dy),
      lambda: _gathered_gradient(x, y, dy),
    ),
  )


def _gathered_gradient(x, y, dy):
  """The pool's input gradient from its input, output and output gradient, without a scatter."""
  h, w = x.shape[1:3]
  ho, wo = y.shape[1:3]
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  offsets = [divmod(k, 3) for k in range(9)]

  def window_element(di, dj):  # the input element at offset (di, dj) of every output's window
    return xp[:, di : di + 2 * ho - 1 : 2, dj : dj + 2 * wo - 1 : 2, :]

  # Index of each window's first maximum, found from the last offset back so the first one wins.
  first = jnp.zeros(y.shape, jnp.int8)
  for k in reversed(range(9)):
    first = jnp.where(window_element(*offsets[k]) == y, jnp.int8(k), first)
  # Padded input row 2m gets output row m's offset-0 share and row m - 1's offset-2 share; row
  # 2m + 1 gets row m's offset-1 share (columns alike): four interleaved phases, each a sum of
  # shifted selections, with no scatter.
  rows_half, cols_half = (h + 3) // 2, (w + 3) // 2
  zero = jnp.zeros((), dy.dtype)

  def share(di, dj, shift_rows, shift_cols):
    selected = jnp.where(first == 3 * di + dj, dy, zero)
    return lax.pad(
      selected,
      zero,
      (
        (0, 0, 0),
        (shift_rows, rows_half - ho - shift_rows, 0),
        (shift_cols, cols_half - wo - shift_cols, 0),
        (0, 0, 0),
      ),
    )

  sources = (((0, 0), (2, 1)), ((1, 0),))  # per phase (even, odd): its (offset, shift) pairs
  phases = [
    [
      sum(share(di, dj, sr, sc) for di, sr in sources[pr] for dj, sc in sources[pc])
      for pc in (0, 1)
    ]
    for pr in (0, 1)
  ]
  stacked = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2)  # [n, H/2, 2, W/2, 2, c]
  dxp = stacked.reshape(stacked.shape[0], 2 * rows_half, 2 * cols_half, stacked.shape[-1])
  return dxp[:, 1 : h + 1, 1 : w + 1, :]


max_pool_3x3.defvjp(_pool_forward, _pool_backward)
