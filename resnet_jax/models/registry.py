"""Network names -> the ResNet that each stands for, with the rules on what may change it.

Names: torchvision's (``resnet18..152``, ``resnext*``, ``wide_resnet*``), Bag of Tricks' ResNet-C
and -D as timm names them (``resnet50c``, ``resnet50d``), pre-activation nets (``preact_resnet*``,
``cifar_preact_resnet*``), the paper's CIFAR nets and every net's plain counterpart; and the
paper's comparison nets, torchvision's ``vgg11..19``, ``vgg11_bn..vgg19_bn`` and ``alexnet``
(``baselines.ClassicNet``) and ``googlenet`` (``googlenet.GoogLeNet``).

Example:
  model = get_model('resnet50', num_classes=1000)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False)
  logits = model.apply(variables, images, train=False)
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

import jax.numpy as jnp

from resnet_jax.models import baselines, googlenet, norms
from resnet_jax.models.resnet import BasicBlock, Bottleneck, ResNet

Dtype = Any

IMAGENET_DEPTHS = {
  18: (BasicBlock, (2, 2, 2, 2)),
  34: (BasicBlock, (3, 4, 6, 3)),
  50: (Bottleneck, (3, 4, 6, 3)),
  101: (Bottleneck, (3, 4, 23, 3)),
  152: (Bottleneck, (3, 8, 36, 3)),
  200: (Bottleneck, (3, 24, 36, 3)),  # the pre-activation paper's (and timm's resnet200)
}
# torchvision's named variants of its ResNet class: (depth, groups, width_per_group).
_VARIANTS = {
  'resnext50_32x4d': (50, 32, 4),
  'resnext101_32x8d': (101, 32, 8),
  'resnext101_64x4d': (101, 64, 4),
  'wide_resnet50_2': (50, 1, 128),
  'wide_resnet101_2': (101, 1, 128),
}
# Bag of Tricks (He et al. 2019) as timm builds it: ResNet-C is the deep stem, ResNet-D adds the
# average-pool shortcut. (ResNet-B, the stride on the 3x3, is every resnet's default.)
_TWEAKS = {'c': dict(stem='deep'), 'd': dict(stem='deep', avg_down=True)}
PAPER_CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)
# Pre-activation CIFAR nets of depth 9n+2 from here up are bottleneck nets, as the paper's 164 and
# 1001 (its 110 and shallower use the basic block).
PREACT_CIFAR_BOTTLENECK_FROM = 164
_NAME_PATTERN = re.compile(
  r'^(resnet|plain|preact_resnet|cifar_resnet|cifar_plain|cifar_preact_resnet)(\d+)([cd]?)$'
)
VALID_NAMES = (
  'resnet{18,34,50,101,152,200}, plain{...}, preact_resnet{...}, '
  'resnet{...}c and resnet{...}d (ResNet-C/-D), '
  f'{", ".join(_VARIANTS)}, '
  'cifar_resnet{6n+2: 20,32,44,56,110,1202,...}, cifar_plain{6n+2}, '
  'cifar_preact_resnet{6n+2; 9n+2 from 164: 164, 1001 (bottleneck)}, '
  'vgg{11,13,16,19}, vgg{...}_bn, alexnet, googlenet'
)
_BASELINE_PATTERN = re.compile(r'^(?:vgg(11|13|16|19)(_bn)?|alexnet|googlenet)$')
# What ClassicNet takes as options: its fields less those its name and the caller set.
_BASELINE_OPTIONS = tuple(
  field
  for field in baselines.ClassicNet.__dataclass_fields__
  if field not in ('family', 'depth', 'batch_norm', 'num_classes', 'dtype', 'parent', 'name')
)
_GOOGLENET_OPTIONS = tuple(
  field
  for field in googlenet.GoogLeNet.__dataclass_fields__
  if field not in ('num_classes', 'dtype', 'parent', 'name')
)


def list_models(pattern: str = '*') -> list[str]:
  """The nets by name (timm's ``list_models``), matching the shell-style ``pattern``: every
  ImageNet depth of each ResNet kind and tweak, the ResNeXt and wide variants, the paper's CIFAR
  depths (other 6n+2 depths build too) and the comparison nets."""
  kinds = [('resnet', ''), ('resnet', 'c'), ('resnet', 'd'), ('plain', ''), ('preact_resnet', '')]
  resnets = [f'{kind}{depth}{tweak}' for depth in IMAGENET_DEPTHS for kind, tweak in kinds]
  cifar = [f'{kind}{d}' for d in PAPER_CIFAR_DEPTHS for kind in ('cifar_resnet', 'cifar_plain')]
  cifar += [f'cifar_preact_resnet{d}' for d in (*PAPER_CIFAR_DEPTHS, 164, 1001)]
  classic = [f'vgg{d}{bn}' for d in (11, 13, 16, 19) for bn in ('', '_bn')]
  classic += ['alexnet', 'googlenet']
  names = resnets + list(_VARIANTS) + cifar + classic
  return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def is_baseline(name: str) -> bool:
  """Whether ``name`` is one of the paper's comparison nets (VGG, AlexNet, GoogLeNet), not a
  ResNet."""
  return bool(_BASELINE_PATTERN.match(name))


def head_name(name: str) -> str:
  """The classifier's module: torchvision's ``classifier.6`` in VGG and AlexNet, else ``fc``."""
  return 'classifier_6' if is_baseline(name) and name != 'googlenet' else 'fc'


def model_config(name: str) -> dict[str, Any]:
  """The constructor arguments that ``name`` stands for (before user overrides).

  Raises:
    ValueError: for an unknown name or an impossible depth, naming the valid choices.
  """
  baseline = _BASELINE_PATTERN.match(name)
  if baseline:
    depth, batch_norm = baseline.groups()
    if name in ('alexnet', 'googlenet'):
      return dict(family=name)
    return dict(family='vgg', depth=int(depth), batch_norm=bool(batch_norm))
  if name in _VARIANTS:
    depth, groups, width_per_group = _VARIANTS[name]
    return dict(model_config(f'resnet{depth}'), groups=groups, width_per_group=width_per_group)
  match = _NAME_PATTERN.match(name)
  if not match:
    raise ValueError(f'Unknown model {name!r}. Valid names: {VALID_NAMES}.')
  family, depth, tweak = match.group(1), int(match.group(2)), match.group(3)
  if tweak and family != 'resnet':
    raise ValueError(f'Unknown model {name!r}: the -C/-D tweaks name resnets only ({VALID_NAMES}).')
  residual, preact = 'resnet' in family, 'preact' in family
  if family.startswith('cifar'):
    return _cifar_config(name, depth, residual, preact)
  if depth not in IMAGENET_DEPTHS:
    raise ValueError(
      f'Impossible ImageNet depth {depth} in {name!r}: choose one of '
      f'{sorted(IMAGENET_DEPTHS)}. Valid names: {VALID_NAMES}.'
    )
  block_cls, stage_sizes = IMAGENET_DEPTHS[depth]
  config = dict(stage_sizes=stage_sizes, block_cls=block_cls, residual=residual)
  return dict(config, **_TWEAKS.get(tweak, {}), **({'preact': True} if preact else {}))


def _cifar_config(name, depth, residual, preact):
  cifar = dict(widths=(16, 32, 64), stem='cifar', preact=preact)
  if preact and depth >= PREACT_CIFAR_BOTTLENECK_FROM and (depth - 2) % 9 == 0:
    # The paper's ResNet-164 and -1001 (its resnet-1k-layers code): 16 -> 64/128/256 channels,
    # the stride on the first 1x1, projections where the shape changes.
    n = (depth - 2) // 9
    return dict(cifar, stage_sizes=(n,) * 3, block_cls=Bottleneck, shortcut='B', stride_in_1x1=True)
  if depth < 8 or (depth - 2) % 6:
    bottleneck = ', or 9n+2 from 164 for the bottleneck' if preact else ''
    raise ValueError(
      f'Impossible CIFAR depth {depth} in {name!r}: depth must be 6n+2 with n >= 1{bottleneck} '
      f'(the paper uses {", ".join(map(str, PAPER_CIFAR_DEPTHS))}).'
    )
  n = (depth - 2) // 6
  return dict(cifar, stage_sizes=(n,) * 3, block_cls=BasicBlock, shortcut='A', residual=residual)


def get_model(
  name: str, /, *, num_classes: int, dtype: Dtype = jnp.float32, **overrides
) -> ResNet | baselines.ClassicNet | googlenet.GoogLeNet:
  """Builds a network by name.

  Args:
    name: one of VALID_NAMES (positional: ``name=`` is the flax module's name, so the net can be
      a named submodule of your own, ``get_model('resnet50', num_classes=0, name='backbone')``).
    num_classes: classifier width.
    dtype: compute dtype (``jnp.bfloat16`` / ``jnp.float16`` for mixed precision).
    **overrides: any ResNet attribute, e.g. ``shortcut='C'``, ``zero_init_residual=True``,
      ``stride_in_1x1=True``, ``groups=32, width_per_group=4``,
      ``replace_stride_with_dilation=(False, True, True)``, ``norm='group'``,
      ``bn_axis_name='data'``; for VGG and AlexNet, ``dropout`` and the BatchNorm and CPU
      options; for GoogLeNet also ``aux_logits``, ``transform_input``, ``dropout_aux`` (ResNet
      options at their defaults are accepted and mean nothing to them).

  Returns:
    The flax module.
  """
  kwargs = model_config(name)
  module_name = overrides.pop('name', None)
  if kwargs.get('family') == 'googlenet':
    return _googlenet(num_classes, dtype, overrides, module_name)
  googlenets = sorted({'aux_logits', 'transform_input'} & set(overrides))
  if googlenets:
    raise ValueError(
      f"{name} has no {' or '.join(googlenets)}: auxiliary classifiers and torchvision's input "
      f"transform are googlenet's."
    )
  if 'family' in kwargs:
    return _baseline(name, kwargs, num_classes, dtype, overrides, module_name)
  if 'dropout' in overrides:
    raise ValueError(
      f'{name} has no dropout (its head is a global average pool and one linear layer); '
      f'dropout is the classifier of vgg*, alexnet and googlenet.'
    )
  valid = set(ResNet.__dataclass_fields__) - {'parent', 'name', 'num_classes', 'dtype'}
  unknown = set(overrides) - valid
  if unknown:
    raise ValueError(f'Unknown model option(s) {sorted(unknown)}; valid: {sorted(valid)}.')
  if overrides.get('stem') == 'deep' and kwargs.get('stem') == 'cifar':
    raise ValueError(
      f'{name} has the CIFAR 3x3 stem; the deep stem (ResNet-C) replaces an ImageNet one.'
    )
  kwargs.update(overrides)
  if 'stem_width' in overrides and kwargs.get('stem') != 'deep':
    raise ValueError(
      f'stem_width sets the deep stem (ResNet-C), which {name} does not have; add it with '
      f'deep_stem, or take resnet50c / resnet50d.'
    )
  if kwargs.get('shortcut', 'B') not in ('A', 'B', 'C'):
    raise ValueError(f"shortcut must be 'A', 'B' or 'C', got {kwargs['shortcut']!r}.")
  _check_block_options(name, kwargs)
  _check_norm(name, kwargs)
  return ResNet(num_classes=num_classes, dtype=dtype, name=module_name, **kwargs)


def _options_of(name: str, overrides: dict, options: tuple[str, ...]) -> dict:
  """The ``overrides`` that a net other than a ResNet takes (``options``); ResNet options at
  their defaults are accepted and dropped, any other is refused; rates must be in [0, 1)."""
  resnet_defaults = {k: f.default for k, f in ResNet.__dataclass_fields__.items()}
  changed = sorted(
    k
    for k, v in overrides.items()
    if k not in options and (k not in resnet_defaults or v != resnet_defaults[k])
  )
  if changed:
    raise ValueError(
      f'{name} is not a ResNet: it has no {", ".join(changed)} (its options: {", ".join(options)}).'
    )
  for rate in ('dropout', 'dropout_aux'):
    if not 0.0 <= overrides.get(rate, 0.0) < 1.0:
      raise ValueError(f'{rate} must be in [0, 1), got {overrides[rate]}.')
  return {k: v for k, v in overrides.items() if k in options}


def _baseline(name, kwargs, num_classes, dtype, overrides, module_name) -> baselines.ClassicNet:
  options = _options_of(name, overrides, _BASELINE_OPTIONS)
  return baselines.ClassicNet(
    num_classes=num_classes, dtype=dtype, name=module_name, **kwargs, **options
  )


def _googlenet(num_classes, dtype, overrides, module_name) -> googlenet.GoogLeNet:
  options = _options_of('googlenet', overrides, _GOOGLENET_OPTIONS)
  return googlenet.GoogLeNet(num_classes=num_classes, dtype=dtype, name=module_name, **options)


def _check_block_options(name: str, kwargs: dict):
  """torchvision's rules: grouped, widened and dilated 3x3s exist in the bottleneck only; and
  what the ResNet-D shortcut and pre-activation blocks have no reference for."""
  groups, width = kwargs.get('groups', 1), kwargs.get('width_per_group', 64)
  dilation = tuple(kwargs.get('replace_stride_with_dilation', (False,) * 3))
  if len(dilation) != 3:
    raise ValueError(f'replace_stride_with_dilation needs 3 values (stages 2-4), got {dilation}.')
  if groups < 1 or width < 1:
    raise ValueError(f'groups and width_per_group must be >= 1, got {groups} and {width}.')
  # issubclass: a block of your own derived from one of these keeps its rules.
  if issubclass(kwargs['block_cls'], BasicBlock) and (groups != 1 or width != 64 or any(dilation)):
    raise ValueError(
      f'{name} is built of basic blocks, which have no groups, width_per_group or dilation '
      f'(torchvision: groups=1, width_per_group=64, no dilation); use a bottleneck net '
      f'(resnet50 and deeper, resnext*, wide_resnet*).'
    )
  if kwargs.get('avg_down') and (any(dilation) or kwargs.get('shortcut', 'B') == 'A'):
    raise ValueError(
      f'{name}: the average-pool shortcut (ResNet-D) is a projection of a strided block; it '
      f'takes neither dilated stages nor option A shortcuts.'
    )
  if kwargs.get('preact') and (kwargs.get('stem') == 'deep' or kwargs.get('avg_down')):
    raise ValueError(
      f"{name}: pre-activation nets keep the 2016 paper's stem and projections (no ResNet-C/-D "
      f'tweaks).'
    )
  rate = kwargs.get('drop_path_rate', 0.0)
  if not 0.0 <= rate < 1.0:
    raise ValueError(f'drop_path_rate must be in [0, 1), got {rate}.')
  if rate and not kwargs.get('residual', True):
    raise ValueError(f'{name} has no shortcuts: stochastic depth would drop the whole path.')
  if kwargs.get('stem') == 'deep' and kwargs.get('stem_width', 32) < 1:
    raise ValueError(f'stem_width must be >= 1, got {kwargs["stem_width"]}.')


def norm_channels(kwargs: dict) -> set[int]:
  """Every channel count a norm layer of the net with these ResNet arguments sees."""
  widths = kwargs.get('widths', (64, 128, 256, 512))
  channels = {widths[0]}
  if kwargs.get('stem') == 'deep':
    channels.add(kwargs.get('stem_width', 32))
  for width in widths:
    if issubclass(kwargs['block_cls'], Bottleneck):
      inner = int(width * kwargs.get('width_per_group', 64) / 64) * kwargs.get('groups', 1)
      channels |= {inner, width * 4}
    else:
      channels.add(width)
  return channels


def _check_norm(name: str, kwargs: dict):
  kind = kwargs.get('norm', 'batch')
  if kind not in norms.NORMS:
    raise ValueError(f'norm must be one of {", ".join(norms.NORMS)}, got {kind!r}.')
  groups = kwargs.get('norm_groups', 32)
  if kind == 'group':
    uneven = sorted(c for c in norm_channels(kwargs) if groups < 1 or c % groups)
    if uneven:
      raise ValueError(
        f'{name} with GroupNorm of {groups} groups: its norms see {uneven} channels, which do '
        f'not split into {groups} groups; choose norm_groups dividing '
        f'{sorted(norm_channels(kwargs))}.'
      )
