"""Layers the nets share: torch's convolution (symmetric padding, its initialisation; weight
standardised for BiT), torch's default linear initialisation, and ResNet-D's 2x2 average pool."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models import conv as conv_lowering

# torchvision's kaiming_normal_(mode='fan_out', nonlinearity='relu'): N(0, 2 / fan_out) untruncated.
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
# torch.nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the weight and the bias.
dense_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def torch_default_bias(fan_in: int):
  """torch's default bias of a linear or convolution layer, U(-1/sqrt(fan_in), 1/sqrt(fan_in)):
  flax's bias initialiser does not see the kernel's fan-in, so it is given here."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


# BiT's weight standardisation epsilon (its TF code and big_vision's bit_paper.py, whose released
# weights were trained with it; timm's port uses 1e-8, which moves their logits measurably).
WS_EPSILON = 1e-10


def standardize_kernel(kernel):
  """Weight standardisation (Qiao et al. 2019, as BiT): each output channel's kernel minus its
  mean over (H, W, input channels), divided by sqrt(its biased variance + WS_EPSILON)."""
  kernel = kernel - jnp.mean(kernel, axis=(0, 1, 2), keepdims=True)
  return kernel / jnp.sqrt(jnp.mean(jnp.square(kernel), axis=(0, 1, 2), keepdims=True) + WS_EPSILON)


class StandardizedConv(nn.Conv):
  """nn.Conv that convolves with its kernel standardised (``standardize_kernel``), in float32
  before the cast to the compute dtype; the stored parameter stays the raw kernel."""

  def param(self, name, *args, **kwargs):
    value = super().param(name, *args, **kwargs)
    return standardize_kernel(value) if name == 'kernel' else value


def conv(
  features,
  kernel,
  strides=(1, 1),
  *,
  dtype,
  groups=1,
  dilation=1,
  name=None,
  kernel_init=conv_init,
  lowering=conv_lowering.conv_general_dilated_stored_input,
  cpu_convolution='auto',
  standardize=False,
):
  """A bias-free conv with torch's symmetric padding of dilation * (k // 2) (never XLA's
  asymmetric SAME), ``groups`` channel groups and a ``dilation``-spaced kernel (torch's).

  ``lowering`` runs it (``lax.conv_general_dilated``'s signature), except the gradients of the
  float32 convolutions lowered for the CPU that oneDNN takes under ``cpu_convolution``
  (``conv.cpu_convolution``; undilated ones only). ``standardize``: weight
  standardisation (``StandardizedConv``).
  """
  pad = dilation * (kernel[0] // 2)
  return (StandardizedConv if standardize else nn.Conv)(
    features,
    kernel,
    strides,
    padding=((pad, pad), (pad, pad)),
    feature_group_count=groups,
    kernel_dilation=(dilation, dilation),
    use_bias=False,
    conv_general_dilated=conv_lowering.cpu_convolution(lowering, cpu_convolution),
    dtype=dtype,
    param_dtype=jnp.float32,
    kernel_init=kernel_init,
    name=name,
  )


def average_pool_2x2(x):
  """torch's ``AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)``, NHWC: an odd last row
  or column is a window of its own, averaged over the pixels it holds."""
  pad = ((0, x.shape[1] % 2), (0, x.shape[2] % 2))
  return nn.avg_pool(x, (2, 2), strides=(2, 2), padding=pad, count_include_pad=False)
