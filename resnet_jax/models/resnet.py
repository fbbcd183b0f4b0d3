"""Residual and plain networks of He et al. (2015) and their family, laid out as torchvision builds
them: one ``ResNet`` class whose arguments give ResNeXt, wide, dilated, pre-activation
(He et al. 2016) and Bag of Tricks' ResNet-C/-D nets, with BatchNorm, GroupNorm or frozen
BatchNorm. The names that stand for them are ``registry``'s.

Module and parameter names mirror torchvision's ``resnet.py`` with ``.`` replaced by ``_``
(``layer1_0/conv1/kernel`` is ``layer1.0.conv1.weight``; timm's for the deep stem and the
average-pool shortcut), so converted weights map one to one and logits match torchvision's to
float precision.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from resnet_jax.cpu import native
from resnet_jax.models import attention as attention_layers
from resnet_jax.models import conv as conv_lowering
from resnet_jax.models import example_draws, layers, norms, stem
from resnet_jax.models.block_layout import SCAN_SUFFIX

Dtype = Any


def shortcut_path(x, *, features, strides, option, conv, norm, avg_down, train):
  """The identity path of a block, per the paper's Table 3 options.

  Called inside a block's compact ``__call__``, so a projection gets torchvision's names
  (``downsample_0`` conv, ``downsample_1`` norm) directly under the block; with ``avg_down``,
  timm's (``downsample_0`` the pool, ``downsample_1`` conv, ``downsample_2`` norm).

  Args:
    x: block input.
    features: block output channels.
    strides: spatial stride of the block.
    option: 'A' (zero-padded identity), 'B' (projection where the shape changes), 'C' (always).
    conv, norm: the block's conv and norm constructors; ``norm`` None for a bare convolution
      (pre-activation blocks).
    avg_down: ResNet-D (He et al. 2019): a projection averages 2x2 windows for the stride, then
      convolves at stride 1, where ResNet-B's strided 1x1 skips three pixels of four.
    train: norm mode.
  """
  in_features = x.shape[-1]
  reshaped = strides != 1 or in_features != features
  if option == 'C' or (option == 'B' and reshaped):
    names = ('downsample_0', 'downsample_1')
    if avg_down:
      names = ('downsample_1', 'downsample_2')
      x, strides = (layers.average_pool_2x2(x) if strides > 1 else x), 1
    x = conv(features, (1, 1), (strides, strides), name=names[0])(x)
    return x if norm is None else norm(name=names[1])(x, train=train)
  if strides != 1:
    x = x[:, ::strides, ::strides, :]
  if in_features < features:
    # Option A: the extra channels are zeros, appended after the identity channels.
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, features - in_features)))
  return x


# A block's pre-activation (He et al. 2016, "Identity Mappings in Deep Residual Networks"; their
# fb.resnet.torch code's three block types): '' none, the 2015 post-activation block (conv, norm,
# ReLU; ReLU after the addition); 'branch': norm-ReLU opens the residual branch, the shortcut
# takes the block's input as it is; 'shared': norm-ReLU of the input feeds both paths (a stage's
# first block, whose shortcut reshapes); 'given': the input is already activated (the first
# block after the ImageNet stem's norm-ReLU).
PREACT_MODES = ('', 'branch', 'shared', 'given')


class _Block(nn.Module):
  """Fields and the residual join shared by both block types.

  Attributes:
    features: base filters of the block (the output has ``features * expansion``).
    strides: spatial stride of the block (on its first 3x3, or first 1x1 with stride_in_1x1).
    shortcut: 'A', 'B' or 'C'.
    residual: False drops the shortcut (plain nets).
    conv, norm: conv and norm constructors configured by the network.
    zero_init_residual: start the block as the identity: its last norm's scale at zero (the
      last conv's kernel in a pre-activation block, which ends on it).
    stride_in_1x1: bottleneck only; see Bottleneck.
    groups, width_per_group: bottleneck only; see Bottleneck.
    dilation: bottleneck only: the 3x3's dilation (and padding), torchvision's.
    preact: one of PREACT_MODES.
    avg_down: ResNet-D's projection shortcut (see shortcut_path).
    attention: '', 'se' or 'eca': channel attention on the residual branch after its last norm,
      before the addition (``attention``; timm's ``attn_layer``).
    dtype: the compute dtype (of the attention module; the convs and norms come configured).

  What a block declares for the net's checks (a subclass of your own inherits them, or sets its
  own): ``expansion`` (output channels per base filter), ``takes_groups`` (whether it has a 3x3
  that groups, widens and dilates) and ``norm_channels`` (what its norms see).

  A block's ``__call__`` takes ``drop=(keys, block_index, rate)`` in training with stochastic
  depth (``drop_path``), else None.
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
  preact: str = ''
  avg_down: bool = False
  attention: str = ''
  dtype: Any = jnp.float32

  expansion = 1
  takes_groups = False

  @classmethod
  def norm_channels(cls, features, groups=1, width_per_group=64) -> set[int]:
    """The channel counts its norm layers see (GroupNorm's groups must divide each)."""
    return {features * cls.expansion}

  def attend(self, y):
    """The residual branch after its last norm, through the block's channel attention."""
    layer = attention_layers.attention_layer(self.attention, self.dtype)
    return y if layer is None else layer(y)

  def last_norm(self, name):
    init = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
    return self.norm(name=name, scale_init=init)

  def last_conv_init(self):
    return nn.initializers.zeros if self.zero_init_residual else layers.conv_init

  def pre_activate(self, x, train):
    """(the residual branch's input, the shortcut's input) of a pre-activation block."""
    if self.preact == 'given':
      return x, x
    activated = nn.relu(self.norm(name='bn1')(x, train=train))
    return activated, (activated if self.preact == 'shared' else x)

  def join(self, y, x, *, train, drop=None):
    """relu(F(x) + shortcut(x)), or relu(F(x)) for a plain block; no ReLU after a pre-activation
    block's addition. ``drop``: stochastic depth's (keys, block index, rate) for F(x)."""
    if drop is not None:
      y = example_draws.drop_path(y, *drop)
    if self.residual:
      y = y + shortcut_path(
        x,
        features=y.shape[-1],
        strides=self.strides,
        option=self.shortcut,
        conv=self.conv,
        norm=None if self.preact else self.norm,
        avg_down=self.avg_down,
        train=train,
      )
    return y if self.preact else nn.relu(y)


class BasicBlock(_Block):
  """3x3 -> BN -> ReLU -> 3x3 -> BN, (+ shortcut), ReLU. ResNet-18/34 and all CIFAR nets.

  Pre-activation (``preact``): BN -> ReLU -> 3x3 -> BN -> ReLU -> 3x3, + shortcut (its norms
  ``bn1`` before ``conv1``, ``bn2`` before ``conv2``).
  """

  @nn.compact
  def __call__(self, x, *, train: bool, drop=None):
    return self.forward(x, train, drop)

  def forward(self, x, train: bool, drop=None):
    strides = (self.strides, self.strides)
    if self.preact:
      y, x = self.pre_activate(x, train)
      y = self.conv(self.features, (3, 3), strides, name='conv1')(y)
      y = nn.relu(self.norm(name='bn2')(y, train=train))
      y = self.conv(self.features, (3, 3), name='conv2', kernel_init=self.last_conv_init())(y)
      return self.join(y, x, train=train, drop=drop)
    y = self.conv(self.features, (3, 3), strides, name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y, train=train))
    y = self.conv(self.features, (3, 3), name='conv2')(y)
    y = self.attend(self.last_norm('bn2')(y, train=train))
    return self.join(y, x, train=train, drop=drop)


class Bottleneck(_Block):
  """1x1 reduce -> 3x3 -> 1x1 expand (x4), BN after each, (+ shortcut), ReLU. ResNet-50/101/152.

  ``stride_in_1x1=False`` is torchvision's "v1.5" (stride on the 3x3); True is the paper's original.
  The inner width is torchvision's ``int(features * width_per_group / 64) * groups``, the 3x3 in
  ``groups`` channel groups: ResNeXt (Xie et al. 2017; 32x4d is groups 32, width_per_group 4) and
  Wide ResNets (Zagoruyko & Komodakis 2016; width_per_group 128) are this block.
  Pre-activation (``preact``): BN-ReLU before each conv (``bn1``, ``bn2``, ``bn3`` before
  ``conv1``, ``conv2``, ``conv3``), + shortcut.
  """

  expansion = 4
  takes_groups = True

  @classmethod
  def norm_channels(cls, features, groups=1, width_per_group=64) -> set[int]:
    return {cls.inner_width(features, groups, width_per_group), features * cls.expansion}

  @staticmethod
  def inner_width(features, groups, width_per_group) -> int:
    """torchvision's width of the 1x1 reduction and the 3x3."""
    return int(features * (width_per_group / 64.0)) * groups

  @nn.compact
  def __call__(self, x, *, train: bool, drop=None):
    return self.forward(x, train, drop)

  def forward(self, x, train: bool, drop=None):
    s1, s3 = (self.strides, 1) if self.stride_in_1x1 else (1, self.strides)
    width = self.inner_width(self.features, self.groups, self.width_per_group)
    out = self.features * self.expansion
    conv2 = functools.partial(
      self.conv, width, (3, 3), (s3, s3), groups=self.groups, dilation=self.dilation, name='conv2'
    )
    if self.preact:
      y, x = self.pre_activate(x, train)
      y = self.conv(width, (1, 1), (s1, s1), name='conv1')(y)
      y = conv2()(nn.relu(self.norm(name='bn2')(y, train=train)))
      y = nn.relu(self.norm(name='bn3')(y, train=train))
      last = self.conv(out, (1, 1), name='conv3', kernel_init=self.last_conv_init())
      return self.join(last(y), x, train=train, drop=drop)
    y = self.conv(width, (1, 1), (s1, s1), name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y, train=train))
    y = nn.relu(self.norm(name='bn2')(conv2()(y), train=train))
    y = self.conv(out, (1, 1), name='conv3')(y)
    y = self.attend(self.last_norm('bn3')(y, train=train))
    return self.join(y, x, train=train, drop=drop)


@functools.cache
def _scan_body(block_cls):
  """``block_cls`` with the signature ``nn.scan`` wants: (carry, slice) -> (carry, output)."""

  class ScanBody(block_cls):
    train: bool = False
    drop_rates: Any = None  # per scanned block, with stochastic depth

    @nn.compact
    def __call__(self, x, drop_index, keys):
      """``drop_index``: this block's index in the net (and in ``drop_rates``), or None."""
      drop = None
      if drop_index is not None:
        drop = (keys, drop_index, jnp.asarray(self.drop_rates)[drop_index])
      return self.forward(x, self.train, drop), None

  ScanBody.__name__ = ScanBody.__qualname__ = f'{block_cls.__name__}ScanBody'
  return ScanBody


class ResNet(nn.Module):
  """A residual (or plain) network: stem, stages of blocks, global average pool, linear head.

  Attributes:
    stage_sizes: blocks per stage.
    block_cls: BasicBlock, Bottleneck, or a block of your own derived from one (the checks read
      what it declares: ``_Block``).
    num_classes: width of the classifier.
    widths: base filters per stage (64/128/256/512 ImageNet, 16/32/64 CIFAR).
    stem: 'imagenet' (7x7/2 conv + 3x3/2 max pool), 'deep' (ResNet-C of He et al. 2019, timm's
      'deep': three 3x3 convs, the first at stride 2, of stem_width, stem_width and widths[0]
      filters, then the max pool), 'cifar' (3x3 conv, no pool) or 'bit' (BiT's root: the 7x7/2
      conv and the max pool with no norm between; its pre-activation first block normalises).
    stem_width: the deep stem's first two convs' filters (timm's 32).
    shortcut: 'A', 'B' or 'C' (paper Table 3).
    residual: False builds the plain counterpart (same layers, no shortcuts).
    stride_in_1x1: bottleneck stride placement (see Bottleneck).
    zero_init_residual: zero the last BN scale of every block (Goyal et al. 2017).
    groups, width_per_group: the bottleneck's grouped 3x3 and inner width (torchvision's
      arguments; ResNeXt, Wide ResNet). Bottleneck nets only.
    replace_stride_with_dilation: for stages 2, 3, 4: True keeps the stage at its input's
      resolution and dilates its 3x3s instead (torchvision's: output stride 16 or 8, as
      segmentation and detection backbones use). Bottleneck nets only.
    avg_down: ResNet-D's projection shortcuts (average pool, then a stride-1 1x1; shortcut_path).
    attention: '', 'se' (squeeze-and-excitation) or 'eca' (efficient channel attention) in every
      block, as timm's ``attn_layer`` (``attention``): timm's seresnet*, ecaresnet*. Not in
      pre-activation blocks (no reference places it there).
    preact: pre-activation blocks (He et al. 2016: norm-ReLU before each conv, nothing after the
      addition) and a final norm-ReLU (``final_bn``) before the pool; the CIFAR stem is then a
      bare conv. Block types as their fb.resnet.torch code (PREACT_MODES).
    norm: 'batch', 'group' or 'frozen_batch' (``norms``), torchvision's ``norm_layer``.
    weight_standardization: every conv standardises its kernel (``layers.StandardizedConv``):
      BiT's ResNet-v2 (Kolesnikov et al. 2020) with GroupNorm and the 'bit' stem.
    norm_groups: GroupNorm's groups (torch's first argument; Wu & He's 32).
    drop_path_rate: stochastic depth (Huang et al. 2016) as timm's: in training each example
      drops a block's residual branch with the block's rate, linear in depth from 0 to this
      (``drop_path_rates``); needs ``example_keys``. Residual nets only.
    bn_momentum, bn_epsilon: BatchNorm constants (torch's 0.1 momentum is 0.9 here); the epsilon
      is every norm's.
    bn_axis_name, bn_axis_index_groups: share BN statistics across devices (see BatchNorm).
    scan_blocks: run the identical blocks of each stage (all but its first) as one ``nn.scan``
      step, so the compiled program holds one copy of them: compile time independent of depth.
      Their variables are stacked under ``layer{i}_scan`` (``block_layout`` converts); the
      numbers are those of the per-block network with the same weights.
    cpu_convolution: 'auto', 'onednn' or 'xla': who runs the gradients of the float32
      convolutions lowered for the CPU, and the forward pass of grouped ones (``cpu.onednn``).
      The same ungrouped forward values; the rest equal to float32 rounding.
    cpu_kernels: 'auto', 'native' or 'xla': whether float32 training BatchNorm's per-channel
      sums and the stem's max pool, lowered for the CPU, are the project's C++ kernels
      (``native.kernels_enabled``). Pool values equal; statistics and gradients equal to float32
      rounding.
    frozen_norms: module paths of the BatchNorms a fine-tune freezes (``param_groups``): they
      normalise by their running statistics in training too, and keep them.
    dtype: compute dtype; parameters, BN statistics and logits stay float32.
  """

  stage_sizes: Sequence[int]
  block_cls: Any
  num_classes: int
  widths: Sequence[int] = (64, 128, 256, 512)
  stem: str = 'imagenet'
  stem_width: int = 32
  shortcut: str = 'B'
  residual: bool = True
  stride_in_1x1: bool = False
  zero_init_residual: bool = False
  groups: int = 1
  width_per_group: int = 64
  replace_stride_with_dilation: Sequence[bool] = (False, False, False)
  avg_down: bool = False
  attention: str = ''
  preact: bool = False
  norm: str = 'batch'
  weight_standardization: bool = False
  norm_groups: int = 32
  drop_path_rate: float = 0.0
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_axis_name: str | None = None
  bn_axis_index_groups: Any = None
  scan_blocks: bool = False
  cpu_convolution: str = 'auto'
  cpu_kernels: str = 'auto'
  frozen_norms: tuple[str, ...] = ()
  dtype: Dtype = jnp.float32

  @property
  def random_in_training(self) -> bool:
    """Whether training draws (stochastic depth), and so takes ``example_keys``."""
    return self.drop_path_rate > 0

  @nn.compact
  def __call__(
    self,
    x,
    *,
    train: bool,
    spatial_logits: bool = False,
    features: Sequence[str] = (),
    example_keys=None,
  ):
    """Applies the network.

    Args:
      x: images, NHWC.
      train: batch statistics (and their running averages updated) if True, else running averages.
      spatial_logits: the paper's fully-convolutional test form: the head is applied at every
        position of the last feature map, giving [N, h, w, num_classes] instead of [N, num_classes].
      features: instead of logits, the outputs of these stages by name, for a detection or
        segmentation head (a backbone's C2..C5): 'stem' (after the ImageNet stem's max pool),
        'layer1', 'layer2', ... (torchvision's names), and 'pre_logits' (the pooled float32
        features the classifier takes). The net runs only as deep as the deepest one asked for;
        initialise the variables without ``features``.
      example_keys: with ``drop_path_rate`` in training, one PRNG key per example: its
        stochastic depth draws are functions of its key alone (the train step keys them on the
        run seed, the step and the example's row in the global batch).

    Returns:
      float32 logits, or ``{name: stage output}`` (compute dtype) in the order of ``features``.
    """
    stages = [f'layer{i + 1}' for i in range(len(self.stage_sizes))]
    unknown = sorted(set(features) - {'stem', *stages, 'pre_logits'})
    if unknown:
      raise ValueError(
        f'Unknown features {unknown}; this net has stem, {", ".join(stages)}, pre_logits.'
      )
    conv = functools.partial(
      layers.conv,
      dtype=self.dtype,
      cpu_convolution=self.cpu_convolution,
      standardize=self.weight_standardization,
    )
    norm = norms.norm_layer(
      self.norm,
      momentum=self.bn_momentum,
      epsilon=self.bn_epsilon,
      groups=self.norm_groups,
      axis_name=self.bn_axis_name,
      axis_index_groups=self.bn_axis_index_groups,
      dtype=self.dtype,
      cpu_kernels=self.cpu_kernels,
      frozen=self.frozen_norms,
    )
    outputs = {'stem': self._stem(x.astype(self.dtype), conv, norm, train)}
    dilation = 1
    dilate = (False, *self.replace_stride_with_dilation)
    drop = None
    if train and self.drop_path_rate > 0:
      if example_keys is None:
        raise ValueError('drop_path_rate > 0 trains with example_keys (one key per example).')
      drop = (example_keys, example_draws.drop_path_rates(self.stage_sizes, self.drop_path_rate))
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
        outputs[stages[i - 1] if i else 'stem'], i, strides, dilations, conv, norm, train, drop
      )
    if features and set(features) <= set(outputs):
      return {name: outputs[name] for name in features}
    x = outputs[stages[-1]]
    if self.preact:
      x = nn.relu(norm(name='final_bn')(x, train=train))
    if features:  # 'pre_logits': what the classifier sees (the few-shot probe's features)
      outputs['pre_logits'] = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
      return {name: outputs[name] for name in features}
    return self._head(x.astype(jnp.float32), spatial_logits)

  def _stem(self, x, conv, norm, train):
    if self.stem == 'cifar':
      x = conv(self.widths[0], (3, 3), name='conv1')(x)
      return x if self.preact else nn.relu(norm(name='bn1')(x, train=train))
    if self.stem in ('imagenet', 'bit'):
      x = conv(self.widths[0], (7, 7), (2, 2), name='conv1', lowering=stem.stem_conv)(x)
      if self.stem == 'bit':
        return stem.max_pool_3x3(x, native.kernels_for(x, self.cpu_kernels))
    elif self.stem == 'deep':  # timm's names: conv1 is a Sequential of conv, norm, ReLU, ...
      x = conv(self.stem_width, (3, 3), (2, 2), name='conv1_0')(x)
      x = nn.relu(norm(name='conv1_1')(x, train=train))
      x = conv(self.stem_width, (3, 3), name='conv1_3')(x)
      x = nn.relu(norm(name='conv1_4')(x, train=train))
      x = conv(self.widths[0], (3, 3), name='conv1_6')(x)
    else:
      raise ValueError(f"stem must be 'imagenet', 'deep', 'cifar' or 'bit', got {self.stem!r}")
    x = nn.relu(norm(name='bn1')(x, train=train))
    return stem.max_pool_3x3(x, native.kernels_for(x, self.cpu_kernels))

  def _preact_modes(self, i):
    """(stage i's first block's, its other blocks') PREACT_MODES, as fb.resnet.torch's."""
    if not self.preact:
      return '', ''
    # After a stem that ends on norm-ReLU, the first block's input is activated already.
    return ('given' if i == 0 and self.stem in ('imagenet', 'deep') else 'shared'), 'branch'

  def _stage(self, x, i, strides, dilations, conv, norm, train, drop):
    """Stage ``i``: its first block (``strides``, ``dilations[0]``), then the identical others
    (``dilations[1]``), per block or as one scanned step. ``drop``: (keys, every block's rate)
    with stochastic depth, else None."""
    first_index = sum(self.stage_sizes[:i])  # of the stage's first block in the whole net

    def block_drop(index):
      return None if drop is None else (drop[0], index, drop[1][index])

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
      avg_down=self.avg_down,
      attention=self.attention,
      dtype=self.dtype,
    )
    first, others = self._preact_modes(i)
    first_block = functools.partial(block, strides=strides, dilation=dilations[0], preact=first)
    x = first_block(name=f'layer{i + 1}_0')(x, train=train, drop=block_drop(first_index))
    block = functools.partial(block, strides=1, dilation=dilations[1], preact=others)
    num_blocks = self.stage_sizes[i]
    if self.scan_blocks and num_blocks > 1:
      blocks = nn.scan(
        _scan_body(self.block_cls),
        variable_axes={'params': 0, 'batch_stats': 0},
        split_rngs={'params': True},
        in_axes=(0, nn.broadcast),
        length=num_blocks - 1,
      )
      scanned_conv = functools.partial(conv, lowering=conv_lowering.conv_general_dilated)
      keywords = {**block.keywords, 'conv': scanned_conv}
      indices, keys, rates = None, None, None
      if drop is not None:
        indices = jnp.arange(first_index + 1, first_index + num_blocks)
        keys, rates = drop[0], tuple(drop[1])
      scanned = blocks(**keywords, train=train, drop_rates=rates, name=f'layer{i + 1}{SCAN_SUFFIX}')
      return scanned(x, indices, keys)[0]
    for j in range(1, num_blocks):
      x = block(name=f'layer{i + 1}_{j}')(x, train=train, drop=block_drop(first_index + j))
    return x

  def _head(self, x, spatial_logits):
    if not spatial_logits:
      x = jnp.mean(x, axis=(1, 2))
    head = nn.Dense(
      self.num_classes,
      dtype=jnp.float32,
      param_dtype=jnp.float32,
      kernel_init=layers.dense_kernel_init,
      bias_init=layers.torch_default_bias(x.shape[-1]),
      name='fc',
    )
    return head(x)
