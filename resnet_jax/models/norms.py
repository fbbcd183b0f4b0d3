"""The normalisation layers a network can be built with, as torchvision's ``norm_layer``.

- 'batch': ``BatchNorm`` (``batch_norm.py``): batch statistics in training, running averages at
  evaluation; the paper's and torchvision's default.
- 'group': ``GroupNorm`` (Wu & He 2018), torch's ``nn.GroupNorm(num_groups, C)``: statistics
  per example over groups of channels, the same in training and evaluation, so they do not
  depend on the per-device batch; no running statistics.
- 'frozen_batch': ``FrozenBatchNorm``, torchvision's ``FrozenBatchNorm2d``: BatchNorm whose scale,
  bias and statistics are constants, for fine-tuning with small batches (detection backbones).

All share torchvision's names (``bn1``, ``downsample_1``...) and leaves (``scale``, ``bias``,
``mean``, ``var``), so checkpoints, ``init_from`` and ``convert`` treat them alike.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from flax import traverse_util
from jax import lax

from resnet_jax.models.batch_norm import BatchNorm

Dtype = Any
NORMS = ('batch', 'group', 'frozen_batch')


class GroupNorm(nn.Module):
  """torch's ``nn.GroupNorm(num_groups, C, eps)``: each example's channels in ``num_groups``
  groups, each normalised by its own mean and (biased) variance over its channels and pixels,
  then a per-channel scale and bias. Computed in float32 whatever the compute dtype."""

  num_groups: int = 32
  epsilon: float = 1e-5
  scale_init: Any = nn.initializers.ones
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    del train  # the statistics are the example's own, in training and evaluation alike
    channels = x.shape[-1]
    if channels % self.num_groups:
      raise ValueError(f'GroupNorm: {channels} channels do not split in {self.num_groups} groups.')
    scale = self.param('scale', self.scale_init, (channels,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (channels,), jnp.float32)
    grouped = x.astype(jnp.float32).reshape(*x.shape[:-1], self.num_groups, -1)
    axes = (*range(1, x.ndim - 1), x.ndim)  # pixels and the group's channels, per example
    mean = jnp.mean(grouped, axes, keepdims=True)
    var = jnp.mean(jnp.square(grouped - mean), axes, keepdims=True)
    y = ((grouped - mean) * lax.rsqrt(var + self.epsilon)).reshape(x.shape)
    return (y * scale + bias).astype(self.dtype)


class FrozenBatchNorm(nn.Module):
  """torchvision's ``FrozenBatchNorm2d``: ``x * scale' + bias'`` with ``scale' = scale *
  rsqrt(var + eps)`` and ``bias' = bias - mean * scale'``, in training too. Its four tensors are
  buffers in torch, not parameters: here they live in the ``batch_stats`` collection, so the
  optimiser (weight decay included) never sees them and training leaves them as they were
  loaded (``init_from`` moves a trained net's BatchNorm ``scale`` and ``bias`` there)."""

  epsilon: float = 1e-5
  scale_init: Any = nn.initializers.ones
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    del train
    channels = x.shape[-1]
    scale = self.variable('batch_stats', 'scale', self.scale_init, None, (channels,), jnp.float32)
    bias = self.variable('batch_stats', 'bias', jnp.zeros, (channels,), jnp.float32)
    mean = self.variable('batch_stats', 'mean', jnp.zeros, (channels,), jnp.float32)
    var = self.variable('batch_stats', 'var', jnp.ones, (channels,), jnp.float32)
    folded_scale = scale.value * lax.rsqrt(var.value + self.epsilon)
    folded_bias = bias.value - mean.value * folded_scale
    return (x.astype(jnp.float32) * folded_scale + folded_bias).astype(self.dtype)


NORM_LAYERS = (BatchNorm, GroupNorm, FrozenBatchNorm)


def batch_norm_of(net):
  """``norm_layer('batch', ...)`` with the BatchNorm options of ``net`` (a module with
  ``bn_momentum``, ``bn_epsilon``, ``bn_axis_name``, ``bn_axis_index_groups``, ``dtype``,
  ``cpu_kernels`` and ``frozen_norms``: the comparison nets)."""
  return norm_layer(
    'batch',
    momentum=net.bn_momentum,
    epsilon=net.bn_epsilon,
    groups=1,
    axis_name=net.bn_axis_name,
    axis_index_groups=net.bn_axis_index_groups,
    dtype=net.dtype,
    cpu_kernels=net.cpu_kernels,
    frozen=net.frozen_norms,
  )


def norm_layer(
  kind: str,
  *,
  momentum: float,
  epsilon: float,
  groups: int,
  axis_name: str | None,
  axis_index_groups: Any,
  dtype: Dtype,
  cpu_kernels: str,
  frozen: tuple[str, ...] = (),
):
  """The constructor of ``kind``'s layer (called with ``name`` and optionally ``scale_init``).

  ``momentum``, the device axis and ``frozen`` (the module paths of the layers a fine-tune
  freezes) concern BatchNorm only, ``groups`` GroupNorm only.
  """
  if kind == 'batch':
    return functools.partial(
      BatchNorm,
      momentum=momentum,
      epsilon=epsilon,
      axis_name=axis_name,
      axis_index_groups=axis_index_groups,
      dtype=dtype,
      cpu_kernels=cpu_kernels,
      frozen_paths=frozen,
    )
  if kind == 'group':
    return functools.partial(GroupNorm, num_groups=groups, epsilon=epsilon, dtype=dtype)
  if kind == 'frozen_batch':
    return functools.partial(FrozenBatchNorm, epsilon=epsilon, dtype=dtype)
  raise ValueError(f'norm must be one of {", ".join(NORMS)}, got {kind!r}.')


def collections_like(variables: dict, like: dict) -> dict:
  """``variables`` with each leaf in the collection ``like`` holds it under: a trained
  BatchNorm's ``params`` scale and bias become a frozen BatchNorm's ``batch_stats`` (and back),
  so ``init_from`` starts a frozen-norm fine-tune from an ordinary run."""
  wanted = {key[1:]: key[0] for key in traverse_util.flatten_dict(like)}
  moved = {}
  for (collection, *path), value in traverse_util.flatten_dict(variables).items():
    moved[(wanted.get(tuple(path), collection), *path)] = value
  return traverse_util.unflatten_dict(moved)
