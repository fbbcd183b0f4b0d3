"""Channel attention inside a residual block, as timm builds it (``attn_layer`` of its ResNet):
squeeze-and-excitation (Hu et al. 2018, timm's ``SEModule``) and efficient channel attention
(Wang et al. 2020, timm's ``EcaModule``). Either rescales each channel of the block's last norm
output by a gate in (0, 1) computed from the channel means, before the shortcut is added.

Parameter names are timm's (``se/fc1``, ``se/fc2``; ``se/conv`` for ECA), so its state_dicts
convert one to one.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from resnet_jax.models import layers

ATTENTIONS = ('', 'se', 'eca')


def se_channels(channels: int, ratio: float = 1 / 16, divisor: int = 8) -> int:
  """SE's reduced width: ``channels * ratio`` rounded to the nearest multiple of ``divisor`` (at
  least one of it), never bumped up (timm's ``make_divisible(..., round_limit=0)``)."""
  return max(divisor, int(channels * ratio + divisor / 2) // divisor * divisor)


def eca_kernel_size(channels: int, gamma: float = 2, beta: float = 1) -> int:
  """ECA's adaptive 1-D kernel: |log2(C) + beta| / gamma, made odd upwards, at least 3."""
  t = int(abs(math.log(channels, 2) + beta) / gamma)
  return max(t if t % 2 else t + 1, 3)


class SqueezeExcite(nn.Module):
  """x * sigmoid(fc2(relu(fc1(mean_hw(x))))), fc1 and fc2 1x1 convolutions with bias."""

  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    reduced = se_channels(channels)
    # The mean accumulates in float32 under mixed precision (a sum over every pixel).
    s = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(self.dtype)

    def fc(features, fan_in, name):  # timm's 1x1 conv with bias; torch's init of the bias
      return nn.Conv(
        features,
        (1, 1),
        dtype=self.dtype,
        param_dtype=jnp.float32,
        kernel_init=layers.conv_init,
        bias_init=layers.torch_default_bias(fan_in),
        name=name,
      )

    s = nn.relu(fc(reduced, channels, 'fc1')(s))
    return x * nn.sigmoid(fc(channels, reduced, 'fc2')(s))


class _ChannelConv(nn.Module):
  """torch's ``Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)`` over [N, C] (the channels as
  the sequence): its kernel stored as Conv1d's (k, 1, 1) WIO, run as a (k x 1) 2-D convolution,
  which every backend and the ONNX export take."""

  kernel_size: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, s):
    k = self.kernel_size
    # torch's Conv1d default (kaiming_uniform, a=sqrt(5)): U(+-1/sqrt(k)); timm leaves it so.
    kernel = self.param('kernel', layers.dense_kernel_init, (k, 1, 1), jnp.float32)
    y = lax.conv_general_dilated(
      s[:, :, None, None].astype(self.dtype),  # [N, C, 1, 1]: NHWC with H = C
      kernel[:, None].astype(self.dtype),  # (k, 1, 1, 1) HWIO
      (1, 1),
      (((k - 1) // 2, (k - 1) // 2), (0, 0)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    )
    return y[:, :, 0, 0]


class EfficientChannelAttention(nn.Module):
  """x * sigmoid(conv1d(mean_hw(x))): one bias-free 1-D convolution across the channels, its
  kernel size by ``eca_kernel_size``, zero-padded at both ends."""

  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    s = jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # [N, C]
    s = _ChannelConv(eca_kernel_size(x.shape[-1]), self.dtype, name='conv')(s)
    return x * nn.sigmoid(s)[:, None, None, :].astype(x.dtype)


def attention_layer(kind: str, dtype):
  """The module for ``kind`` (one of ATTENTIONS), named ``se`` as timm names both; None for ''."""
  if kind not in ATTENTIONS:
    raise ValueError(f"attention must be '', 'se' or 'eca', got {kind!r}.")
  if not kind:
    return None
  cls = SqueezeExcite if kind == 'se' else EfficientChannelAttention
  return cls(dtype=dtype, name='se')
