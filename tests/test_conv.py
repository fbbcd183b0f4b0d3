"""``conv.conv_general_dilated_stored_input``: lax's convolution, values and gradients bitwise,
whose kernel gradient reads its input from memory on the CPU instead of recomputing the ops that
made it."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.models import conv, layers, registry


def _layer(lowering, x, w, scale, strides, pad):
  """A convolution of a BatchNorm-like, ReLU'd input: the producer XLA would fuse."""
  numbers = jax.lax.conv_dimension_numbers(x.shape, w.shape, conv.NHWC)
  h = jax.nn.relu(x * scale + 0.1)
  y = lowering(h, w, (strides, strides), [(pad, pad)] * 2, dimension_numbers=numbers)
  return jnp.sum(y.astype(jnp.float32) ** 2), y


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('kernel, strides', [(3, 1), (3, 2), (1, 2), (1, 1), (7, 2)])
def test_stored_input_convolution_equals_lax_bitwise(kernel, strides, dtype):
  x = jax.random.normal(jax.random.key(0), (4, 12, 12, 8), dtype)
  w = jax.random.normal(jax.random.key(1), (kernel, kernel, 8, 16), dtype) / kernel
  scale = jnp.linspace(0.5, 1.5, 8).astype(dtype)

  def value_and_grads(lowering):
    fn = jax.jit(jax.value_and_grad(_layer, (1, 2, 3), has_aux=True), static_argnums=(0, 4, 5))
    return fn(lowering, x, w, scale, strides, kernel // 2)

  (_, y), grads = value_and_grads(conv.conv_general_dilated_stored_input)
  (_, y_ref), grads_ref = value_and_grads(jax.lax.conv_general_dilated)
  np.testing.assert_array_equal(np.float32(y), np.float32(y_ref))
  for name, ours, ref in zip(('dx', 'dw', 'dscale'), grads, grads_ref, strict=True):
    assert ours.dtype == ref.dtype, name
    np.testing.assert_array_equal(np.float32(ours), np.float32(ref), err_msg=name)


def test_forward_mode_differentiation_works_and_equals_laxs():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
  w = jax.random.normal(jax.random.key(1), (3, 3, 4, 6))
  tangents = (jnp.ones_like(x), jnp.full_like(w, 0.5))

  def jvp(lowering):
    return jax.jvp(lambda x, w: _layer(lowering, x, w, 1.0, 1, 1)[1], (x, w), tangents)

  ours, ref = jvp(conv.conv_general_dilated_stored_input), jvp(jax.lax.conv_general_dilated)
  for name, a, b in zip(('value', 'tangent'), ours, ref, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-5, err_msg=name)


def test_a_nan_kernel_still_gives_a_nan_kernel_gradient():
  """The conditional that keeps the input stored must not turn a diverged run's NaN into numbers."""
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 4))
  w = jax.random.normal(jax.random.key(1), (3, 3, 4, 4)).at[0, 0, 0, 0].set(jnp.nan)
  grads = jax.grad(lambda *a: _layer(conv.conv_general_dilated_stored_input, *a)[0], (1,))(
    x, w, jnp.ones(4), 1, 1
  )
  assert np.isnan(np.asarray(grads[0])).all()


def _network_gradient(lowering, scan_blocks=False):
  """The CIFAR ResNet-14 train-mode gradient with ``lowering`` for its convolutions, and the
  number of its compiled fusions that transpose and also compute a ReLU."""
  model = registry.get_model(
    'cifar_resnet14', num_classes=10, scan_blocks=scan_blocks, cpu_convolution='xla'
  )
  images = jax.random.normal(jax.random.key(2), (8, 16, 16, 3))
  variables = model.init(jax.random.key(0), images, train=False)

  def loss(params):
    logits, _ = model.apply(
      {**variables, 'params': params}, images, train=True, mutable=['batch_stats']
    )
    return jnp.sum(logits**2)

  default = layers.conv.__kwdefaults__['lowering']
  layers.conv.__kwdefaults__['lowering'] = lowering
  try:
    compiled = jax.jit(jax.grad(loss)).lower(variables['params']).compile()
  finally:
    layers.conv.__kwdefaults__['lowering'] = default
  text = compiled.as_text()
  bodies = dict(re.findall(r'^(%\S+) \(.*?\{\n(.*?)\n\}', text, flags=re.S | re.M))
  called = re.findall(r'= \S+ fusion\(.*?calls=(%[\w.\-]+)', text)
  count = sum(' transpose(' in bodies[c] and ' maximum(' in bodies[c] for c in called)
  return compiled(variables['params']), count


@pytest.mark.slow
def test_kernel_gradients_transpose_stored_activations_on_cpu():
  """The speed-up's mechanism, read from the compiled program: with lax's convolution XLA:CPU
  recomputes ReLUs inside the kernel gradients' transposes; with ours none does. The whole
  network's gradient stays bitwise lax's."""
  assert layers.conv.__kwdefaults__['lowering'] is conv.conv_general_dilated_stored_input
  reference, recomputing = _network_gradient(jax.lax.conv_general_dilated)
  ours, none = _network_gradient(conv.conv_general_dilated_stored_input)
  assert recomputing > 0 and none == 0
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference), strict=True):
    np.testing.assert_array_equal(a, b)
  # Nor scanned stages (conv.same_conv): ResNet-14's scans of one block are unrolled by XLA.
  assert _network_gradient(conv.conv_general_dilated_stored_input, scan_blocks=True)[1] == 0


def test_only_the_cpu_lowering_has_the_conditional():
  """Read from programs exported for each platform: only the CPU's holds the conditional, whose
  other branch multiplies by NaN (the one NaN constant of the program)."""
  x, w = jnp.zeros((2, 8, 8, 4)), jnp.zeros((3, 3, 4, 4))
  numbers = jax.lax.conv_dimension_numbers(x.shape, w.shape, conv.NHWC)

  def grad_of_conv(x, w):
    return jax.grad(
      lambda w: jnp.sum(
        conv.conv_general_dilated_stored_input(
          x, w, (1, 1), [(1, 1)] * 2, dimension_numbers=numbers
        )
      )
    )(w)

  def exported(platform):
    return jax.export.export(jax.jit(grad_of_conv), platforms=[platform])(x, w).mlir_module()

  nan = 'dense<0x7FC00000>'
  assert nan in exported('cpu')
  for platform in ('cuda', 'tpu'):
    assert nan not in exported(platform)


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize(
  'groups, strides, dilation', [(8, 1, 1), (8, 2, 1), (4, 1, 2), (32, 1, 1), (2, 2, 2)]
)
def test_grouped_convolutions_kernel_gradient_as_taps_equals_laxs(groups, strides, dilation, dtype):
  """ResNeXt's grouped 3x3 (strided, dilated): forward values and input gradients bitwise lax's,
  kernel gradients (the tap-wise products that replace XLA:CPU's slow grouped kernel gradient)
  equal to rounding, forward mode too; the scanned blocks' lowering takes the same path."""
  x = jax.random.normal(jax.random.key(0), (2, 12, 12, 32), dtype)
  w = jax.random.normal(jax.random.key(1), (3, 3, 32 // groups, 32), dtype) / 3
  scale = jnp.linspace(0.5, 1.5, 32).astype(dtype)

  def layer(lowering, x, w, scale):
    numbers = jax.lax.conv_dimension_numbers(x.shape, w.shape, conv.NHWC)
    h = jax.nn.relu(x * scale + 0.1)
    pad = [(dilation, dilation)] * 2
    y = lowering(h, w, (strides, strides), pad, None, (dilation, dilation), numbers, groups)
    return jnp.sum(y.astype(jnp.float32) ** 2), y

  def value_and_grads(lowering):
    fn = jax.jit(jax.value_and_grad(layer, (1, 2, 3), has_aux=True), static_argnums=(0,))
    return fn(lowering, x, w, scale)

  (_, y_ref), (dx_ref, dw_ref, ds_ref) = value_and_grads(jax.lax.conv_general_dilated)
  tolerance = 1e-5 if dtype == 'float32' else 2e-2
  for lowering in (conv.conv_general_dilated_stored_input, conv.conv_general_dilated):
    (_, y), (dx, dw, ds) = value_and_grads(lowering)
    np.testing.assert_array_equal(np.float32(y), np.float32(y_ref))
    np.testing.assert_array_equal(np.float32(dx), np.float32(dx_ref))
    scale_of = float(jnp.abs(dw_ref.astype(jnp.float32)).max())
    np.testing.assert_allclose(np.float32(dw), np.float32(dw_ref), atol=tolerance * scale_of)
    np.testing.assert_allclose(np.float32(ds), np.float32(ds_ref), rtol=tolerance, atol=1e-3)
  tangents = (jnp.ones_like(x), jnp.full_like(w, 0.5), jnp.zeros_like(scale))
  jvp = lambda lowering: jax.jvp(lambda *a: layer(lowering, *a)[1], (x, w, scale), tangents)  # noqa: E731
  ours, ref = jvp(conv.conv_general_dilated_stored_input), jvp(jax.lax.conv_general_dilated)
  np.testing.assert_allclose(
    np.float32(ours[1]), np.float32(ref[1]), rtol=tolerance, atol=tolerance * 10
  )


def test_a_grouped_kernel_gradient_runs_as_matrix_products_on_cpu():
  """The mechanism, read from the compiled program: the kernel gradient holds no convolution."""
  x = jnp.ones((2, 8, 8, 16))
  w = jnp.ones((3, 3, 2, 16))
  numbers = jax.lax.conv_dimension_numbers(x.shape, w.shape, conv.NHWC)

  def hlo(lowering):
    loss = lambda w: lowering(x, w, (1, 1), [(1, 1)] * 2, None, None, numbers, 8).sum()  # noqa: E731
    return jax.jit(jax.grad(loss)).lower(w).compile().as_text()

  # lax's kernel gradient is a grouped convolution (XLA:CPU: a base-dilated one over the groups);
  # ours, the kernel gradient alone, holds none: its taps are matrix products.
  assert ' convolution(' in hlo(jax.lax.conv_general_dilated)
  ours = hlo(conv.conv_general_dilated_stored_input)
  assert ' convolution(' not in ours and ours.count(' dot(') == 9  # one per tap
