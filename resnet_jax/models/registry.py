"""Network names -> the ResNet that each stands for, with the rules on what may change it.

Names: torchvision's (``resnet18..152``, ``resnext*``, ``wide_resnet*``), Bag of Tricks' ResNet-C
and -D as timm names them (``resnet50c``, ``resnet50d``), pre-activation nets (``preact_resnet*``,
``cifar_preact_resnet*``), the paper's CIFAR nets and every net's plain counterpart; and the
paper's comparison nets, torchvision's ``vgg11..19``, ``vgg11_bn..vgg19_bn`` and ``alexnet``
(``baselines.ClassicNet``) and ``googlenet`` (``googlenet.GoogLeNet``); timm's attention nets
(``seresnet*``, ``ecaresnet*d``) and BiT's ResNet-v2 (``bit_r50x1`` ... ``bit_r152x4``), entries of
the table that ``register_model`` fills.

Your own nets, without editing the library: a function that returns a net's constructor
arguments (ResNet's ``stage_sizes`` and ``block_cls``, a block of your own derived from
``BasicBlock`` or ``Bottleneck`` included, and any ResNet option; or ``module=`` a flax module
class of your own and its arguments; or such a class itself, which takes ``num_classes`` and
``dtype``) is a net by its import path, ``my_pkg.nets:se_resnet_tiny``,
in every command (``--config.model=my_pkg.nets:se_resnet_tiny``), the module imported from
``PYTHONPATH`` or the working directory. ``register_model`` names such a function in this process
(the Python API). A module of your own is called as ours are, ``(images, train=...)`` -> logits;
it may declare ``head_name`` (its classifier's module, else ``fc``, for a fresh head and
``export``) and ``random_in_training`` (then it is called with ``example_keys``, one PRNG key per
example, in training).

Example:
  model = get_model('resnet50', num_classes=1000)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False)
  logits = model.apply(variables, images, train=False)
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
import re
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from resnet_jax.models import attention as attention_layers
from resnet_jax.models import baselines, googlenet, norms
from resnet_jax.models.resnet import BasicBlock, Bottleneck, ResNet, _Block

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
# Named nets by function (timm's ``register_model``): each returns its net's constructor
# arguments. The regex families above (every depth) are the fallback.
_ENTRY_POINTS: dict[str, Callable[[], dict[str, Any]]] = {}
# A net of your own by import path: 'package.module:function'.
_IMPORT_PATH = re.compile(r'^([A-Za-z_][\w.]*):([A-Za-z_]\w*)$')


def register_model(fn: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
  """Decorator: ``fn`` (no arguments; returns the net's constructor arguments, as a net named by
  import path does) becomes the net named ``fn.__name__``, for ``get_model`` and the Python
  API."""
  name = fn.__name__
  if _BASELINE_PATTERN.match(name) or _NAME_PATTERN.match(name) or name in _BUILT_IN:
    raise ValueError(f'{name!r} is a built-in net; give yours another name.')
  _ENTRY_POINTS[fn.__name__] = fn
  return fn


def _with_attention(base: str, attention: str) -> dict[str, Any]:
  return dict(model_config(base), attention=attention)


# timm's squeeze-and-excitation and ECA nets: its resnet* and resnet*d with attn_layer.
for _depth in (18, 34, 50, 101, 152):
  _ENTRY_POINTS[f'seresnet{_depth}'] = functools.partial(_with_attention, f'resnet{_depth}', 'se')
for _depth in (50, 101):
  _ENTRY_POINTS[f'ecaresnet{_depth}d'] = functools.partial(
    _with_attention, f'resnet{_depth}d', 'eca'
  )


def _bit(depth: int, width: int) -> dict[str, Any]:
  """BiT's ResNet-v2 (Kolesnikov et al. 2020; big_vision's bit_paper.py): pre-activation
  bottlenecks ``width`` times as wide, GroupNorm(32), weight-standardised convs, the bare root."""
  block_cls, stage_sizes = IMAGENET_DEPTHS[depth]
  return dict(
    stage_sizes=stage_sizes,
    block_cls=block_cls,
    widths=tuple(64 * width * 2**i for i in range(4)),
    stem='bit',
    preact=True,
    norm='group',
    weight_standardization=True,
  )


# The six nets of BiT's releases (its upstream S, M and L weights), as bit_r<depth>x<width>.
BIT_NETS = ((50, 1), (50, 3), (101, 1), (101, 3), (152, 2), (152, 4))
for _depth, _width in BIT_NETS:
  _ENTRY_POINTS[f'bit_r{_depth}x{_width}'] = functools.partial(_bit, _depth, _width)
_BUILT_IN = frozenset(_ENTRY_POINTS)


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
  names = resnets + list(_VARIANTS) + cifar + classic + list(_ENTRY_POINTS)
  return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def module_class(name: str) -> type:
  """The flax module class that builds ``name``."""
  return model_config(name).get('module', ResNet)


def head_name(name: str) -> str:
  """The classifier's module, as the net's class declares it (``head_name``; ``fc`` if not)."""
  return getattr(module_class(name), 'head_name', 'fc')


def valid_names() -> str:
  return f'{VALID_NAMES}, {", ".join(_ENTRY_POINTS)}, or your own as package.module:function'


def model_config(name: str) -> dict[str, Any]:
  """The constructor arguments that ``name`` stands for (before user overrides); ``module``, the
  flax module class, where that is not ResNet.

  Raises:
    ValueError: for an unknown name or an impossible depth, naming the valid choices.
  """
  baseline = _BASELINE_PATTERN.match(name)
  if baseline:
    depth, batch_norm = baseline.groups()
    if name == 'googlenet':
      return dict(module=googlenet.GoogLeNet)
    if name == 'alexnet':
      return dict(module=baselines.ClassicNet, family=name)
    return dict(
      module=baselines.ClassicNet, family='vgg', depth=int(depth), batch_norm=bool(batch_norm)
    )
  if name in _ENTRY_POINTS:
    return _checked_entry(name, _ENTRY_POINTS[name])
  if _IMPORT_PATH.match(name):
    return _checked_entry(name, _imported(name))
  if name in _VARIANTS:
    depth, groups, width_per_group = _VARIANTS[name]
    return dict(model_config(f'resnet{depth}'), groups=groups, width_per_group=width_per_group)
  match = _NAME_PATTERN.match(name)
  if not match:
    raise ValueError(f'Unknown model {name!r}. Valid names: {valid_names()}.')
  family, depth, tweak = match.group(1), int(match.group(2)), match.group(3)
  if tweak and family != 'resnet':
    raise ValueError(
      f'Unknown model {name!r}: the -C/-D tweaks name resnets only ({valid_names()}).'
    )
  residual, preact = 'resnet' in family, 'preact' in family
  if family.startswith('cifar'):
    return _cifar_config(name, depth, residual, preact)
  if depth not in IMAGENET_DEPTHS:
    raise ValueError(
      f'Impossible ImageNet depth {depth} in {name!r}: choose one of '
      f'{sorted(IMAGENET_DEPTHS)}. Valid names: {valid_names()}.'
    )
  block_cls, stage_sizes = IMAGENET_DEPTHS[depth]
  config = dict(stage_sizes=stage_sizes, block_cls=block_cls, residual=residual)
  return dict(config, **_TWEAKS.get(tweak, {}), **({'preact': True} if preact else {}))


def _imported(name: str) -> Callable[[], dict[str, Any]]:
  """The function that ``package.module:function`` names, its module imported."""
  module_path, function = _IMPORT_PATH.match(name).groups()
  try:
    module = importlib.import_module(module_path)
  except ImportError as e:
    raise ValueError(
      f'Cannot import {module_path!r} for model {name!r} ({e}); run from the directory that '
      f'holds it or add that directory to PYTHONPATH.'
    ) from None
  fn = getattr(module, function, None)
  if not callable(fn):
    raise ValueError(f'{module_path} has no function {function!r} (model {name!r}).')
  return fn


def _checked_entry(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
  """What an entry point returns, checked for what a net needs."""
  # A flax module class named directly is a net of its own, built with its defaults.
  config = dict(module=fn) if isinstance(fn, type) and hasattr(fn, 'init') else fn()
  if not isinstance(config, dict):
    raise ValueError(f'{name} must return a dict of constructor arguments, got {type(config)}.')
  config = dict(config)
  module = config.get('module', ResNet)
  if not (isinstance(module, type) and hasattr(module, 'init')):
    raise ValueError(f"{name}: 'module' must be a flax module class, got {module!r}.")
  if module is ResNet:
    missing = [k for k in ('stage_sizes', 'block_cls') if k not in config]
    if missing:
      raise ValueError(f'{name} returns no {" or ".join(missing)}: a ResNet needs both.')
    block = config['block_cls']
    if not (isinstance(block, type) and issubclass(block, _Block)):
      raise ValueError(
        f'{name}: block_cls must be a block class derived from BasicBlock or Bottleneck '
        f'(resnet_jax.models.resnet), got {block!r}.'
      )
    config.pop('module', None)
  return config


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
    name: one of ``list_models()``, or ``package.module:function`` (positional: ``name=`` is
      the flax module's name, so the net can be a named submodule of your own,
      ``get_model('resnet50', num_classes=0, name='backbone')``).
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
  module = kwargs.pop('module', ResNet)
  if module is not ResNet:
    options = _options_of(name, overrides, _options(module, kwargs))
    return module(num_classes=num_classes, dtype=dtype, name=module_name, **kwargs, **options)
  googlenets = sorted({'aux_logits', 'transform_input'} & set(overrides))
  if googlenets:
    raise ValueError(
      f"{name} has no {' or '.join(googlenets)}: auxiliary classifiers and torchvision's input "
      f"transform are googlenet's."
    )
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


def _options(module: type, kwargs: dict) -> tuple[str, ...]:
  """What a net other than a ResNet takes as options: its class's fields less those its name
  (``kwargs``) and the caller set."""
  fixed = {*kwargs, *getattr(module, 'name_fields', ()), 'num_classes', 'dtype', 'parent', 'name'}
  return tuple(f for f in module.__dataclass_fields__ if f not in fixed)


def _check_block_options(name: str, kwargs: dict):
  """torchvision's rules: grouped, widened and dilated 3x3s exist in the bottleneck only; and
  what the ResNet-D shortcut and pre-activation blocks have no reference for."""
  groups, width = kwargs.get('groups', 1), kwargs.get('width_per_group', 64)
  dilation = tuple(kwargs.get('replace_stride_with_dilation', (False,) * 3))
  if len(dilation) != 3:
    raise ValueError(f'replace_stride_with_dilation needs 3 values (stages 2-4), got {dilation}.')
  if groups < 1 or width < 1:
    raise ValueError(f'groups and width_per_group must be >= 1, got {groups} and {width}.')
  # What the block declares: a block of your own keeps its parent's rules or sets its own.
  takes_groups = kwargs['block_cls'].takes_groups
  if not takes_groups and (groups != 1 or width != 64 or any(dilation)):
    raise ValueError(
      f'{name} is built of blocks without a grouped 3x3 ({kwargs["block_cls"].__name__}): they '
      f'have no groups, width_per_group or dilation (torchvision: groups=1, width_per_group=64, '
      f'no dilation); use a bottleneck net (resnet50 and deeper, resnext*, wide_resnet*).'
    )
  attention = kwargs.get('attention', '')
  if attention not in attention_layers.ATTENTIONS:
    raise ValueError(f"attention must be '', 'se' or 'eca', got {attention!r}.")
  if attention and kwargs.get('preact'):
    raise ValueError(
      f"{name}: channel attention (SE, ECA) sits after a block's last norm, which a "
      f'pre-activation block does not have; no reference places it there.'
    )
  if kwargs.get('avg_down') and (any(dilation) or kwargs.get('shortcut', 'B') == 'A'):
    raise ValueError(
      f'{name}: the average-pool shortcut (ResNet-D) is a projection of a strided block; it '
      f'takes neither dilated stages nor option A shortcuts.'
    )
  if kwargs.get('stem') == 'bit' and not kwargs.get('preact'):
    raise ValueError(
      f"{name}: BiT's root has no norm after its conv: its first block must open with one "
      f'(pre-activation blocks, preact=True).'
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
  shape = dict(groups=kwargs.get('groups', 1), width_per_group=kwargs.get('width_per_group', 64))
  for width in widths:
    channels |= kwargs['block_cls'].norm_channels(width, **shape)
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
