"""A net's tensors in the groups a fine-tune treats differently: frozen, learning-rate multipliers,
layer-wise learning-rate decay.

Tensors are named by their '/'-joined variable path (``layer1_0/conv1/kernel``, ``fc/bias``). A
pattern is a regular expression matched at the start of that name (``re.match``): ``layer1`` is
stage 1, ``layer3_1/`` its second block alone, ``fc`` the head, ``conv1|bn1`` the stem. With
``scan_blocks`` a stage's blocks 1..n-1 are stacked under ``layer{i}_scan``; a pattern is matched
against the per-block name of each block such a tensor holds (``layer3_1/...``), so the same
patterns mean the same tensors in both layouts.

Layer-wise decay follows timm's ``param_groups_layer_decay`` with the net's ``group_matcher``
(fine): the stem is layer 0, each residual block (or, in VGG and AlexNet, each ``features_k``
layer; in GoogLeNet each inception module) the next, everything else (the head, GoogLeNet's
auxiliary classifiers; a pre-activation net's final norm) the last; layer ``i`` of ``L`` learns
at ``decay ** (L - 1 - i)`` times the rate.
"""

from __future__ import annotations

import math
import re

import numpy as np
from flax import traverse_util

from resnet_jax.models.block_layout import SCAN_SUFFIX

BACKBONE = 'backbone'  # the freeze word for every tensor but the head's: a linear probe

# timm's r'^conv1|bn1|maxpool'; ResNet-C's conv1_k; GoogLeNet's conv1..conv3.
_STEM = re.compile(r'^(conv1|bn1)(_\d+)?$|^conv[23]$')
_BLOCK = re.compile(r'^layer(\d+)_(\d+)$')
_SCANNED = re.compile(rf'^layer(\d+){SCAN_SUFFIX}$')
_CLASSIC_STEM = re.compile(r'^features_0$')  # timm's VGG matcher: features.0, then features.(\d+)
_CLASSIC_LAYER = re.compile(r'^features_(\d+)$')
_CLASSIFIER = re.compile(r'^classifier_(\d+)$')
_INCEPTION = re.compile(r'^inception(\d)([a-e])$')  # GoogLeNet's modules, in order


def parse_patterns(text: str) -> list[str]:
  """The comma-separated patterns of a config field ('' -> none)."""
  return [p.strip() for p in text.split(',') if p.strip()]


def parse_multipliers(text: str) -> list[tuple[str, float]]:
  """'PATTERN=MULT,...' -> [(pattern, multiplier)], in order (the first match wins).

  Raises:
    ValueError: for an entry without '=', a multiplier that is not a number >= 0, or a pattern
      that is not a regular expression.
  """
  pairs = []
  for entry in parse_patterns(text):
    pattern, sep, value = entry.rpartition('=')
    try:
      multiplier = float(value)
    except ValueError:
      multiplier = math.nan
    if not sep or not pattern or not multiplier >= 0 or math.isinf(multiplier):
      raise ValueError(f'{entry!r} is not PATTERN=MULTIPLIER with a finite multiplier >= 0')
    compile_pattern(pattern)
    pairs.append((pattern, multiplier))
  return pairs


def compile_pattern(pattern: str) -> re.Pattern:
  try:
    return re.compile(pattern)
  except re.error as e:
    raise ValueError(f'{pattern!r} is not a regular expression ({e})') from None


def names(tree: dict) -> dict[tuple, list[str]]:
  """Each leaf's flat key -> the per-block names it holds (one, or one per stacked block)."""
  out = {}
  for key, leaf in traverse_util.flatten_dict(tree).items():
    parts = [str(k) for k in key]
    scanned = [i for i, part in enumerate(parts) if _SCANNED.match(part)]
    if not scanned:
      out[key] = ['/'.join(parts)]
      continue
    i = scanned[0]
    stage = _SCANNED.match(parts[i]).group(1)
    out[key] = [
      '/'.join([*parts[:i], f'layer{stage}_{j + 1}', *parts[i + 1 :]])
      for j in range(np.shape(leaf)[0])
    ]
  return out


def head_prefix(tree: dict) -> str:
  """The classifier's name: 'fc' (ResNets), the last ``classifier_k`` (VGG, AlexNet)."""
  tops = {str(key[0]) for key in traverse_util.flatten_dict(tree)}
  classifiers = sorted((int(m.group(1)), top) for top in tops if (m := _CLASSIFIER.match(top)))
  return classifiers[-1][1] if classifiers else 'fc'


def _freeze_patterns(tree: dict, freeze: str) -> list[str]:
  patterns = parse_patterns(freeze)
  if BACKBONE in patterns:  # every tensor outside the head: '(?!fc/)'
    patterns = [p for p in patterns if p != BACKBONE] + [f'(?!{re.escape(head_prefix(tree))}/)']
  return patterns


def unmatched(tree: dict, freeze: str, lr_mults: str) -> list[str]:
  """The patterns of ``freeze`` and ``lr_mults`` that name no tensor of ``tree``."""
  all_names = [n for block_names in names(tree).values() for n in block_names]
  patterns = _freeze_patterns(tree, freeze) + [p for p, _ in parse_multipliers(lr_mults)]
  return [p for p in patterns if not any(re.match(p, n) for n in all_names)]


def frozen_mask(tree: dict, freeze: str) -> dict:
  """True for each tensor a ``freeze`` pattern names (``tree``'s structure).

  Raises:
    ValueError: a stacked (scanned) tensor holds frozen and trained blocks alike.
  """
  patterns = [compile_pattern(p) for p in _freeze_patterns(tree, freeze)]
  mask = {}
  for key, block_names in names(tree).items():
    hits = [any(p.match(n) for p in patterns) for n in block_names]
    if any(hits) and not all(hits):
      raise ValueError(
        f'freeze names some of the blocks stacked in {"/".join(map(str, key))} '
        f"(scan_blocks): freeze all of a stage's blocks after its first, or none, or train "
        f'with scan_blocks=False'
      )
    mask[key] = all(hits)
  return traverse_util.unflatten_dict(mask)


def frozen_norms(tree: dict, freeze: str) -> tuple[str, ...]:
  """The module paths of the norm layers whose scale and bias are both frozen."""
  frozen = traverse_util.flatten_dict(frozen_mask(tree, freeze))
  paths = []
  for key, is_frozen in frozen.items():
    if key[-1] == 'scale' and is_frozen and frozen.get((*key[:-1], 'bias'), False):
      paths.append('/'.join(map(str, key[:-1])))
  return tuple(sorted(paths))


def _ordinal(name: str) -> tuple[float, ...]:
  """timm's group ordinal of a tensor (per-block name): stem, blocks in order, then the rest."""
  top = name.split('/')[0]
  if _STEM.match(top) or _CLASSIC_STEM.match(top):
    return (0.0,)
  if match := _BLOCK.match(top):
    return (1.0, float(match.group(1)), float(match.group(2)))
  if match := _CLASSIC_LAYER.match(top):
    return (1.0, float(match.group(1)))
  if match := _INCEPTION.match(top):
    return (1.0, float(match.group(1)), float(ord(match.group(2))))
  return (math.inf,)


def layer_ids(tree: dict) -> tuple[dict, int]:
  """(each tensor's layer id: an int, or an array of one per stacked block; the layer count)."""
  per_leaf = {key: [_ordinal(n) for n in block_names] for key, block_names in names(tree).items()}
  order = {o: i for i, o in enumerate(sorted({o for os in per_leaf.values() for o in os}))}
  ids = {key: [order[o] for o in ordinals] for key, ordinals in per_leaf.items()}
  return ids, len(order)


def lr_multipliers(tree: dict, lr_mults: str, layer_decay: float) -> dict | None:
  """Each tensor's learning-rate multiplier (``tree``'s structure; None when all are 1): the
  first ``lr_mults`` pattern that names it (1 if none), times ``layer_decay ** (L - 1 - id)``
  when ``layer_decay`` > 0. A stacked tensor's multipliers are an array along its block axis,
  shaped to broadcast over it."""
  pairs = [(compile_pattern(p), m) for p, m in parse_multipliers(lr_mults)]
  if not pairs and not layer_decay:
    return None
  ids, count = layer_ids(tree) if layer_decay else ({}, 0)
  flat = traverse_util.flatten_dict(tree)
  out = {}
  for key, block_names in names(tree).items():
    values = []
    for j, name in enumerate(block_names):
      value = next((m for p, m in pairs if p.match(name)), 1.0)
      if layer_decay:
        value *= layer_decay ** (count - 1 - ids[key][j])
      values.append(value)
    if len(block_names) == 1 and not _is_stacked(key):
      out[key] = np.float32(values[0])
    else:  # one per stacked block, broadcast over the rest of the tensor
      shape = (len(values),) + (1,) * (np.ndim(flat[key]) - 1)
      out[key] = np.asarray(values, np.float32).reshape(shape)
  return traverse_util.unflatten_dict(out)


def _is_stacked(key: tuple) -> bool:
  return any(_SCANNED.match(str(part)) for part in key)
