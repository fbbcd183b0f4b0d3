"""The two variable layouts of a ResNet's blocks, and conversions between them.

Per block (torchvision's names): ``layer{i}_{j}/...`` for every block j of stage i. Scanned
(``ResNet(scan_blocks=True)``): ``layer{i}_0/...`` as before, and blocks 1..n-1 stacked along a
leading axis under ``layer{i}_scan/...``. The conversions work on any nested dict whose keys
hold these names (variables, a saved train state's params or momentum), so checkpoints,
``init_from`` and torchvision weights move between the layouts.
"""

from __future__ import annotations

import re

import jax.numpy as jnp
from flax import traverse_util

SCAN_SUFFIX = '_scan'  # stage i's blocks 1..n-1 stacked: layer{i}_scan/... with a leading axis

_BLOCK_KEY = re.compile(r'^layer(\d+)_(\d+)$')
_SCAN_KEY = re.compile(rf'^layer(\d+){SCAN_SUFFIX}$')


def _is_scanned(tree) -> bool:
  return any(_find(key, _SCAN_KEY)[1] for key in _flat(tree))


def _flat(tree) -> dict:
  return traverse_util.flatten_dict(tree) if isinstance(tree, dict) else {}


def _find(key: tuple, pattern: re.Pattern):
  """(position, match) of the first part of a flattened key that ``pattern`` matches."""
  for position, part in enumerate(key):
    match = pattern.match(str(part))
    if match:
      return position, match
  return None, None


def stack_blocks(tree: dict) -> dict:
  """Per-block layout -> ``scan_blocks`` layout: in any nested dict (variables, a saved train
  state, momentum), ``layer{i}_{j}`` for j >= 1 become slice j - 1 of ``layer{i}_scan``."""
  flat, groups = {}, {}
  for key, value in _flat(tree).items():
    at, match = _find(key, _BLOCK_KEY)
    if match is None or int(match.group(2)) == 0:
      flat[key] = value
      continue
    scanned = (*key[:at], f'layer{match.group(1)}{SCAN_SUFFIX}', *key[at + 1 :])
    groups.setdefault(scanned, {})[int(match.group(2))] = value
  for key, blocks in groups.items():
    flat[key] = jnp.stack([blocks[j] for j in sorted(blocks)])
  return traverse_util.unflatten_dict(flat)


def unstack_blocks(tree: dict) -> dict:
  """``scan_blocks`` layout -> per-block layout (torchvision's names); inverse of stack_blocks."""
  flat = {}
  for key, value in _flat(tree).items():
    at, match = _find(key, _SCAN_KEY)
    if match is None:
      flat[key] = value
      continue
    for j in range(value.shape[0]):
      flat[(*key[:at], f'layer{match.group(1)}_{j + 1}', *key[at + 1 :])] = value[j]
  return traverse_util.unflatten_dict(flat)


def relayout_like(tree: dict, like: dict) -> dict:
  """``tree`` in the block layout (per-block or scanned) of ``like``."""
  if _is_scanned(like) == _is_scanned(tree):
    return tree
  return stack_blocks(tree) if _is_scanned(like) else unstack_blocks(tree)
