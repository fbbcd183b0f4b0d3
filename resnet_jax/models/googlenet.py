"""GoogLeNet (Szegedy et al. 2014, "Going deeper with convolutions"), as torchvision builds it
(its ``googlenet.py``): the paper's Tables 4 and 5 compare ResNets against it.

torchvision's GoogLeNet is Inception v1 with a BatchNorm after every convolution
(``BasicConv2d``: a convolution without bias, BatchNorm with eps 1e-3, ReLU), max pools that
round up (``ceil_mode``), the inception module's "5x5" branch built with a 3x3 convolution (a
known slip torchvision keeps for its released weights), dropout 0.2 before the classifier, and
the two auxiliary classifiers after inception 4a and 4d, which run in training only (their
losses weighted 0.3, as the GoogLeNet paper does: ``aux_loss_weight``). ``transform_input``
turns images normalised by ImageNet's mean and std into the (x - 0.5) / 0.5 scaling the released
weights were trained on.

Module names are torchvision's with ``.`` replaced by ``_`` before a number (``conv1/conv/kernel``
is ``conv1.conv.weight``, ``inception3a/branch2_1/bn`` is ``inception3a.branch2.1.bn``), and the
auxiliary classifiers flatten their 4x4 map in torch's channel-major order, so converted weights
map one to one and logits match.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models import conv as conv_lowering
from resnet_jax.models import example_draws, norms
from resnet_jax.models.baselines import Linear, adaptive_average_pool
from resnet_jax.models.layers import torch_default_bias

Dtype = Any
# Each inception module's widths, torchvision's arguments: the 1x1 branch; the 3x3 branch's
# reduction and output; the "5x5" branch's reduction and output; the pool branch's projection.
INCEPTION = {
  '3a': (64, 96, 128, 16, 32, 32),
  '3b': (128, 128, 192, 32, 96, 64),
  '4a': (192, 96, 208, 16, 48, 64),
  '4b': (160, 112, 224, 24, 64, 64),
  '4c': (128, 128, 256, 24, 64, 64),
  '4d': (112, 144, 288, 32, 64, 64),
  '4e': (256, 160, 320, 32, 128, 128),
  '5a': (256, 160, 320, 32, 128, 128),
  '5b': (384, 192, 384, 48, 128, 128),
}
# The max pool after each stage: (window, stride), rounding up as torch's ceil_mode does.
STAGE_POOLS = {'3b': (3, 2), '4e': (2, 2)}
AUX_AFTER = {'4a': 'aux1', '4d': 'aux2'}
# torchvision's init: N(0, 0.01) truncated at +-2 (200 standard deviations: no truncation in
# practice) for every convolution and linear weight; linear biases keep torch's default.
weight_init = nn.initializers.truncated_normal(0.01, lower=-200.0, upper=200.0)
# transform_input: x * std / 0.5 + (mean - 0.5) / 0.5 per channel (torchvision's constants).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def max_pool_ceil(x, window: int, stride: int, padding: int = 0):
  """torch's ``MaxPool2d(window, stride, padding, ceil_mode=True)``, NHWC: the output size
  rounds up, and a last window that would start in the right padding alone is dropped."""
  pads = []
  for size in x.shape[1:3]:
    out = -(-(size + 2 * padding - window) // stride) + 1
    if (out - 1) * stride >= size + padding:
      out -= 1
    if out < 1:
      raise ValueError(
        f'GoogLeNet needs images of at least {GoogLeNet.min_image_size} pixels: a {window}x'
        f'{window} pool got a {size}-pixel map.'
      )
    pads.append((padding, (out - 1) * stride + window - size - padding))
  return jax.lax.reduce_window(  # (-inf, max: the differentiable reduce_window_max)
    x,
    -jnp.inf,
    jax.lax.max,
    (1, window, window, 1),
    (1, stride, stride, 1),
    [(0, 0), *pads, (0, 0)],
  )


class BasicConv2d(nn.Module):
  """torchvision's ``BasicConv2d``: convolution (no bias), BatchNorm (eps 1e-3), ReLU."""

  features: int
  kernel: int
  norm: Any
  stride: int = 1
  padding: int = 0
  cpu_convolution: str = 'auto'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    lowering = conv_lowering.conv_general_dilated_stored_input
    x = nn.Conv(
      self.features,
      (self.kernel, self.kernel),
      (self.stride, self.stride),
      padding=((self.padding, self.padding), (self.padding, self.padding)),
      use_bias=False,
      conv_general_dilated=conv_lowering.cpu_convolution(lowering, self.cpu_convolution),
      dtype=self.dtype,
      param_dtype=jnp.float32,
      kernel_init=weight_init,
      name='conv',
    )(x)
    return nn.relu(self.norm(name='bn')(x, train=train))


class Inception(nn.Module):
  """torchvision's ``Inception``: four branches concatenated along the channels."""

  widths: tuple[int, ...]
  conv_block: Any  # BasicConv2d with its norm and options bound

  @nn.compact
  def __call__(self, x, train: bool):
    ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj = self.widths
    conv = self.conv_block
    branch1 = conv(ch1x1, 1, name='branch1')(x, train)
    branch2 = conv(ch3x3red, 1, name='branch2_0')(x, train)
    branch2 = conv(ch3x3, 3, padding=1, name='branch2_1')(branch2, train)
    branch3 = conv(ch5x5red, 1, name='branch3_0')(x, train)
    branch3 = conv(ch5x5, 3, padding=1, name='branch3_1')(branch3, train)  # torchvision's "5x5"
    branch4 = conv(pool_proj, 1, name='branch4_1')(max_pool_ceil(x, 3, 1, padding=1), train)
    return jnp.concatenate([branch1, branch2, branch3, branch4], axis=-1)


class InceptionAux(nn.Module):
  """torchvision's ``InceptionAux``: a 4x4 average pool, a 1x1 convolution to 128 channels, two
  linear layers with dropout between them (training only)."""

  num_classes: int
  conv_block: Any
  dropout: float
  dropout_index: int  # which of the net's dropout layers this is (its draws' stream)

  @nn.compact
  def __call__(self, x, train: bool, example_keys=None):
    x = adaptive_average_pool(x.astype(jnp.float32), 4).astype(x.dtype)
    x = self.conv_block(128, 1, name='conv')(x, train)
    x = x.astype(jnp.float32).transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # torch's flatten
    x = nn.relu(Linear(1024, weight_init, torch_default_bias(x.shape[-1]), name='fc1')(x))
    if train:
      x = example_draws.dropout(x, example_keys, self.dropout_index, self.dropout)
    return Linear(self.num_classes, weight_init, torch_default_bias(1024), name='fc2')(x)


class GoogLeNet(nn.Module):
  """GoogLeNet as torchvision builds it.

  Attributes:
    num_classes: classifier width (the auxiliary classifiers' too).
    aux_logits: build the two auxiliary classifiers (torchvision's default True). They run in
      training only, where their logits are sown into the ``intermediates`` collection as
      ``aux_logits`` (the train step weighs their losses); evaluation never uses them.
    transform_input: rescale ImageNet-normalised images as torchvision's released weights expect.
    dropout: before the classifier (torchvision's 0.2).
    dropout_aux: in the auxiliary classifiers (torchvision's 0.7).
    bn_momentum, bn_epsilon, bn_axis_name, bn_axis_index_groups, cpu_kernels, cpu_convolution,
      frozen_norms, dtype: as ``ResNet``'s (BatchNorm's epsilon is torchvision's 1e-3 here).
  """

  num_classes: int
  aux_logits: bool = True
  transform_input: bool = False
  dropout: float = 0.2
  dropout_aux: float = 0.7
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-3
  bn_axis_name: str | None = None
  bn_axis_index_groups: Any = None
  cpu_convolution: str = 'auto'
  cpu_kernels: str = 'auto'
  frozen_norms: tuple[str, ...] = ()
  dtype: Dtype = jnp.float32

  # The smallest image whose maps every pool keeps non-empty (torch's rule for ceil_mode pools);
  # the classifier then reads one position of the final map.
  min_image_size = 15
  min_dense_image_size = 15
  pool_size = 1  # spatial_logits: the classifier at each position of the final map

  @property
  def random_in_training(self) -> bool:
    """Whether training draws (dropout), and so takes ``example_keys``."""
    return self.dropout > 0 or (self.aux_logits and self.dropout_aux > 0)

  @nn.compact
  def __call__(
    self, x, *, train: bool, spatial_logits: bool = False, example_keys=None, features=()
  ):
    """Applies the network.

    Args:
      x: images, NHWC.
      train: batch statistics, dropout and the auxiliary classifiers if True.
      spatial_logits: the classifier at every position of the final map, [N, h, w, classes]
        (the paper's multi-scale test averages them).
      example_keys: in training with dropout, one PRNG key per example.
      features: ('pre_logits',): instead return {'pre_logits': the pooled float32 features}.

    Returns:
      float32 logits.
    """
    if train and self.random_in_training and example_keys is None:
      raise ValueError('dropout in training takes example_keys (one PRNG key per example).')
    if set(features) - {'pre_logits'}:
      raise ValueError(f'Unknown features {sorted(set(features) - {"pre_logits"})}: pre_logits.')
    if self.transform_input:
      x = x * (jnp.array(IMAGENET_STD) / 0.5) + (jnp.array(IMAGENET_MEAN) - 0.5) / 0.5
    x = x.astype(self.dtype)
    conv = self._conv_block()
    x = conv(64, 7, stride=2, padding=3, name='conv1')(x, train)
    x = max_pool_ceil(x, 3, 2)
    x = conv(64, 1, name='conv2')(x, train)
    x = conv(192, 3, padding=1, name='conv3')(x, train)
    x = max_pool_ceil(x, 3, 2)
    for index, (stage, widths) in enumerate(INCEPTION.items()):
      x = Inception(widths, conv, name=f'inception{stage}')(x, train)
      # In training only; at initialisation too, so that their variables exist in any mode.
      if stage in AUX_AFTER and self.aux_logits and (train or self.is_initializing()):
        aux = InceptionAux(self.num_classes, conv, self.dropout_aux, index, name=AUX_AFTER[stage])
        self.sow('intermediates', 'aux_logits', aux(x, train, example_keys))
      if stage in STAGE_POOLS:
        x = max_pool_ceil(x, *STAGE_POOLS[stage])
    x = x.astype(jnp.float32)
    fc = Linear(self.num_classes, weight_init, torch_default_bias(x.shape[-1]), name='fc')
    if spatial_logits:
      return fc(x)
    x = jnp.mean(x, axis=(1, 2))
    if features:
      return {'pre_logits': x}
    if train:
      x = example_draws.dropout(x, example_keys, len(INCEPTION), self.dropout)
    return fc(x)

  def _conv_block(self):
    """``BasicConv2d`` with this net's norm and options bound: (features, kernel, ...)."""
    norm = norms.batch_norm_of(self)
    return functools.partial(
      BasicConv2d, norm=norm, cpu_convolution=self.cpu_convolution, dtype=self.dtype
    )
