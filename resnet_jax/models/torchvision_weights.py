"""torchvision's ResNet ``state_dict`` <-> this project's Flax variables (names, layouts, shapes);
timm's for ResNet-C/-D (its names are torchvision's plus the deep stem's ``conv1.0...conv1.6``
and the shortcut's ``downsample.1``/``.2``); torchvision's VGG and AlexNet (``features.N``,
``classifier.N``; their first linear layer's rows in torch's channel-major flatten order, which
``baselines.ClassicNet`` keeps); torchvision's GoogLeNet, with its auxiliary classifiers or
without; timm's attention nets (``seresnet*``, ``ecaresnet*d``: its ``se.fc1``/``se.fc2`` and
``se.conv``, a Conv1d).

torchvision's pretrained weights expect inputs scaled to [0, 1] and normalised per channel, so
fine-tune or evaluate them with ``--config.normalization=channel_mean_std``. The command that
writes them as a checkpoint is ``python -m resnet_jax.convert``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from resnet_jax.models import block_layout, registry

_IGNORED_SUFFIXES = ('num_batches_tracked',)
_LEAF_NAMES = {
  # (collection, flax leaf) by torch leaf; conv/linear weights are told apart by rank.
  'running_mean': ('batch_stats', 'mean'),
  'running_var': ('batch_stats', 'var'),
  'bias': ('params', 'bias'),
}


def _flax_path(torch_key: str, rank: int) -> tuple[str, tuple[str, ...]]:
  """'layer1.0.downsample.1.weight' -> ('params', ('layer1_0', 'downsample_1', 'scale'))."""
  *modules, leaf = torch_key.split('.')
  path: list[str] = []
  for part in modules:
    if re.fullmatch(r'\d+', part) and path:
      path[-1] = f'{path[-1]}_{part}'
    else:
      path.append(part)
  if leaf == 'weight':
    collection, name = ('params', 'kernel') if rank > 1 else ('params', 'scale')
  elif leaf in _LEAF_NAMES:
    collection, name = _LEAF_NAMES[leaf]
  else:  # a parameter of a block of your own keeps its name: 'layer1.0.gate'
    collection, name = 'params', leaf
  return collection, (*path, name)


def flax_key(torch_key: str) -> tuple[str, ...]:
  """A torch key's leaf in our flattened variables: 'layer1.0.bn1.running_mean' ->
  ('batch_stats', 'layer1_0', 'bn1', 'mean')."""
  collection, path = _flax_path(torch_key, rank=1)
  return (collection, *path)


def _to_flax_layout(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:  # conv OIHW -> HWIO
    return value.transpose(2, 3, 1, 0)
  if value.ndim == 3:  # Conv1d OIW -> WIO (ECA's)
    return value.transpose(2, 1, 0)
  if value.ndim == 2:  # linear (out, in) -> (in, out)
    return value.T
  return value


def _as_numpy(value: Any) -> np.ndarray:
  if hasattr(value, 'detach'):  # a torch tensor, without importing torch here
    value = value.detach().cpu().numpy()
  # A copy: torch updates running statistics in place, and must not reach into our arrays.
  return np.array(value, dtype=np.float32, copy=True)


def expected_variables(name: str, num_classes: int, **overrides) -> dict[str, Any]:
  """Shapes of a model's variables (no compute), for checking converted or restored weights."""
  model = registry.get_model(name, num_classes=num_classes, **overrides)
  size = 32 if name.startswith('cifar') else 224
  return jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
  )


def checked_variables(pairs, expected: dict, name: str, what: str) -> dict[str, Any]:
  """Converted arrays as the net's variables, every key of a weights file accounted for.

  Args:
    pairs: (the file's key, its flax path or None, its array in flax's layout) for each tensor.
    expected: the net's flattened variables (``expected_variables``), for their paths and shapes.
    name: the net's name, for the message.
    what: what is read, for the message (``this state_dict as resnet18``).

  Raises:
    ValueError: counting and naming the missing, unexpected and mis-shaped keys.
  """
  converted, unexpected, misshaped, seen = {}, [], [], set()
  for key, flax_key, array in pairs:
    if flax_key not in expected:
      unexpected.append(key)
      continue
    seen.add(flax_key)
    if array.shape != expected[flax_key].shape:
      misshaped.append(f'{key}: got {array.shape}, {name} wants {expected[flax_key].shape}')
      continue
    converted[flax_key] = array
  # Parameters first: the statistics missing beside them say less about what went wrong.
  missing = sorted((k for k in expected if k not in seen), key=lambda k: k[0] != 'params')
  missing = ['/'.join(k) for k in missing]
  problems = [
    f'{len(keys)} {kind}: {", ".join(keys[:5])}{" ..." if len(keys) > 5 else ""}'
    for kind, keys in (
      (f'missing for {name}', missing),
      ('unexpected', unexpected),
      ('mis-shaped', misshaped),
    )
    if keys
  ]
  if problems:
    raise ValueError(f'Cannot read {what}; ' + '; '.join(problems))
  return traverse_util.unflatten_dict(converted)


def from_torchvision(
  state_dict: Mapping[str, Any], name: str, **model_overrides
) -> dict[str, dict[str, Any]]:
  """Maps a torchvision ResNet state_dict onto this project's Flax variables.

  Args:
    state_dict: torchvision keys (``conv1.weight``, ``layer1.0.bn1.running_mean``, ``fc.bias``...)
      to torch tensors or numpy arrays.
    name: model name as for ``registry.get_model``; the class count is read off ``fc.weight``
      (``classifier.6.weight`` for VGG and AlexNet).
    **model_overrides: options the weights were trained with (e.g. ``shortcut='C'``), and
      ``scan_blocks=True`` for the stacked layout of a scanned model.

  Returns:
    ``{'params': ..., 'batch_stats': ...}`` of float32 arrays.

  Raises:
    ValueError: naming every missing, unexpected or mis-shaped key.
  """
  head = f'{registry.head_name(name).replace("_", ".")}.weight'
  if head not in state_dict:
    raise ValueError(f'state_dict has no {head!r}; is this a torchvision {name} state_dict?')
  num_classes = int(np.shape(state_dict[head])[0])
  if name == 'googlenet' and 'aux_logits' not in model_overrides:  # saved with them or without
    model_overrides['aux_logits'] = 'aux1.fc2.weight' in state_dict
  scan_blocks = model_overrides.pop('scan_blocks', False)  # converted per block, then stacked
  expected = traverse_util.flatten_dict(expected_variables(name, num_classes, **model_overrides))

  def pairs():
    for key, value in state_dict.items():
      if key.endswith(_IGNORED_SUFFIXES):
        continue
      array = _as_numpy(value)
      collection, path = _flax_path(key, array.ndim)
      flax_key = (collection, *path)
      if flax_key not in expected and ('batch_stats', *path) in expected:
        flax_key = ('batch_stats', *path)  # a frozen BatchNorm's scale and bias (norms.py)
      yield key, flax_key, _to_flax_layout(array)

  variables = checked_variables(pairs(), expected, name, f'this state_dict as {name}')
  return block_layout.stack_blocks(variables) if scan_blocks else variables


_TORCH_LEAF = {  # flax (collection, leaf) -> torch leaf; the inverse of _flax_path's leaves
  ('params', 'kernel'): 'weight',
  ('params', 'scale'): 'weight',
  ('params', 'bias'): 'bias',
  ('batch_stats', 'mean'): 'running_mean',
  ('batch_stats', 'var'): 'running_var',
  ('batch_stats', 'scale'): 'weight',  # frozen BatchNorm's (buffers in torch too)
  ('batch_stats', 'bias'): 'bias',
}


def to_torchvision(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """This project's variables (either layout) as a torchvision ``state_dict`` of numpy arrays,
  BatchNorm's ``num_batches_tracked`` included (0), so torchvision's ``load_state_dict`` takes
  it strictly; the inverse of ``from_torchvision``. ``torch.from_numpy`` each value to save it
  with torch."""
  flat = traverse_util.flatten_dict(jax.device_get(block_layout.unstack_blocks(dict(variables))))
  state_dict = {}
  for (collection, *path, leaf), value in flat.items():
    modules = '.'.join(re.sub(r'_(\d+)$', r'.\1', part) for part in path)
    array = np.asarray(value, dtype=np.float32)
    if array.ndim == 4:  # conv HWIO -> OIHW
      array = array.transpose(3, 2, 0, 1)
    elif array.ndim == 3:  # Conv1d WIO -> OIW
      array = array.transpose(2, 1, 0)
    elif array.ndim == 2:  # linear (in, out) -> (out, in)
      array = array.T
    torch_leaf = _TORCH_LEAF.get((collection, leaf), leaf)  # your own block's: its own name
    state_dict[f'{modules}.{torch_leaf}'] = np.array(array, order='C')  # a scalar stays 0-d
    if (collection, leaf) == ('batch_stats', 'mean') and ('params', *path, 'scale') in flat:
      # BatchNorm2d's counter; torchvision's FrozenBatchNorm2d has none.
      state_dict[f'{modules}.num_batches_tracked'] = np.array(0, np.int64)
  return state_dict
