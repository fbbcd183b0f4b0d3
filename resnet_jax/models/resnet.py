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
  groups=1,
  dilation=1,
  name=None,
  lowering=conv_lowering.conv_general_dilated_stored_input,
  cpu_convolution='auto',
):
  """A bias-free conv with torch's symmetric padding of dilation * (k // 2) (never XLA's
  asymmetric SAME), ``groups`` channel groups and a ``dilation``-spaced kernel (torch's).

  ``lowering`` runs it (``lax.conv_general_dilated``'s signature), except the gradients of the
  float32 convolutions lowered for the CPU that oneDNN takes under ``cpu_convolution``
  (``conv.cpu_convolution``; ungrouped, undilated ones only).
  """
  pad = dilation * (kernel[0] // 2)
  return nn.Conv(
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
    groups, width_per_group: bottleneck only; see Bottleneck.
    dilation: bottleneck only: the 3x3's dilation (and padding), torchvision's.
  """

  features: int
  strides: int
  shortcut: str
  residual: bool
  conv: Any
  norm: Any
  zero_init_residual: bool
  stride_in_1x1: bool = False
  groups: int = 1
  width_per_group: int = 64
  dilation: int = 1

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
  The inner width is torchvision's ``int(features * width_per_group / 64) * groups``, the 3x3 in
  ``groups`` channel groups: ResNeXt (Xie et al. 2017; 32x4d is groups 32, width_per_group 4) and
  Wide ResNets (Zagoruyko & Komodakis 2016; width_per_group 128) are this block.
  """

  @nn.compact
  def __call__(self, x, *, train: bool):
    return self.forward(x, train)

  def forward(self, x, train: bool):
    s1, s3 = (self.strides, 1) if self.stride_in_1x1 else (1, self.strides)
    width = int(self.features * (self.width_per_group / 64.0)) * self.groups
    y = self.conv(width, (1, 1), (s1, s1), name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y, train=train))
    y = self.conv(
      width, (3, 3), (s3, s3), groups=self.groups, dilation=self.dilation, name='conv2'
    )(y)
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
    groups, width_per_group: the bottleneck's grouped 3x3 and inner width (torchvision's
      arguments; ResNeXt, Wide ResNet). Bottleneck nets only.
    replace_stride_with_dilation: for stages 2, 3, 4: True keeps the stage at its input's
      resolution and dilates its 3x3s instead (torchvision's: output stride 16 or 8, as
      segmentation and detection backbones use). Bottleneck nets only.
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
  groups: int = 1
  width_per_group: int = 64
  replace_stride_with_dilation: Sequence[bool] = (False, False, False)
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_axis_name: str | None = None
  bn_axis_index_groups: Any = None
  scan_blocks: bool = False
  cpu_convolution: str = 'auto'
  cpu_kernels: str = 'auto'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool, spatial_logits: bool = False, features: Sequence[str] = ()):
    """Applies the network.

    Args:
      x: images, NHWC.
      train: batch statistics (and their running averages updated) if True, else running averages.
      spatial_logits: the paper's fully-convolutional test form: the head is applied at every
        position of the last feature map, giving [N, h, w, num_classes] instead of [N, num_classes].
      features: instead of logits, the outputs of these stages by name, for a detection or
        segmentation head (a backbone's C2..C5): 'stem' (after the ImageNet stem's max pool),
        'layer1', 'layer2', ... (torchvision's names). The net runs only as deep as the deepest
        one asked for; initialise the variables without ``features``.

    Returns:
      float32 logits, or ``{name: stage output}`` (compute dtype) in the order of ``features``.
    """
    stages = [f'layer{i + 1}' for i in range(len(self.stage_sizes))]
    unknown = sorted(set(features) - {'stem', *stages})
    if unknown:
      raise ValueError(f'Unknown features {unknown}; this net has stem, {", ".join(stages)}.')
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
    outputs = {'stem': self._stem(x.astype(self.dtype), conv, norm, train)}
    dilation = 1
    dilate = (False, *self.replace_stride_with_dilation)
    for i, name in enumerate(stages):
      if features and set(features) <= set(outputs):
        break
      # torchvision's _make_layer: a dilated stage keeps stride 1; its first block keeps the
      # previous stage's dilation, the others take the doubled one.
      strides, first_dilation = (2 if i > 0 else 1), dilation
      if dilate[i]:
        strides, dilation = 1, dilation * 2
      dilations = (first_dilation, dilation)
      outputs[name] = self._stage(
        outputs[stages[i - 1] if i else 'stem'], i, strides, dilations, conv, norm, train
      )
    if features:
      return {name: outputs[name] for name in features}
    return self._head(outputs[stages[-1]].astype(jnp.float32), spatial_logits)

  def _stem(self, x, conv, norm, train):
    if self.stem == 'imagenet':
      x = conv(self.widths[0], (7, 7), (2, 2), name='conv1', lowering=stem.stem_conv)(x)
      x = nn.relu(norm(name='bn1')(x, train=train))
      return stem.max_pool_3x3(x, native.kernels_for(x, self.cpu_kernels))
    if self.stem == 'cifar':
      x = conv(self.widths[0], (3, 3), name='conv1')(x)
      return nn.relu(norm(name='bn1')(x, train=train))
    raise ValueError(f"stem must be 'imagenet' or 'cifar', got {self.stem!r}")

  def _stage(self, x, i, strides, dilations, conv, norm, train):
    """Stage ``i``: its first block (``strides``, ``dilations[0]``), then the identical others
    (``dilations[1]``), per block or as one scanned step."""
    block = functools.partial(
      self.block_cls,
      features=self.widths[i],
      shortcut=self.shortcut,
      residual=self.residual,
      conv=conv,
      norm=norm,
      zero_init_residual=self.zero_init_residual,
      stride_in_1x1=self.stride_in_1x1,
      groups=self.groups,
      width_per_group=self.width_per_group,
    )
    x = block(strides=strides, dilation=dilations[0], name=f'layer{i + 1}_0')(x, train=train)
    block = functools.partial(block, strides=1, dilation=dilations[1])
    num_blocks = self.stage_sizes[i]
    if self.scan_blocks and num_blocks > 1:
      blocks = nn.scan(
        _scan_body(self.block_cls),
        variable_axes={'params': 0, 'batch_stats': 0},
        split_rngs={'params': True},
        length=num_blocks - 1,
      )
      scanned_conv = functools.partial(conv, lowering=conv_lowering.conv_general_dilated)
      keywords = {**block.keywords, 'conv': scanned_conv}
      x, _ = blocks(**keywords, train=train, name=f'layer{i + 1}{SCAN_SUFFIX}')(x, None)
      return x
    for j in range(1, num_blocks):
      x = block(name=f'layer{i + 1}_{j}')(x, train=train)
    return x

  def _head(self, x, spatial_logits):
    if not spatial_logits:
      x = jnp.mean(x, axis=(1, 2))
    bound = 1.0 / math.sqrt(x.shape[-1])
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
# torchvision's named variants of its ResNet class: (depth, groups, width_per_group).
_VARIANTS = {
  'resnext50_32x4d': (50, 32, 4),
  'resnext101_32x8d': (101, 32, 8),
  'resnext101_64x4d': (101, 64, 4),
  'wide_resnet50_2': (50, 1, 128),
  'wide_resnet101_2': (101, 1, 128),
}
PAPER_CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)
_NAME_PATTERN = re.compile(r'^(resnet|plain|cifar_resnet|cifar_plain)(\d+)$')
VALID_NAMES = (
  'resnet{18,34,50,101,152}, plain{18,34,50,101,152}, '
  f'{", ".join(_VARIANTS)}, '
  'cifar_resnet{6n+2: 20,32,44,56,110,1202,...}, cifar_plain{6n+2}'
)


def model_config(name: str) -> dict[str, Any]:
  """The constructor arguments that ``name`` stands for (before user overrides).

  Raises:
    ValueError: for an unknown name or an impossible depth, naming the valid choices.
  """
  if name in _VARIANTS:
    depth, groups, width_per_group = _VARIANTS[name]
    return dict(model_config(f'resnet{depth}'), groups=groups, width_per_group=width_per_group)
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
    name: ``resnet18|34|50|101|152``, ``plain18..152``, ``resnext50_32x4d``,
      ``resnext101_32x8d``, ``resnext101_64x4d``, ``wide_resnet50_2``, ``wide_resnet101_2``,
      ``cifar_resnet<6n+2>``, ``cifar_plain<6n+2>``.
    num_classes: classifier width.
    dtype: compute dtype (``jnp.bfloat16`` / ``jnp.float16`` for mixed precision).
    **overrides: any ResNet attribute, e.g. ``shortcut='C'``, ``zero_init_residual=True``,
      ``stride_in_1x1=True``, ``groups=32, width_per_group=4``,
      ``replace_stride_with_dilation=(False, True, True)``, ``bn_axis_name='data'``.

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
  _check_block_options(name, kwargs)
  return ResNet(num_classes=num_classes, dtype=dtype, **kwargs)


def _check_block_options(name: str, kwargs: dict):
  """torchvision's rules: grouped, widened and dilated 3x3s exist in the bottleneck only."""
  groups, width = kwargs.get('groups', 1), kwargs.get('width_per_group', 64)
  dilation = tuple(kwargs.get('replace_stride_with_dilation', (False,) * 3))
  if len(dilation) != 3:
    raise ValueError(f'replace_stride_with_dilation needs 3 values (stages 2-4), got {dilation}.')
  if groups < 1 or width < 1:
    raise ValueError(f'groups and width_per_group must be >= 1, got {groups} and {width}.')
  if kwargs['block_cls'] is BasicBlock and (groups != 1 or width != 64 or any(dilation)):
    raise ValueError(
      f'{name} is built of basic blocks, which have no groups, width_per_group or dilation '
      f'(torchvision: groups=1, width_per_group=64, no dilation); use a bottleneck net '
      f'(resnet50 and deeper, resnext*, wide_resnet*).'
    )
