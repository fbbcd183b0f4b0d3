"""``onednn``: lax's convolution with oneDNN's gradients on the CPU (values bitwise lax's, gradients
to float32 rounding; grouped convolutions oneDNN's in both passes, all to float32 rounding), wired
into the networks under ``cpu_convolution``, and a clear error or fallback where it cannot be
built (that of the project's other CPU kernels, ``cpu_kernels``, and of the augmentation
policies' op, ``policy_kernel``, too).

CI installs oneDNN (``.ci/run``) and fails if it does not build, so these tests run there; on a
machine without it they are skipped with the build error as the reason.
"""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import train_gradient_and_hlo, without_a_compiler

from resnet_jax import models
from resnet_jax.cpu import onednn
from resnet_jax.errors import UserError
from resnet_jax.models import conv, registry

needs_onednn = pytest.mark.skipif(
  bool(onednn.unavailable_reason()), reason=f'oneDNN unavailable: {onednn.unavailable_reason()}'
)
FORWARD, INPUT_GRADIENT, KERNEL_GRADIENT = (
  'ResnetJaxOnednnConvForward',
  'ResnetJaxOnednnConvInputGradient',
  'ResnetJaxOnednnConvKernelGradient',
)


def _close(ours, ref, name):
  """Equal to float32 rounding: oneDNN sums the same products in another order."""
  scale = float(jnp.max(jnp.abs(ref)))
  np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-6 * scale, err_msg=name)


def _close_trees(ours, ref):
  """``_close`` for each leaf of two parameter trees."""
  for path, value in jax.tree_util.tree_leaves_with_path(ours):
    _close(value, _at(ref, path), jax.tree_util.keystr(path))


def _at(tree, path):
  for key in path:
    tree = tree[key.key]
  return tree


def _value_and_grads(lowering, x, w, strides, padding, groups=1):
  numbers = jax.lax.conv_dimension_numbers(x.shape, w.shape, conv.NHWC)

  def f(x, w):
    y = lowering(x, w, strides, padding, dimension_numbers=numbers, feature_group_count=groups)
    return jnp.sum(y * jnp.cos(y)), y  # a non-trivial output gradient

  return jax.jit(jax.value_and_grad(f, (0, 1), has_aux=True))(x, w)


@needs_onednn
@pytest.mark.parametrize(
  'shape, kernel, strides, padding',
  [
    ((4, 12, 12, 16), (3, 3, 16, 32), (1, 1), [(1, 1), (1, 1)]),
    ((4, 12, 12, 16), (3, 3, 16, 32), (2, 2), [(1, 1), (1, 1)]),
    ((4, 12, 12, 16), (1, 1, 16, 64), (1, 1), [(0, 0), (0, 0)]),
    ((4, 12, 12, 64), (1, 1, 64, 32), (2, 2), [(0, 0), (0, 0)]),
    ((2, 30, 30, 3), (7, 7, 3, 16), (2, 2), [(3, 3), (3, 3)]),  # the ImageNet stem
    ((3, 9, 13, 5), (3, 5, 5, 7), (2, 1), [(0, 1), (2, 2)]),  # odd sizes, asymmetric padding
  ],
)
def test_values_are_laxs_and_gradients_equal_laxs_to_rounding(shape, kernel, strides, padding):
  x = jax.random.normal(jax.random.key(0), shape)
  w = jax.random.normal(jax.random.key(1), kernel) / np.sqrt(np.prod(kernel[:3]))
  lax_conv = jax.lax.conv_general_dilated
  ours = conv.cpu_convolution(lax_conv, 'onednn')
  (_, y), (dx, dw) = _value_and_grads(ours, x, w, strides, padding)
  (_, y_ref), (dx_ref, dw_ref) = _value_and_grads(lax_conv, x, w, strides, padding)
  np.testing.assert_array_equal(y, y_ref)  # the forward pass is lax's
  for name, value, ref in (('dx', dx, dx_ref), ('dw', dw, dw_ref)):
    assert value.shape == ref.shape, name
    _close(value, ref, name)


@needs_onednn
@pytest.mark.parametrize(
  'shape, kernel, groups, strides, padding',
  [
    ((2, 10, 10, 32), (3, 3, 4, 32), 8, (1, 1), [(1, 1), (1, 1)]),  # ResNeXt's: 4 per group
    ((2, 10, 10, 32), (3, 3, 4, 64), 8, (2, 2), [(1, 1), (1, 1)]),  # strided, 8 out per group
    ((2, 9, 9, 16), (3, 3, 1, 16), 16, (1, 1), [(1, 1), (1, 1)]),  # depthwise
    ((2, 8, 8, 24), (1, 1, 8, 12), 3, (1, 1), [(0, 0), (0, 0)]),  # 1x1
    ((3, 9, 13, 6), (3, 5, 2, 9), 3, (2, 1), [(0, 1), (2, 2)]),  # odd sizes, asymmetric padding
  ],
)
def test_grouped_convolutions_are_onednns_and_equal_laxs_to_rounding(
  shape, kernel, groups, strides, padding
):
  """XLA:CPU runs grouped convolutions 10-20x slower than oneDNN in every pass, so a grouped
  convolution is oneDNN's forward and gradients, each equal to lax's to float32 rounding (the
  grouped kernel read in XLA's HWIO layout, outputs group-major)."""
  x = jax.random.normal(jax.random.key(0), shape)
  w = jax.random.normal(jax.random.key(1), kernel) / np.sqrt(np.prod(kernel[:3]))
  lax_conv = jax.lax.conv_general_dilated
  ours = conv.cpu_convolution(lax_conv, 'onednn')
  (_, y), (dx, dw) = _value_and_grads(ours, x, w, strides, padding, groups)
  (_, y_ref), (dx_ref, dw_ref) = _value_and_grads(lax_conv, x, w, strides, padding, groups)
  for name, value, ref in (('y', y, y_ref), ('dx', dx, dx_ref), ('dw', dw, dw_ref)):
    assert value.shape == ref.shape, name
    _close(value, ref, name)
  fn = jax.jit(lambda x, w: _value_and_grads(ours, x, w, strides, padding, groups))
  text = fn.lower(x, w).compile().as_text()
  assert [_calls(text, t) for t in (FORWARD, INPUT_GRADIENT, KERNEL_GRADIENT)] == [1, 1, 1]


@pytest.mark.slow
@needs_onednn
def test_a_resnext_trains_through_onednn_only_and_matches_xla():
  """A ResNeXt (32 groups of 4 channels) read from its compiled train gradient: under 'onednn'
  its grouped 3x3s run no XLA convolution at all, its other convolutions XLA's forward only;
  parameter gradients equal to XLA's to float32 rounding."""
  images = jax.random.normal(jax.random.key(2), (4, 32, 32, 3))
  grads, texts = {}, {}
  for mode in ('onednn', 'xla'):
    model = models.resnet.ResNet(
      stage_sizes=(1, 1),
      block_cls=models.resnet.Bottleneck,
      widths=(32, 64),
      stem='cifar',
      stem_width=32,
      groups=32,
      width_per_group=4,
      num_classes=10,
      cpu_convolution=mode,
      cpu_kernels='xla',
    )
    grads[mode], texts[mode] = train_gradient_and_hlo(model, images)
  ours, xla = texts['onednn'], texts['xla']
  convolutions = 1 + 2 * 3 + 2  # the stem, three per block, two projections
  assert _calls(ours, FORWARD) == 2  # one grouped 3x3 per block
  assert _calls(ours, KERNEL_GRADIENT) == convolutions
  assert _calls(ours, INPUT_GRADIENT) == convolutions - 1  # none for the images
  assert 'feature_group_count=32' in xla and 'feature_group_count' not in ours
  _close_trees(grads['onednn'], grads['xla'])


def _calls(text, target):
  return text.count(f'custom_call_target="{target}"')


@needs_onednn
@pytest.mark.parametrize(
  'name, scan_blocks',
  [('cifar_resnet14', False), pytest.param('cifar_resnet20', True, marks=pytest.mark.slow)],
)
def test_network_gradients_are_onednns_and_match_xlas(name, scan_blocks):
  """Read from the compiled CPU train gradient: under 'onednn' XLA keeps the forward convolutions
  only and every gradient convolution is a oneDNN call (inside the scan's loop too); under 'xla'
  none is. The two gradients agree to float32 rounding. BatchNorm keeps XLA's sums in both, so
  the convolutions are all that differs (each side's rounding, not only their difference, passes
  through the BatchNorm backward passes' cancellations)."""
  images = jax.random.normal(jax.random.key(2), (8, 16, 16, 3))
  grads, texts = {}, {}
  for mode in ('onednn', 'xla'):
    model = registry.get_model(
      name, num_classes=10, scan_blocks=scan_blocks, cpu_convolution=mode, cpu_kernels='xla'
    )
    grads[mode], texts[mode] = train_gradient_and_hlo(model, images)
  ours, xla = texts['onednn'], texts['xla']
  assert _calls(xla, INPUT_GRADIENT) == _calls(xla, KERNEL_GRADIENT) == 0
  forward = ours.count(' convolution(')
  # XLA: forward, input gradient (none for the stem, whose input is the images) and kernel gradient.
  assert xla.count(' convolution(') == 3 * forward - 1
  assert _calls(ours, KERNEL_GRADIENT) == forward and _calls(ours, INPUT_GRADIENT) == forward - 1
  assert (' while(' in ours) == scan_blocks
  _close_trees(grads['onednn'], grads['xla'])


@needs_onednn
def test_other_dtypes_and_other_platforms_keep_xlas_convolution():
  x, w = jnp.zeros((2, 8, 8, 4)), jnp.zeros((3, 3, 4, 4))
  numbers = jax.lax.conv_dimension_numbers(x.shape, w.shape, conv.NHWC)
  lowering = conv.cpu_convolution(jax.lax.conv_general_dilated, 'onednn')

  def f(x, w):
    return jax.grad(
      lambda w: jnp.sum(lowering(x, w, (1, 1), [(1, 1)] * 2, dimension_numbers=numbers))
    )(w)

  def lowered_for_cpu(*args):
    return jax.jit(f).lower(*args).as_text()

  def exported(platform):
    return jax.export.export(jax.jit(f), platforms=[platform])(x, w).mlir_module()

  assert KERNEL_GRADIENT in lowered_for_cpu(x, w)
  assert KERNEL_GRADIENT not in lowered_for_cpu(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
  for platform in ('cuda', 'tpu'):
    assert KERNEL_GRADIENT not in exported(platform)


def test_xla_mode_leaves_the_lowering_untouched_and_bad_modes_are_refused():
  lowering = conv.conv_general_dilated_stored_input
  assert conv.cpu_convolution(lowering, 'xla') is lowering
  with pytest.raises(
    UserError, match=re.escape("--config.cpu_convolution='onenn': must be one of auto, onednn, xla")
  ):
    conv.cpu_convolution(lowering, 'onenn')


def test_without_a_compiler_auto_falls_back_to_xla_and_the_others_say_what_is_missing(tmp_path):
  """Neither library builds: 'auto' uses XLA's lowerings instead of either (one line each saying
  why), 'onednn' and 'native' are errors that say what to install."""
  code = """
import jax
from resnet_jax import console
from resnet_jax.models import registry
from resnet_jax.errors import UserError
console.setup()
x = jax.numpy.ones((2, 8, 8, 3))
model = registry.get_model('cifar_resnet8', num_classes=10)
model.init(jax.random.key(0), x, train=True)
print('auto ran')
for field, mode in (('cpu_convolution', 'onednn'), ('cpu_kernels', 'native')):
  try:
    registry.get_model('cifar_resnet8', num_classes=10, **{field: mode}).init(
      jax.random.key(0), x, train=True)
  except UserError as e:
    print('error:', e)
"""
  done = without_a_compiler(code, tmp_path)
  assert done.returncode == 0, done.stderr
  lines = done.stdout.splitlines()
  assert 'auto ran' in lines
  missing = "(no C++ compiler 'no-such-compiler')"
  fallback = [line for line in lines if 'oneDNN convolutions unavailable' in line]
  assert len(fallback) == 1 and missing in fallback[0], lines
  assert "using XLA's lowering" in fallback[0] and 'apt-get install libdnnl-dev' in fallback[0]
  fallback = [line for line in lines if "the stem's max pool) unavailable (" in line]
  assert len(fallback) == 1 and missing in fallback[0], lines
  assert "using XLA's lowering" in fallback[0] and 'apt-get install g++' in fallback[0]
  assert lines[-2:] == [
    f"error: --config.cpu_convolution='onednn' but oneDNN convolutions are unavailable {missing}: "
    "install oneDNN's headers and a C++ compiler (Debian/Ubuntu: apt-get install libdnnl-dev "
    'g++), or set --config.cpu_convolution=xla.',
    "error: --config.cpu_kernels='native' but resnet_jax's CPU kernels (BatchNorm's sums, the "
    f"stem's max pool) are unavailable {missing}: install a C++ compiler with OpenMP "
    '(Debian/Ubuntu: apt-get install g++), or set --config.cpu_kernels=xla.',
  ]


@needs_onednn
def test_the_library_is_built_once_per_source_and_reused(tmp_path):
  """A fresh cache builds it; a second interpreter loads the same file without compiling."""
  code = 'from resnet_jax.cpu import onednn as o; print(o.unavailable_reason() or o.library_path())'
  env = {**os.environ, 'RESNET_JAX_CACHE': str(tmp_path)}
  first = subprocess.run(
    [sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=300, check=True
  )
  path = first.stdout.strip().splitlines()[-1]
  assert path.startswith(str(tmp_path)) and os.path.exists(path), first.stdout
  built = os.stat(path).st_mtime_ns
  again = subprocess.run(
    [sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=300, check=True
  )
  assert again.stdout.strip().splitlines()[-1] == path and os.stat(path).st_mtime_ns == built
  assert os.listdir(tmp_path) == [os.path.basename(path)]  # no temporary left behind


@pytest.mark.parametrize(
  'flag, message',
  [
    ('--config.cpu_convolution=onednn', "--config.cpu_convolution='onednn' but oneDNN convol"),
    ('--config.cpu_kernels=native', "--config.cpu_kernels='native' but resnet_jax's CPU kern"),
    ('--config.policy_kernel=native', "--config.policy_kernel='native' but the augmentation p"),
  ],
)
def test_the_command_line_refuses_kernels_it_cannot_build_before_writing_anything(
  tmp_path, flag, message
):
  work = tmp_path / 'run'
  env = {
    **os.environ,
    'CXX': 'no-such-compiler',
    'RESNET_JAX_CACHE': str(tmp_path / 'cache'),
    'XLA_FLAGS': '--xla_force_host_platform_device_count=1',
  }
  argv = ['-m', 'resnet_jax.main', '--config=configs/digits.py', f'--workdir={work}']
  done = subprocess.run(
    [sys.executable, *argv, flag],
    capture_output=True,
    text=True,
    env=env,
    timeout=300,
    check=False,
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  )
  assert done.returncode == 2 and 'Traceback' not in done.stderr, done.stderr
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith(f'error: {message}') and 'apt-get install' in last and not work.exists()


@needs_onednn
def test_per_example_gradients_under_vmap_equal_laxs():
  x = jax.random.normal(jax.random.key(0), (3, 6, 6, 4))
  w = jax.random.normal(jax.random.key(1), (3, 3, 4, 5)) / 6

  def per_example(lowering):
    def loss(w, x):
      numbers = jax.lax.conv_dimension_numbers(x[None].shape, w.shape, conv.NHWC)
      return jnp.sum(jnp.sin(lowering(x[None], w, (1, 1), [(1, 1)] * 2, dimension_numbers=numbers)))

    return jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(w, x)

  ours = per_example(conv.cpu_convolution(jax.lax.conv_general_dilated, 'onednn'))
  ref = per_example(jax.lax.conv_general_dilated)
  assert ours.shape == (3, 3, 3, 4, 5)
  _close(ours, ref, 'per-example dw')
