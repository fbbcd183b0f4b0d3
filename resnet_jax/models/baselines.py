"""The paper's comparison nets, as torchvision builds them (its ``vgg.py`` and ``alexnet.py``):
VGG-11/13/16/19 (Simonyan & Zisserman 2014), with and without BatchNorm, and AlexNet
(Krizhevsky 2014's one-GPU variant, torchvision's). Fig. 3 sets VGG-19 beside the 34-layer nets;
Table 3 lists VGG-16.

Module names are torchvision's with ``.`` replaced by ``_`` (``features_0/kernel`` is
``features.0.weight``, ``classifier_6`` the last linear layer), and the classifier flattens the
pooled map in torch's channel-major order, so converted weights map one to one and logits match.

In training the classifier's dropout draws from one PRNG key per example (``example_keys``),
as ``ResNet``'s stochastic depth does: the draws follow the global data order, not the devices.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models import conv as conv_lowering
from resnet_jax.models import example_draws, layers, norms

Dtype = Any
POOL = 'M'
# torchvision's cfgs "A", "B", "D", "E": output channels of each 3x3 conv, POOL a 2x2 max pool.
VGG_LAYERS = {
  11: (64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL),
  13: (64, 64, POOL, 128, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL),
  16: (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512, POOL),
  19: (
    *(64, 64, POOL, 128, 128, POOL),
    *(256, 256, 256, 256, POOL, 512, 512, 512, 512, POOL, 512, 512, 512, 512, POOL),
  ),
}
# AlexNet's features: (channels, kernel, stride, padding) per conv; a 3x3 stride-2 max pool after
# the first, second and last.
ALEXNET_CONVS = ((64, 11, 4, 2), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1))
ALEXNET_POOL_AFTER = (0, 1, 4)

# torchvision's VGG init: its ResNet's kaiming_normal_ convs (layers.conv_init), N(0, 0.01)
# linears, zero biases. AlexNet keeps torch's defaults (layers.dense_kernel_init for every weight,
# layers.torch_default_bias).
vgg_dense_init = nn.initializers.normal(0.01)


def adaptive_average_pool(x, size: int):
  """torch's ``AdaptiveAvgPool2d((size, size))``, NHWC: output cell i averages input rows
  floor(i * H / size) .. ceil((i + 1) * H / size) - 1 (likewise columns), so a smaller map is
  repeated and a map of ``size`` is unchanged."""

  def pool(x, axis):
    n = x.shape[axis]
    cells = [
      jnp.mean(
        jax.lax.slice_in_dim(x, (i * n) // size, -((-(i + 1) * n) // size), axis=axis),
        axis=axis,
        keepdims=True,
      )
      for i in range(size)
    ]
    return jnp.concatenate(cells, axis=axis)

  if x.shape[1] == x.shape[2] == size:
    return x
  return pool(pool(x, 1), 2)


class Linear(nn.Module):
  """torch's ``Linear`` (kernel stored (in, out)); ``window`` applies it as the convolution over
  ``window`` x ``window`` patches that it equals on a map flattened channel-major, as torch
  flattens NCHW (VGG's dense evaluation)."""

  features: int
  kernel_init: Any
  bias_init: Any

  @nn.compact
  def __call__(self, x, window: int = 0):
    fan_in = x.shape[-1] * window * window if window else x.shape[-1]
    kernel = self.param('kernel', self.kernel_init, (fan_in, self.features), jnp.float32)
    bias = self.param('bias', self.bias_init, (self.features,), jnp.float32)
    if not window:
      return jnp.dot(x, kernel) + bias
    # Row c * window^2 + h * window + w of the kernel is tap (h, w) of input channel c.
    taps = kernel.reshape(x.shape[-1], window, window, self.features).transpose(1, 2, 0, 3)
    dimensions = ('NHWC', 'HWIO', 'NHWC')
    y = jax.lax.conv_general_dilated(x, taps, (1, 1), 'VALID', dimension_numbers=dimensions)
    return y + bias


class ClassicNet(nn.Module):
  """VGG or AlexNet: convolutional features, an adaptive average pool to ``pool_size``, then
  torchvision's classifier (two 4096-wide ReLU layers with dropout, then the class layer).

  Attributes:
    family: 'vgg' or 'alexnet'.
    num_classes: classifier width.
    depth: VGG's 11, 13, 16 or 19 (unused by AlexNet).
    batch_norm: VGG with a BatchNorm after every conv (torchvision's ``vgg*_bn``).
    dropout: the classifier's dropout rate (torchvision's argument, 0.5).
    bn_momentum, bn_epsilon, bn_axis_name, bn_axis_index_groups, cpu_kernels: as ``ResNet``'s,
      for ``vgg*_bn``'s norms.
    cpu_convolution: as ``ResNet``'s: oneDNN's gradients for the CPU's float32 convolutions.
    frozen_norms: as ``ResNet``'s: the BatchNorms a fine-tune freezes.
    dtype: compute dtype; parameters, BN statistics and logits stay float32.
  """

  family: str
  num_classes: int
  depth: int = 16
  batch_norm: bool = False
  dropout: float = 0.5
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_axis_name: str | None = None
  bn_axis_index_groups: Any = None
  cpu_convolution: str = 'auto'
  cpu_kernels: str = 'auto'
  frozen_norms: tuple[str, ...] = ()
  dtype: Dtype = jnp.float32

  head_name = 'classifier_6'  # torchvision's classifier.6
  name_fields = ('family', 'depth', 'batch_norm')  # what the net's name sets, not options

  @property
  def random_in_training(self) -> bool:
    """Whether training draws (dropout), and so takes ``example_keys``."""
    return self.dropout > 0

  @property
  def pool_size(self) -> int:
    """The adaptive pool's output: the first linear layer's window."""
    return 6 if self.family == 'alexnet' else 7

  @property
  def min_image_size(self) -> int:
    """The smallest image whose feature map is not empty: VGG pools 32-fold; AlexNet's stride-4
    11x11 and three 3x3 stride-2 pools leave one pixel of 63."""
    return 63 if self.family == 'alexnet' else 32

  @property
  def min_dense_image_size(self) -> int:
    """The smallest image whose feature map holds one ``pool_size`` window (spatial_logits)."""
    return 223 if self.family == 'alexnet' else 224

  @nn.compact
  def __call__(self, x, *, train: bool, spatial_logits: bool = False, example_keys=None):
    """Applies the network.

    Args:
      x: images, NHWC.
      train: dropout on (and batch statistics for ``vgg*_bn``) if True.
      spatial_logits: the fully-convolutional form (VGG's dense evaluation): the first linear
        layer applied as a ``pool_size`` convolution and the others as 1x1s over the feature
        map, giving [N, h, w, num_classes]. Needs a map of at least ``pool_size`` (224 pixels).
      example_keys: in training with dropout, one PRNG key per example.

    Returns:
      float32 logits.
    """
    if train and self.random_in_training and example_keys is None:
      raise ValueError('dropout in training takes example_keys (one PRNG key per example).')
    x = x.astype(self.dtype)
    x = self._alexnet_features(x) if self.family == 'alexnet' else self._vgg_features(x, train)
    if min(x.shape[1:3]) < 1:
      raise ValueError(
        f'{self.family} needs images of at least {self.min_image_size} pixels; got '
        f'{x.shape[1]}x{x.shape[2]} feature maps (empty).'
      )
    x = x.astype(jnp.float32)
    if spatial_logits:
      if min(x.shape[1:3]) < self.pool_size:
        raise ValueError(
          f'The fully-convolutional {self.family} needs a feature map of at least '
          f'{self.pool_size}x{self.pool_size} (224-pixel images); got {x.shape[1]}x{x.shape[2]}.'
        )
      return self._classifier(x, train, example_keys, window=self.pool_size)
    x = adaptive_average_pool(x, self.pool_size)
    x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # torch's flatten of NCHW
    return self._classifier(x, train, example_keys)

  def _conv(self, features, kernel, stride, padding, in_channels, name):
    if self.family == 'vgg':
      kernel_init, bias_init = layers.conv_init, nn.initializers.zeros
    else:
      kernel_init, bias_init = (
        layers.dense_kernel_init,
        layers.torch_default_bias(kernel * kernel * in_channels),
      )
    lowering = conv_lowering.conv_general_dilated_stored_input
    return nn.Conv(
      features,
      (kernel, kernel),
      (stride, stride),
      padding=((padding, padding), (padding, padding)),
      conv_general_dilated=conv_lowering.cpu_convolution(lowering, self.cpu_convolution),
      dtype=self.dtype,
      param_dtype=jnp.float32,
      kernel_init=kernel_init,
      bias_init=bias_init,
      name=name,
    )

  def _vgg_features(self, x, train):
    if self.depth not in VGG_LAYERS:
      raise ValueError(f'VGG depth must be one of {sorted(VGG_LAYERS)}, got {self.depth}.')
    norm = norms.batch_norm_of(self)
    index = 0  # torchvision's index in its features Sequential: conv, [norm], ReLU, or pool
    for layer in VGG_LAYERS[self.depth]:
      if layer == POOL:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        index += 1
        continue
      x = self._conv(layer, 3, 1, 1, x.shape[-1], name=f'features_{index}')(x)
      if self.batch_norm:
        x = norm(name=f'features_{index + 1}')(x, train=train)
      x = nn.relu(x)
      index += 3 if self.batch_norm else 2
    return x

  def _alexnet_features(self, x):
    index = 0  # as in VGG's: conv, ReLU, [pool]
    for i, (features, kernel, stride, padding) in enumerate(ALEXNET_CONVS):
      conv = self._conv(features, kernel, stride, padding, x.shape[-1], name=f'features_{index}')
      x = nn.relu(conv(x))
      index += 2
      if i in ALEXNET_POOL_AFTER:
        x = nn.max_pool(x, (3, 3), strides=(2, 2))
        index += 1
    return x

  def _classifier(self, x, train, example_keys, window=0):
    """torchvision's classifier Sequential: the three linear layers by their index in it, each
    with the index of the dropout before it (None: none)."""
    if self.family == 'alexnet':  # Dropout, Linear, ReLU, Dropout, Linear, ReLU, Linear
      linear_layers = ((1, 0), (4, 3), (6, None))
    else:  # Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear
      linear_layers = ((0, None), (3, 2), (6, 5))
    widths = (4096, 4096, self.num_classes)
    pairs = zip(linear_layers, widths, strict=True)
    for layer, ((index, dropout_index), width) in enumerate(pairs):
      if train and dropout_index is not None:
        x = example_draws.dropout(x, example_keys, dropout_index, self.dropout)
      fan_in = x.shape[-1] * (window * window if layer == 0 and window else 1)
      if self.family == 'vgg':
        kernel_init, bias_init = vgg_dense_init, nn.initializers.zeros
      else:
        kernel_init, bias_init = layers.dense_kernel_init, layers.torch_default_bias(fan_in)
      linear = Linear(width, kernel_init, bias_init, name=f'classifier_{index}')
      x = linear(x, window if layer == 0 else 0)
      if layer < 2:
        x = nn.relu(x)
    return x
