"""Residual and plain networks of He et al. (2015), laid out as torchvision builds them.

Module and parameter names mirror torchvision's ``resnet.py`` with ``.`` replaced by ``_``
(``layer1_0/conv1/kernel`` is ``layer1.0.conv1.weight``), so converted weights map one to one and
logits match torchvision's to float precision.

Example:
  model = get_model('resnet50', num_classes=1000)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False)
  logits = model.apply(variables, images, train=False)
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.cpu import native
from resnet_jax.models import conv as conv_lowering
from resnet_jax.models import stem
from resnet_jax.models.batch_norm import BatchNorm
from resnet_jax.models.block_layout import SCAN_SUFFIX

Dtype = Any

# torchvision's kaiming_normal_(mode='fan_out', nonlinearity='relu'): N(0, 2 / fan_out) untruncated.
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
# torch.nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the weight and the bias.
dense_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def shortcut_path(x, *, features, strides, option, conv, norm, train):
  """The identity path of a block, per the paper's Table 3 options.

  Called inside a block's compact ``__call__``, so a projection gets torchvision's names
  (``downsample_0`` conv, ``downsample_1`` BN) directly under the block.

  Args:
    x: block input.
    features: block output channels.
    strides: spatial stride of the block.
    option: 'A' (zero-padded identity), 'B' (projection where the shape changes), 'C' (always).
    conv, norm: the block's conv and BatchNorm constructors.
    train: BatchNorm mode.
  """
  in_features = x.shape[-1]
  reshaped = strides != 1 or in_features != features
  if option == 'C' or (option == 'B' and reshaped):
    x = conv(features, (1, 1), (strides, strides), name='downsample_0')(x)
    return norm(name='downsample_1')(x, train=train)
  if strides != 1:
    x = x[:, ::strides, ::strides, :]
  if in_features < features:
    # Option A: the extra channels are zeros, appended after the identity channels.
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, features - in_features)))
  return x


def _conv(
  features,
  kernel,
  strides=(1, 1),
  *,
  dtype,
  name=None,
  lowering=conv_lowering.conv_general_dilated_stored_input,
  cpu_convolution='auto',
):
  """A bias-free conv with torch's symmetric padding of k // 2 (never XLA's asymmetric SAME).

  ``lowering`` runs it (``lax.conv_general_dilated``'s signature), except the gradients of the
  float32 convolutions lowered for the CPU that oneDNN takes under ``cpu_convolution``
  (``conv.cpu_convolution``).
  """
  pad = kernel[0] // 2
  return nn.Conv(
    features,
    kernel,
    strides,
    padding=((pad, pad), (pad, pad)),
    use_bias=False,
    conv_general_dilated=conv_lowering.cpu_convolution(lowering, cpu_convolution),
    dtype=dtype,
    param_dtype=jnp.float32,
    kernel_init=conv_init,
    name=name,
  )


class _Block(nn.Module):
  """Fields and the residual join shared by both block types.

  Attributes:
    features: base filters of the block (the output has ``features * expansion``).
    strides: spatial stride of the block (on its first 3x3, or first 1x1 with stride_in_1x1).
    shortcut: 'A', 'B' or 'C'.
    residual: False drops the shortcut (plain nets).
    conv, norm: conv and BatchNorm constructors configured by the network.
    zero_init_residual: start the last BN scale at zero so the block starts as the identity.
    stride_in_1x1: bottleneck only; see Bottleneck.
  """

  features: int
  strides: int
  shortcut: str
  residual: bool
  conv: Any
  norm: Any
  zero_init_residual: bool
  stride_in_1x1: bool = False

  def last_norm(self, name):
    init = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
    return self.norm(name=name, scale_init=init)

  def join(self, y, x, *, train):
    """relu(F(x) + shortcut(x)), or relu(F(x)) for a plain block."""
    if self.residual:
      y = y + shortcut_path(
        x,
        features=y.shape[-1],
        strides=self.strides,
        option=self.shortcut,
        conv=self.conv,
        norm=self.norm,
        train=train,
      )
    return nn.relu(y)


class BasicBlock(_Block):
  """3x3 -> BN -> ReLU -> 3x3 -> BN, (+ shortcut), ReLU. ResNet-18/34 and all CIFAR nets."""

  @nn.compact
  def __call__(self, x, *, train: bool):
    return self.forward(x, train)

  def forward(self, x, train: bool):
    y = self.conv(self.features, (3, 3), (self.strides, self.strides), name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y, train=train))
    y = self.conv(self.features, (3, 3), name='conv2')(y)
    y = self.last_norm('bn2')(y, train=train)
    return self.join(y, x, train=train)


class Bottleneck(_Block):
  """1x1 reduce -> 3x3 -> 1x1 expand (x4), BN after each, (+ shortcut), ReLU. ResNet-50/101/152.

  ``stride_in_1x1=False`` is torchvision's "v1.5" (stride on the 3x3); True is the paper's original.
  """

  @nn.compact
  def __call__(self, x, *, train: bool):
    return self.forward(x, train)

  def forward(self, x, train: bool):
    s1, s3 = (self.strides, 1) if self.stride_in_1x1 else (1, self.strides)
    y = self.conv(self.features, (1, 1), (s1, s1), name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y, train=train))
    y = self.conv(self.features, (3, 3), (s3, s3), name='conv2')(y)
    y = nn.relu(self.norm(name='bn2')(y, train=train))
    y = self.conv(self.features * 4, (1, 1), name='conv3')(y)
    y = self.last_norm('bn3')(y, train=train)
    return self.join(y, x, train=train)


@functools.cache
def _scan_body(block_cls):
  """``block_cls`` with the signature ``nn.scan`` wants: (carry, slice) -> (carry, output)."""

  class ScanBody(block_cls):
    train: bool = False

    @nn.compact
    def __call__(self, x, _):
      return self.forward(x, self.train), None

  ScanBody.__name__ = ScanBody.__qualname__ = f'{block_cls.__name__}ScanBody'
  return ScanBody


class ResNet(nn.Module):
  """A residual (or plain) network: stem, stages of blocks, global average pool, linear head.

  Attributes:
    stage_sizes: blocks per stage.
    block_cls: BasicBlock or Bottleneck.
    num_classes: width of the classifier.
    widths: base filters per stage (64/128/256/512 ImageNet, 16/32/64 CIFAR).
    stem: 'imagenet' (7x7/2 conv + 3x3/2 max pool) or 'cifar' (3x3 conv, no pool).
    shortcut: 'A', 'B' or 'C' (paper Table 3).
    residual: False builds the plain counterpart (same layers, no shortcuts).
    stride_in_1x1: bottleneck stride placement (see Bottleneck).
    zero_init_residual: zero the last BN scale of every block (Goyal et al. 2017).
    bn_momentum, bn_epsilon: BatchNorm constants (torch's 0.1 momentum is 0.9 here).
    bn_axis_name, bn_axis_index_groups: share BN statistics across devices (see BatchNorm).
    scan_blocks: run the identical blocks of each stage (all but its first) as one ``nn.scan``
      step, so the compiled program holds one copy of them: compile time independent of depth.
      Their variables are stacked under ``layer{i}_scan`` (``block_layout`` converts); the
      numbers are those of the per-block network with the same weights.
    cpu_convolution: 'auto', 'onednn' or 'xla': who runs the gradients of the float32
      convolutions lowered for the CPU (``cpu.onednn``). The same forward values; gradients
      equal to float32 rounding.
    cpu_kernels: 'auto', 'native' or 'xla': whether float32 training BatchNorm's per-channel
      sums and the stem's max pool, lowered for the CPU, are the project's C++ kernels
      (``native.kernels_enabled``). Pool values equal; statistics and gradients equal to float32
      rounding.
    dtype: compute dtype; parameters, BN statistics and logits stay float32.
  """

  stage_sizes: Sequence[int]
  block_cls: Any
  num_classes: int
  widths: Sequence[int] = (64, 128, 256, 512)
  stem: str = 'imagenet'
  shortcut: str = 'B'
  residual: bool = True
  stride_in_1x1: bool = False
  zero_init_residual: bool = False
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_axis_name: str | None = None
  bn_axis_index_groups: Any = None
  scan_blocks: bool = False
  cpu_convolution: str = 'auto'
  cpu_kernels: str = 'auto'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool, spatial_logits: bool = False):
    """Applies the network.

    Args:
      x: images, NHWC.
      train: batch statistics (and their running averages updated) if True, else running averages.
      spatial_logits: the paper's fully-convolutional test form: the head is applied at every
        position of the last feature map, giving [N, h, w, num_classes] instead of [N, num_classes].

    Returns:
      float32 logits.
    """
    conv = functools.partial(_conv, dtype=self.dtype, cpu_convolution=self.cpu_convolution)
    norm = functools.partial(
      BatchNorm,
      momentum=self.bn_momentum,
      epsilon=self.bn_epsilon,
      axis_name=self.bn_axis_name,
      axis_index_groups=self.bn_axis_index_groups,
      dtype=self.dtype,
      cpu_kernels=self.cpu_kernels,
    )
    x = x.astype(self.dtype)
    if self.stem == 'imagenet':
      x = conv(self.widths[0], (7, 7), (2, 2), name='conv1', lowering=stem.stem_conv)(x)
      x = nn.relu(norm(name='bn1')(x, train=train))
      use_native = native.kernels_for(x, self.cpu_kernels)
      x = stem.max_pool_3x3(x, use_native)
    elif self.stem == 'cifar':
      x = conv(self.widths[0], (3, 3), name='conv1')(x)
      x = nn.relu(norm(name='bn1')(x, train=train))
    else:
      raise ValueError(f"stem must be 'imagenet' or 'cifar', got {self.stem!r}")

    for i, (num_blocks, width) in enumerate(zip(self.stage_sizes, self.widths, strict=True)):
      block = functools.partial(
        self.block_cls,
        features=width,
        shortcut=self.shortcut,
        residual=self.residual,
        conv=conv,
        norm=norm,
        zero_init_residual=self.zero_init_residual,
        stride_in_1x1=self.stride_in_1x1,
      )
      x = block(strides=2 if i > 0 else 1, name=f'layer{i + 1}_0')(x, train=train)
      if self.scan_blocks and num_blocks > 1:
        blocks = nn.scan(
          _scan_body(self.block_cls),
          variable_axes={'params': 0, 'batch_stats': 0},
          split_rngs={'params': True},
          length=num_blocks - 1,
        )
        scanned_conv = functools.partial(conv, lowering=conv_lowering.conv_general_dilated)
        keywords = {**block.keywords, 'conv': scanned_conv}
        name = f'layer{i + 1}{SCAN_SUFFIX}'
        x, _ = blocks(**keywords, strides=1, train=train, name=name)(x, None)
        continue
      for j in range(1, num_blocks):
        x = block(strides=1, name=f'layer{i + 1}_{j}')(x, train=train)

    x = x.astype(jnp.float32)
    if not spatial_logits:
      x = jnp.mean(x, axis=(1, 2))
    fan_in = x.shape[-1]
    bound = 1.0 / math.sqrt(fan_in)
    head = nn.Dense(
      self.num_classes,
      dtype=jnp.float32,
      param_dtype=jnp.float32,
      kernel_init=dense_kernel_init,
      bias_init=lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound),
      name='fc',
    )
    return head(x)


_IMAGENET_DEPTHS = {
  18: (BasicBlock, (2, 2, 2, 2)),
  34: (BasicBlock, (3, 4, 6, 3)),
  50: (Bottleneck, (3, 4, 6, 3)),
  101: (Bottleneck, (3, 4, 23, 3)),
  152: (Bottleneck, (3, 8, 36, 3)),
}
PAPER_CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)
_NAME_PATTERN = re.compile(r'^(resnet|plain|cifar_resnet|cifar_plain)(\d+)$')
VALID_NAMES = (
  'resnet{18,34,50,101,152}, plain{18,34,50,101,152}, '
  'cifar_resnet{6n+2: 20,32,44,56,110,1202,...}, cifar_plain{6n+2}'
)


def model_config(name: str) -> dict[str, Any]:
  """The constructor arguments that ``name`` stands for (before user overrides).

  Raises:
    ValueError: for an unknown name or an impossible depth, naming the valid choices.
  """
  match = _NAME_PATTERN.match(name)
  if not match:
    raise ValueError(f'Unknown model {name!r}. Valid names: {VALID_NAMES}.')
  family, depth = match.group(1), int(match.group(2))
  residual = 'resnet' in family
  if family.startswith('cifar'):
    if depth < 8 or (depth - 2) % 6:
      raise ValueError(
        f'Impossible CIFAR depth {depth} in {name!r}: depth must be 6n+2 with n >= 1 '
        f'(the paper uses {", ".join(map(str, PAPER_CIFAR_DEPTHS))}).'
      )
    n = (depth - 2) // 6
    return dict(
      stage_sizes=(n, n, n),
      block_cls=BasicBlock,
      widths=(16, 32, 64),
      stem='cifar',
      shortcut='A',
      residual=residual,
    )
  if depth not in _IMAGENET_DEPTHS:
    raise ValueError(
      f'Impossible ImageNet depth {depth} in {name!r}: choose one of '
      f'{sorted(_IMAGENET_DEPTHS)}. Valid names: {VALID_NAMES}.'
    )
  block_cls, stage_sizes = _IMAGENET_DEPTHS[depth]
  return dict(stage_sizes=stage_sizes, block_cls=block_cls, residual=residual)


def get_model(name: str, *, num_classes: int, dtype: Dtype = jnp.float32, **overrides) -> ResNet:
  """Builds a network by name.

  Args:
    name: ``resnet18|34|50|101|152``, ``plain18..152``, ``cifar_resnet<6n+2>``,
      ``cifar_plain<6n+2>``.
    num_classes: classifier width.
    dtype: compute dtype (``jnp.bfloat16`` / ``jnp.float16`` for mixed precision).
    **overrides: any ResNet attribute, e.g. ``shortcut='C'``, ``zero_init_residual=True``,
      ``stride_in_1x1=True``, ``bn_axis_name='data'``.

  Returns:
    The flax module.
  """
  kwargs = model_config(name)
  valid = set(ResNet.__dataclass_fields__) - {'parent', 'name', 'num_classes', 'dtype'}
  unknown = set(overrides) - valid
  if unknown:
    raise ValueError(f'Unknown model option(s) {sorted(unknown)}; valid: {sorted(valid)}.')
  kwargs.update(overrides)
  if kwargs.get('shortcut', 'B') not in ('A', 'B', 'C'):
    raise ValueError(f"shortcut must be 'A', 'B' or 'C', got {kwargs['shortcut']!r}.")
  return ResNet(num_classes=num_classes, dtype=dtype, **kwargs)
