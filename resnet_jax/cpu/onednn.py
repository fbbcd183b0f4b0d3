"""oneDNN's convolutions for the CPU train step: XLA FFI custom calls, built on first use.

Why: XLA:CPU runs a convolution as im2col blocks fed to a matrix multiply (Eigen), and its
gradients as more of the same after transposing activations; PyTorch runs oneDNN's direct
AVX-512/AVX2 kernels. On a 2-core AVX-512 VM a CIFAR 3x3 layer's input + kernel gradients
(batch 128, 32 px, 16 channels) took 8-12 ms with XLA and 2.7 ms with oneDNN's; ResNet-50's
layers at batch 8 1.2-2.8x less (PERFORMANCE.md). The forward pass stays XLA's: there the two
take about the same time, and oneDNN's channels-last forward rounds worse (up to 2x XLA's float32
error on wide 3x3 layers), enough to take ResNet-50's train-mode logits outside torchvision's
float32 tolerance. So values stay bitwise those of ``lax.conv_general_dilated``.

Grouped convolutions (ResNeXt) are oneDNN's in the forward pass too: XLA:CPU runs them 8-15x
slower than oneDNN in every pass (ResNeXt-50's layer1 3x3, batch 8: 212 against 15 ms forward),
and a grouped output sums few products (3 x 3 x C/G: 36 to 288 in ResNeXt-50), so oneDNN's
forward values differ from XLA's by float32 rounding only (below 1e-6 relative,
tests/test_onednn.py).

What: ``conv(x, w, params)`` is ``lax.conv_general_dilated(x, w, **dict(params))`` with a custom
VJP whose input and kernel gradients are oneDNN's, equal to XLA's to float32 rounding (~1e-6
relative), and whose forward pass is XLA's, or oneDNN's where grouped. ``conv.cpu_convolution``
hands it the float32 NHWC x HWIO convolutions with explicit padding and no dilation when XLA
lowers for the CPU (``lax.platform_dependent``). A custom VJP means forward-mode differentiation
(``jax.jvp``) of a network using it fails, and ``jax.export`` refuses a CPU program holding the
custom calls (their targets are this library's, not XLA's): ``cpu_convolution='xla'`` gives
XLA's convolutions for both.

How it is built: ``native`` compiles ``onednn_conv.cc`` on first use (~3 s, once per machine)
against the system's oneDNN (Debian/Ubuntu: ``apt-get install libdnnl-dev``; or a oneDNN install
at ``$DNNLROOT``; run with Debian 12's 2.6, compiled against 3.13's headers too).

``cpu_convolution`` (config field, ``models.ResNet`` attribute): 'auto' uses oneDNN on a CPU
backend when it builds and logs once why not otherwise; 'onednn' requires it (a ``UserError``
saying what is missing); 'xla' never uses it.
"""

from __future__ import annotations

import functools
import os
import pathlib

import jax
import numpy as np
from jax import lax

from resnet_jax.cpu import native

_TARGETS = {
  'forward': 'ResnetJaxOnednnConvForward',
  'input_gradient': 'ResnetJaxOnednnConvInputGradient',
  'kernel_gradient': 'ResnetJaxOnednnConvKernelGradient',
}
INSTALL_HINT = (
  "install oneDNN's headers and a C++ compiler (Debian/Ubuntu: apt-get install libdnnl-dev g++), "
  'or set --config.cpu_convolution=xla'
)


def library() -> native.Library:
  """The convolution gradients' library, linked against the system's oneDNN or ``$DNNLROOT``'s."""
  flags = ['-ldnnl']
  root = os.environ.get('DNNLROOT')
  if root:
    lib = os.path.join(root, 'lib')
    flags = ['-I', os.path.join(root, 'include'), '-L', lib, f'-Wl,-rpath,{lib}', *flags]
  return native.Library('onednn_conv', ('onednn_conv.cc',), tuple(_TARGETS.values()), tuple(flags))


def library_path() -> pathlib.Path:
  """Where the compiled library is (or will be) kept for this source, compiler flags and JAX."""
  return native.library_path(library())


def unavailable_reason() -> str:
  """Builds the library (once per machine) and registers its custom calls (once per process);
  '' when that worked, else what went wrong."""
  return native.unavailable_reason(library())


def enabled(mode: str) -> bool:
  """Whether convolutions lowered for the CPU use oneDNN under ``cpu_convolution=mode``."""
  name = 'oneDNN convolutions'
  return native.enabled(library(), name, 'cpu_convolution', mode, 'onednn', INSTALL_HINT)


def _call(kind: str, shape, a, b, params: tuple):
  settings = dict(params)
  # Batched (jax.vmap, e.g. per-example gradients): one call per example, as the kernels take
  # 4-d tensors only.
  call = jax.ffi.ffi_call(
    _TARGETS[kind], jax.ShapeDtypeStruct(shape, a.dtype), vmap_method='sequential'
  )
  return call(
    a,
    b,
    strides=np.asarray(settings['window_strides'], np.int64),
    # top, bottom, left, right
    padding=np.asarray([p for pair in settings['padding'] for p in pair], np.int64),
    groups=np.int64(settings['feature_group_count']),
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv(x, w, params: tuple):
  """``lax.conv_general_dilated(x, w, **dict(params))``: float32 ``x`` [N, H, W, C] and ``w``
  [KH, KW, C/G, O], explicit padding, undilated (``conv.cpu_convolution`` checks). ``params``
  are hashable (name, value) pairs, as a custom derivative's static argument must be. Lowered for
  the CPU only: a grouped convolution's forward pass is oneDNN's too."""
  settings = dict(params)
  if settings['feature_group_count'] == 1:
    return lax.conv_general_dilated(x, w, **settings)
  shape = jax.eval_shape(functools.partial(lax.conv_general_dilated, **settings), x, w).shape
  return _call('forward', shape, x, w, params)


def _conv_forward(x, w, params):
  return conv(x, w, params), (x, w)


def _conv_backward(params, residuals, dy):
  x, w = residuals
  return _call('input_gradient', x.shape, dy, w, params), _call(
    'kernel_gradient', w.shape, x, dy, params
  )


conv.defvjp(_conv_forward, _conv_backward)
