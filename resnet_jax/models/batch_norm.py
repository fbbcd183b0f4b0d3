"""BatchNorm with torch's semantics and a written-out training backward pass.

``BatchNorm`` is the layer every network of ``resnet_jax.models`` uses; ``train_batch_norm`` is its
training-mode function (batch statistics, optionally shared across devices) with a custom VJP.

On XLA:CPU its per-channel sums (the statistics, and the backward pass's sums of dy and
dy * x_hat) can run as ``channel_sums.cc``'s custom calls, which read the activations once where
XLA's lowering makes four passes over them (``cpu_kernels``, ``native.kernels_enabled``;
PERFORMANCE.md).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from resnet_jax.cpu import native

Dtype = Any
MOMENTS, GRADIENT_SUMS = 'ResnetJaxChannelMoments', 'ResnetJaxChannelGradientSums'


class BatchNorm(nn.Module):
  """BatchNorm with torch semantics, in float32 whatever the compute dtype.

  Differs from ``flax.linen.BatchNorm`` in one place that matters for parity with torchvision: the
  running variance is updated with the unbiased batch variance (n / (n - 1)), as torch does, while
  the batch itself is normalised with the biased one. Statistics can be shared across devices with
  ``axis_name`` (optionally in groups, ``axis_index_groups``). In training its backward pass is
  written out (``train_batch_norm``): it keeps the input, not a float32 copy of every
  activation, which made ResNet-50's bf16 step 1.08x faster on an H100; its statistics take one
  read of the activations (``_statistics``), 1.04x more.

  Attributes:
    momentum: weight of the old running average (torch's ``1 - momentum``).
    epsilon: added to the variance.
    scale_init: initialiser of the scale (zeros for ``zero_init_residual``).
    axis_name: named device axis to average statistics over, or None for per-device statistics.
    axis_index_groups: groups of device indices along ``axis_name`` that share statistics.
    dtype: dtype of the output.
    cpu_kernels: 'auto', 'native' or 'xla': whether the float32 training pass's per-channel sums
      lowered for the CPU are ``channel_sums.cc``'s (``native.kernels_enabled``).
    frozen_paths: module paths ('layer1_0/bn1') of the layers a fine-tune freezes
      (``param_groups.frozen_norms``): in training too they normalise by their running
      statistics and leave them as they are (timm's ``freeze``).
  """

  momentum: float = 0.9
  epsilon: float = 1e-5
  scale_init: Any = nn.initializers.ones
  axis_name: str | None = None
  axis_index_groups: Any = None
  dtype: Dtype = jnp.float32
  cpu_kernels: str = 'auto'
  frozen_paths: tuple[str, ...] = ()

  @nn.compact
  def __call__(self, x, *, train: bool):
    if train and self.frozen_paths and '/'.join(self.path) in self.frozen_paths:
      train = False
    features = x.shape[-1]
    scale = self.param('scale', self.scale_init, (features,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (features,), jnp.float32)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)

    if not train:
      inv = lax.rsqrt(ra_var.value + self.epsilon) * scale
      return ((x.astype(jnp.float32) - ra_mean.value) * inv + bias).astype(self.dtype)
    sync = self.axis_name is not None and not self.is_initializing()
    axis = (self.axis_name, _hashable(self.axis_index_groups)) if sync else None
    use_native = native.kernels_for(x, self.cpu_kernels)
    y, mean, var = train_batch_norm(x, scale, bias, self.epsilon, self.dtype, axis, use_native)
    if not self.is_initializing():
      count = math.prod(x.shape[:-1]) * _group_size(axis)
      unbiased = var * (count / max(count - 1, 1))
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * unbiased
    return y


def _hashable(groups):
  return None if groups is None else tuple(tuple(g) for g in groups)


def _group_size(axis) -> int:
  """Devices whose examples one set of batch statistics covers."""
  if axis is None:
    return 1
  name, groups = axis
  return len(groups[0]) if groups else lax.axis_size(name)


def _sum_over(value, axis):
  return value if axis is None else lax.psum(value, axis[0], axis_index_groups=axis[1])


def _mean_over(value, axis):
  return value if axis is None else lax.pmean(value, axis[0], axis_index_groups=axis[1])


def _native_sums(target, *operands):
  """[2, C] sums of ``channel_sums.cc``'s ``target`` over all but the operands' last axis."""
  result = jax.ShapeDtypeStruct((2, operands[0].shape[-1]), jnp.float32)
  return native.call(target, result, *operands)


def _statistics(x, axis, use_native: bool = False):
  """Batch mean and biased variance per channel, over the devices of ``axis`` too, in one pass
  over ``x``: both sums of ``x - shift`` and its squares, for a per-channel ``shift`` taken from
  the data (the first example's first pixel, averaged over the group's devices). The shift keeps
  the one-pass formula exact to float32 rounding: plain E[x^2] - E[x]^2 lost digits where a
  channel's mean is large beside its spread (the small late-stage maps), and two passes (mean,
  then centred squares) read every activation twice in the forward pass, which is memory bound
  on GPUs (PERFORMANCE.md). Shared statistics take one collective of both sums."""
  reduce_axes = tuple(range(x.ndim - 1))
  x32 = x.astype(jnp.float32)
  shift = _mean_over(lax.stop_gradient(x32[(0,) * (x.ndim - 1)]), axis)
  count = math.prod(x.shape[:-1])

  def xla_means():
    centred = x32 - shift
    return jnp.stack([jnp.mean(centred, reduce_axes), jnp.mean(centred**2, reduce_axes)])

  def native_means():
    return _native_sums(MOMENTS, x32, shift) / np.float32(count)

  sums = _mean_over(native.on_cpu(use_native, native_means, xla_means), axis)
  mean_centred, mean_square = sums[0], sums[1]
  return shift + mean_centred, jnp.maximum(mean_square - jnp.square(mean_centred), 0.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def train_batch_norm(x, scale, bias, epsilon, dtype, axis, use_native=False):
  """Training-mode BatchNorm: (normalised x in ``dtype``, batch mean, batch variance).

  Its backward pass is written out so that it keeps only ``x`` itself (bfloat16 under half
  precision) and per-channel vectors: autodiff of the float32 expressions kept a float32
  ``x - mean`` of every activation, twice the bytes, and the step is memory bound on GPUs
  (PERFORMANCE.md). Mean and variance leave only to the running statistics; no gradient flows
  back through them. ``use_native``: float32 ``x``'s per-channel sums by ``channel_sums.cc``
  where the program is lowered for the CPU (``native.kernels_enabled``).
  """
  return train_batch_norm_forward(x, scale, bias, epsilon, dtype, axis, use_native)[0]


def train_batch_norm_forward(x, scale, bias, epsilon, dtype, axis, use_native=False):
  mean, var = _statistics(x, axis, use_native)
  rstd = lax.rsqrt(var + epsilon)
  y = ((x.astype(jnp.float32) - mean) * (rstd * scale) + bias).astype(dtype)
  return (y, mean, var), (x, mean, rstd, scale)


def train_batch_norm_backward(epsilon, dtype, axis, use_native, residuals, cotangents):
  del epsilon, dtype
  x, mean, rstd, scale = residuals
  dy = cotangents[0].astype(jnp.float32)
  reduce_axes = tuple(range(x.ndim - 1))
  xhat = (x.astype(jnp.float32) - mean) * rstd

  def xla_gradient_sums():
    return jnp.sum(dy, reduce_axes), jnp.sum(dy * xhat, reduce_axes)

  def native_gradient_sums():  # sum(dy * x_hat) = rstd * sum(dy * (x - mean)): x_hat not written
    sums = _native_sums(GRADIENT_SUMS, dy, x.astype(jnp.float32), mean)
    return sums[0], sums[1] * rstd

  dbias, dscale = native.on_cpu(use_native, native_gradient_sums, xla_gradient_sums)
  count = math.prod(x.shape[:-1]) * _group_size(axis)
  # The statistics covered every device of the group, so x's gradient uses the group's sums; the
  # parameters' gradients stay per device (the train step averages them like all others).
  mean_dy, mean_dy_xhat = _sum_over(dbias, axis) / count, _sum_over(dscale, axis) / count
  dx = (scale * rstd) * (dy - mean_dy - xhat * mean_dy_xhat)
  return dx.astype(x.dtype), dscale, dbias


train_batch_norm.defvjp(train_batch_norm_forward, train_batch_norm_backward)
