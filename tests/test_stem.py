"""The ImageNet stem's lowerings (``models.stem``) against lax and flax: values, gradients."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.models import conv, stem

HIGHEST = jax.lax.Precision.HIGHEST


def _lax_conv(x, w, pad):
  numbers = jax.lax.conv_dimension_numbers(x.shape, w.shape, conv.NHWC)
  return jax.lax.conv_general_dilated(
    x, w, (2, 2), [(pad, pad)] * 2, dimension_numbers=numbers, precision=HIGHEST
  )


@pytest.mark.parametrize(
  'shape, kernel', [((3, 14, 14, 3), 7), ((2, 16, 10, 3), 7), ((2, 12, 12, 5), 3)]
)
def test_space_to_depth_conv_equals_lax_values_and_gradients(shape, kernel):
  x = jax.random.normal(jax.random.key(0), shape)
  w = jax.random.normal(jax.random.key(1), (kernel, kernel, shape[-1], 8))
  cotangent = jax.random.normal(jax.random.key(2), _lax_conv(x, w, kernel // 2).shape)
  pad = kernel // 2
  y, vjp = jax.vjp(lambda x, w: stem.space_to_depth_conv(x, w, pad, HIGHEST), x, w)
  y_ref, vjp_ref = jax.vjp(lambda x, w: _lax_conv(x, w, pad), x, w)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  for name, ours, ref in zip(('dx', 'dw'), vjp(cotangent), vjp_ref(cotangent), strict=True):
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-4, err_msg=name)


def _exported_windows(platform, image_size):
  x, w = jnp.zeros((2, image_size, image_size, 3)), jnp.zeros((7, 7, 3, 8))
  numbers = jax.lax.conv_dimension_numbers(x.shape, w.shape, conv.NHWC)

  def stem_step(x, w):
    return stem.stem_conv(x, w, (2, 2), ((3, 3), (3, 3)), dimension_numbers=numbers)

  text = jax.export.export(jax.jit(stem_step), platforms=[platform])(x, w).mlir_module()
  return re.findall(r'stablehlo.convolution.*', text)


def test_stem_conv_folds_only_when_lowered_for_cuda_and_only_even_inputs():
  """The lowering each platform gets, read from programs exported for it (no GPU needed)."""
  cuda = _exported_windows('cuda', 16)
  assert len(cuda) == 1 and 'stride' not in cuda[0] and 'x12xf32' in cuda[0], cuda
  for platform in ('cpu', 'tpu'):
    (plain,) = _exported_windows(platform, 16)
    assert 'stride = [2, 2], pad = [[3, 3], [3, 3]]' in plain and 'x3xf32' in plain
  (odd,) = _exported_windows('cuda', 15)  # 15 + 6 is odd: no 2x2 blocks, lax's convolution
  assert 'stride = [2, 2]' in odd


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('size', [(8, 8), (7, 9)])
def test_max_pool_equals_flax_max_pool_and_its_gradient_bitwise(size, dtype):
  """Forward and gradient identical to autodiff of flax's max pool, ties included: after a ReLU
  whole windows are 0, and a quantised input repeats values inside windows. The output gradients
  are small integers, so that their sums (an input in two windows) are exact in either order."""
  x = jax.random.normal(jax.random.key(0), (4, *size, 6))
  out_shape = (4, (size[0] + 1) // 2, (size[1] + 1) // 2, 6)
  cotangent = jnp.round(jax.random.normal(jax.random.key(1), out_shape) * 3)
  for inputs in (jax.nn.relu(x), jnp.round(x * 2)):
    inputs = inputs.astype(dtype)

    def flax_pool(v):
      return nn.max_pool(v, (3, 3), (2, 2), padding=((1, 1), (1, 1)))

    y, vjp = jax.vjp(stem.max_pool_3x3, inputs)
    y_ref, vjp_ref = jax.vjp(flax_pool, inputs)
    np.testing.assert_array_equal(np.float32(y), np.float32(y_ref))
    dx, dx_ref = vjp(cotangent.astype(dtype))[0], vjp_ref(cotangent.astype(dtype))[0]
    assert dx.dtype == dx_ref.dtype
    np.testing.assert_array_equal(np.float32(dx), np.float32(dx_ref))
