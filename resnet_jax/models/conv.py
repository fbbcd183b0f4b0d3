"""Convolutions whose gradients run at full speed on the CPU. Three CPU lowerings, each chosen
only when XLA lowers for the CPU (``lax.platform_dependent``); GPUs and TPUs keep lax's.
``tests/backend_check.py`` checks them against lax on whatever backend it runs on.

1. ``conv_general_dilated_stored_input`` (every convolution of the per-block networks but the
   ImageNet stem's, whose input is the image itself): lax's convolution and gradients, with the
   kernel gradient reading the input as stored in memory. XLA:CPU's kernel gradient transposes
   its input from [N, H, W, C] to [C, H, W, N], and its fusion pass merges into that transpose
   the elementwise ops that produced the input (BatchNorm's normalisation, ReLU, residual
   additions back through several blocks), recomputing them in a strided loop: in a CIFAR
   ResNet-20 train step these fusions took 141 of 330 ms, where transposing the stored
   activations takes ~7 ms. A conditional is a fusion boundary that XLA keeps
   (``lax.optimization_barrier`` is not: XLA:CPU expands it away before fusing), so the custom
   JVP's input term reads ``_as_stored(x)``, which passes through one; reverse mode turns that
   term into the kernel gradient. Values and gradients bitwise equal to lax's; forward mode works.
2. ``conv_general_dilated`` (the scanned blocks' convolutions, ``scan_blocks``): outside loops
   XLA:CPU's ConvCanonicalization pass rewrites the gradient convolutions that JAX's transpose
   rules emit (kernel gradient ``f01b_i01o->01bf``, input gradient with an ``01oi`` kernel) into
   the one dimension order its fast (Eigen) convolutions take, NHWC x HWIO -> NHWC; inside a while
   loop body (``nn.scan``) they stay as they are and fall to a generic loop nest, which made a
   scanned CIFAR ResNet-56's backward pass 18x slower. ``same_conv``'s VJP writes both gradient
   convolutions in the canonical order itself, with explicit transposes (on an H100 the two ran a
   scanned stack of convolutions equally fast, hence CPU only). Its kernel gradient reads the
   stored input too (point 1): inside a loop body XLA fuses no producer into the transposes, but
   it unrolls a scan of one block (ResNet-14), and then it does. Only stride-1, undilated,
   ungrouped convolutions with symmetric ``k // 2`` padding and an odd kernel (every convolution
   of a scanned block) take this path; anything else is ``lax.conv_general_dilated`` unchanged.
   ``per_platform`` is that selection for any lowering (the ImageNet stem's, ``models.stem``,
   uses it too).
3. ``cpu_convolution(lowering, mode)`` (around each of the above in ``models``): the float32
   convolutions lowered for the CPU keep lax's forward pass and take oneDNN's input and kernel
   gradients (``cpu.onednn``), 1.2-4x faster per layer than points 1 and 2, when
   ``cpu_convolution`` (the config field) allows and oneDNN builds; grouped ones are oneDNN's
   forward pass too (8-15x faster than XLA's). Points 1, 2 and 4 then serve other dtypes,
   ``cpu_convolution='xla'`` and machines without oneDNN.
4. Grouped convolutions (ResNeXt) lowered for the CPU, in points 1 and 2: XLA:CPU runs their
   kernel gradient (a convolution with ``batch_group_count``) in a generic loop, 100-250x slower
   than their input gradient (ResNeXt-50's layer1 3x3 at batch 8: 3.2 s against 13 ms). Their
   JVP's kernel term is written as ``_grouped_taps``, one per-group matrix product per kernel
   tap, whose transpose XLA runs as fast matrix products. Forward values and input gradients stay
   lax's; kernel gradients equal lax's to float32 rounding.
"""

from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp
from jax import lax

from resnet_jax.cpu import onednn

NHWC = ('NHWC', 'HWIO', 'NHWC')


def _conv(x, w, pad: int, precision):
  return lax.conv_general_dilated(
    x, w, (1, 1), ((pad, pad), (pad, pad)), dimension_numbers=NHWC, precision=precision
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def same_conv(x, w, pad: int, precision=None):
  """Stride-1 'same' convolution (kernel 2 * pad + 1), NHWC x HWIO -> NHWC."""
  return _conv(x, w, pad, precision)


def _forward(x, w, pad, precision):
  return _conv(x, w, pad, precision), (x, w)


def _backward(pad, precision, residuals, dy):
  x, w = residuals
  x = _as_stored(x, w)
  # Input gradient: the kernel flipped in space, in and out swapped, still HWIO.
  dx = _conv(dy, w[::-1, ::-1].transpose(0, 1, 3, 2), pad, precision)
  # Kernel gradient: a convolution of the input (channels as batch, batch as features) with the
  # output gradient as kernel (its spatial size is the window): [C_in, k, k, C_out].
  dw = _conv(x.transpose(3, 1, 2, 0), dy.transpose(1, 2, 0, 3), pad, precision)
  return dx, dw.transpose(1, 2, 0, 3).astype(w.dtype)


same_conv.defvjp(_forward, _backward)


def per_platform(stride: int, fits=lambda lhs: True, **platforms):
  """A convolution with ``lax.conv_general_dilated``'s signature (what ``flax.linen.Conv`` calls)
  that lowers with ``platforms[name](x, w, pad, precision)`` when XLA lowers for platform ``name``
  (``lax.platform_dependent``: 'cpu', 'cuda', ...), and with lax everywhere else.

  Only undilated, ungrouped NHWC x HWIO convolutions with an odd square kernel, symmetric
  ``k // 2`` padding, the given ``stride`` and an input for which ``fits(lhs)`` holds take a
  platform's lowering; anything else is ``lax.conv_general_dilated`` unchanged.
  """

  def conv(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    precision=None,
    **kwargs,
  ):
    args = (window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers)
    args += (feature_group_count,)

    def plain(x, w):
      return lax.conv_general_dilated(x, w, *args, precision=precision, **kwargs)

    k = rhs.shape[0]
    ones = (None, (1, 1), [1, 1])
    applies = (
      rhs.ndim == 4
      and tuple(window_strides) == (stride, stride)
      and lhs_dilation in ones
      and rhs_dilation in ones
      and feature_group_count == 1
      and not kwargs
      and k % 2 == 1
      and rhs.shape[1] == k
      and [tuple(p) for p in padding] == [(k // 2, k // 2)] * 2
      and dimension_numbers == lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
      and fits(lhs)
    )
    if not applies:
      if feature_group_count > 1:  # the kernel gradient as ``_grouped_taps`` on the CPU
        return conv_general_dilated_stored_input(lhs, rhs, *args, precision=precision, **kwargs)
      return plain(lhs, rhs)
    lowerings = {
      name: (lambda x, w, fn=fn: fn(x, w, k // 2, precision)) for name, fn in platforms.items()
    }
    return lax.platform_dependent(lhs, rhs, default=plain, **lowerings)

  return conv


# The scanned blocks' convolution. The CPU gets same_conv; GPUs and TPUs, whose compilers lay out
# gradient convolutions themselves in loops too, keep lax's convolution.
conv_general_dilated = per_platform(1, cpu=same_conv)


def _as_stored(x, kernel):
  """``x``, read from memory by whatever consumes it rather than recomputed inside its fusion.

  The predicate is false only when the kernel's first value is NaN; the other branch then gives
  NaN, as the kernel gradient of a network with a NaN weight is anyway.
  """
  probe = kernel.reshape(-1)[0]
  return lax.cond(probe == probe, lambda x: x, lambda x: x * jnp.nan, x)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _stored_input_conv(x, w, params: tuple):
  """``params``: ``lax.conv_general_dilated``'s other arguments as hashable (name, value) pairs,
  as a custom derivative's static argument must be."""
  return lax.conv_general_dilated(x, w, **dict(params))


@_stored_input_conv.defjvp
def _stored_input_jvp(params, primals, tangents):
  """The convolution's own (bilinear) derivative, its input term reading ``_as_stored(x)``: reverse
  mode transposes that term into the kernel gradient, which then reads the stored input. A JVP
  rather than a VJP, so forward-mode differentiation keeps working. A grouped convolution's
  kernel term is written as ``_grouped_taps`` (point 4 above)."""
  (x, w), (dx, dw) = primals, tangents
  y = _stored_input_conv.fun(x, w, params)
  kernel_term = _grouped_taps if _taps_apply(x, w, params) else _stored_input_conv.fun
  dy = _stored_input_conv.fun(dx, w, params) + kernel_term(_as_stored(x, w), dw, params)
  return y, dy


def _taps_apply(x, w, params: tuple) -> bool:
  """A grouped NHWC x HWIO convolution with explicit padding and an undilated input."""
  a = dict(params)
  padding = a.get('padding')
  return (
    a.get('feature_group_count', 1) > 1
    and a.get('batch_group_count', 1) == 1
    and a.get('lhs_dilation') in (None, (1, 1))
    and not isinstance(padding, str)
    and a.get('preferred_element_type') is None
    and _dimensions(x, w, a.get('dimension_numbers')) == _dimensions(x, w, NHWC)
  )


def _grouped_taps(x, w, params: tuple):
  """A grouped convolution as a sum over the kernel's taps of per-group matrix products.

  The same function of ``x`` and ``w`` as lax's (float32 sums in another order); what matters is
  its transpose in ``w``: one matrix product per tap, contracting the batch and spatial axes
  against the output gradient. XLA:CPU runs the kernel gradient of a grouped convolution (a
  convolution with ``batch_group_count``) in a generic loop, 100-250x slower than that.
  """
  a = dict(params)
  (pt, pb), (pl, pr) = a['padding']
  sh, sw = a['window_strides']
  dh, dw = a.get('rhs_dilation') or (1, 1)
  kh, kw, cg, cout = w.shape
  groups = a['feature_group_count']
  x = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  n, h, width, c = x.shape
  ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (width - dw * (kw - 1) - 1) // sw + 1
  w = w.reshape(kh, kw, cg, groups, cout // groups)
  y = 0
  for i in range(kh):
    for j in range(kw):
      start = (0, i * dh, j * dw, 0)
      end = (n, i * dh + (ho - 1) * sh + 1, j * dw + (wo - 1) * sw + 1, c)
      tap = lax.slice(x, start, end, (1, sh, sw, 1)).reshape(n, ho, wo, groups, cg)
      y = y + jnp.einsum('nhwgc,cgd->nhwgd', tap, w[i, j], precision=a.get('precision'))
  return y.reshape(n, ho, wo, cout).astype(x.dtype)


_LAX_CONV = inspect.signature(lax.conv_general_dilated)


def _hashable(value):
  """Lists (e.g. flax's padding) as tuples; named tuples (ConvDimensionNumbers) as they are."""
  if isinstance(value, list | tuple) and not hasattr(value, '_fields'):
    return tuple(_hashable(v) for v in value)
  return value


def conv_general_dilated_stored_input(lhs, rhs, *args, **kwargs):
  """``lax.conv_general_dilated`` (same arguments, values and gradients); lowered for the CPU, its
  kernel gradient reads the stored input (point 1 above)."""
  arguments = _LAX_CONV.bind(lhs, rhs, *args, **kwargs).arguments
  params = tuple(
    (name, _hashable(value)) for name, value in arguments.items() if name not in ('lhs', 'rhs')
  )
  return lax.platform_dependent(
    lhs,
    rhs,
    cpu=lambda x, w: _stored_input_conv(x, w, params),
    default=lambda x, w: _stored_input_conv.fun(x, w, params),
  )


def _dimensions(lhs, rhs, numbers):
  """Dimension numbers in one form, whichever of lax's forms they came in (None: NCHW)."""
  return lax.conv_dimension_numbers(lhs.shape, rhs.shape, numbers)


def cpu_convolution(lowering, mode: str):
  """``lowering`` (``lax.conv_general_dilated``'s signature), except that the convolutions oneDNN
  takes (float32, NHWC x HWIO, explicit padding, undilated) lowered for the CPU get
  ``onednn.conv``, lax's forward pass (oneDNN's where grouped) with oneDNN's gradients, when
  ``onednn.enabled(mode)``; every other lowering and convolution as before."""
  if not onednn.enabled(mode):
    return lowering

  def conv(lhs, rhs, *args, **kwargs):
    bound = _LAX_CONV.bind(lhs, rhs, *args, **kwargs)
    bound.apply_defaults()
    a = bound.arguments
    padding = a['padding']
    ones = (None, (1, 1), [1, 1])
    applies = (
      lhs.dtype == rhs.dtype == jnp.float32
      and rhs.ndim == 4
      and a['preferred_element_type'] in (None, jnp.float32)
      and not isinstance(padding, str)
      and len(padding) == 2
      and a['lhs_dilation'] in ones
      and a['rhs_dilation'] in ones
      and a['batch_group_count'] == 1
      and a['out_sharding'] is None
      and _dimensions(lhs, rhs, a['dimension_numbers']) == _dimensions(lhs, rhs, NHWC)
    )
    if not applies:
      return lowering(lhs, rhs, *args, **kwargs)
    params = tuple(
      (name, _hashable(value)) for name, value in a.items() if name not in ('lhs', 'rhs')
    )
    return lax.platform_dependent(
      lhs,
      rhs,
      cpu=lambda x, w: onednn.conv(x, w, params),
      default=lambda x, w: lowering(x, w, *args, **kwargs),
    )

  return conv
