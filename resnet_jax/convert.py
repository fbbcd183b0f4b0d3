"""torchvision ResNet state_dict -> Flax variables, and a CLI that writes them as a checkpoint.

Usage:
  python -m resnet_jax.convert --torchvision=resnet50.pth --model=resnet50 --out=/tmp/r50_tv
  python -m resnet_jax.main --config=configs/r50.py --workdir=DIR --config.init_from=/tmp/r50_tv

torchvision's pretrained weights expect inputs scaled to [0, 1] and normalised per channel, so
fine-tune or evaluate them with ``--config.normalization=channel_mean_std``.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import traverse_util

from resnet_jax import block_layout, models
from resnet_jax.errors import UserError

FLAGS = flags.FLAGS  # absl's registry; the flags themselves: define_flags()

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
  else:
    collection, name = 'unknown', leaf
  return collection, (*path, name)


def _to_flax_layout(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:  # conv OIHW -> HWIO
    return value.transpose(2, 3, 1, 0)
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
  model = models.get_model(name, num_classes=num_classes, **overrides)
  size = 32 if name.startswith('cifar') else 224
  return jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
  )


def from_torchvision(
  state_dict: Mapping[str, Any], name: str, **model_overrides
) -> dict[str, dict[str, Any]]:
  """Maps a torchvision ResNet state_dict onto this project's Flax variables.

  Args:
    state_dict: torchvision keys (``conv1.weight``, ``layer1.0.bn1.running_mean``, ``fc.bias``...)
      to torch tensors or numpy arrays.
    name: model name as for ``models.get_model``; the class count is read off ``fc.weight``.
    **model_overrides: options the weights were trained with (e.g. ``shortcut='C'``), and
      ``scan_blocks=True`` for the stacked layout of a scanned model.

  Returns:
    ``{'params': ..., 'batch_stats': ...}`` of float32 arrays.

  Raises:
    ValueError: naming every missing, unexpected or mis-shaped key.
  """
  if 'fc.weight' not in state_dict:
    raise ValueError("state_dict has no 'fc.weight'; is this a torchvision ResNet state_dict?")
  num_classes = int(np.shape(state_dict['fc.weight'])[0])
  scan_blocks = model_overrides.pop('scan_blocks', False)  # converted per block, then stacked
  expected = traverse_util.flatten_dict(expected_variables(name, num_classes, **model_overrides))

  converted, unexpected, misshaped = {}, [], []
  for key, value in state_dict.items():
    if key.endswith(_IGNORED_SUFFIXES):
      continue
    array = _as_numpy(value)
    collection, path = _flax_path(key, array.ndim)
    flax_key = (collection, *path)
    if flax_key not in expected:
      unexpected.append(key)
      continue
    array = _to_flax_layout(array)
    if array.shape != expected[flax_key].shape:
      misshaped.append(f'{key}: got {array.shape}, model wants {expected[flax_key].shape}')
      continue
    converted[flax_key] = array
  missing = ['/'.join(k) for k in expected if k not in converted]
  problems = []
  if missing:
    problems.append(f'missing for {name}: {missing}')
  if unexpected:
    problems.append(f'unexpected keys: {unexpected}')
  if misshaped:
    problems.append(f'mis-shaped: {misshaped}')
  if problems:
    raise ValueError(f'Cannot convert state_dict to {name}; ' + '; '.join(problems))
  variables = traverse_util.unflatten_dict(converted)
  return block_layout.stack_blocks(variables) if scan_blocks else variables


def main(argv):
  del argv
  from resnet_jax import checkpoint, storage

  weights = storage.path(FLAGS.torchvision)  # local or cloud
  if not weights.is_file():
    raise UserError(f'--torchvision={FLAGS.torchvision}: no such file.')
  try:
    import torch  # only this command needs torch: an optional dependency
  except ImportError:
    raise UserError(
      'convert reads torch files and needs torch: pip install torch==2.13.0 (the small CPU '
      'build), or pip install -e ".[convert]".'
    ) from None
  try:
    state_dict = torch.load(io.BytesIO(weights.read_bytes()), map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises many types; its advice to unpickle unsafely is not ours
    raise UserError(
      f'--torchvision={FLAGS.torchvision} is not a readable torch state_dict '
      f'({type(e).__name__}): re-download it, or save it with torch.save(model.state_dict()).'
    ) from None
  if 'state_dict' in state_dict:  # Checkpoints saved by torchvision's reference scripts nest it.
    state_dict = state_dict['state_dict']
  try:
    variables = from_torchvision(state_dict, FLAGS.model)
  except ValueError as e:
    raise UserError(f'--torchvision={FLAGS.torchvision}: {e}') from None
  checkpoint.save_variables(FLAGS.out, variables)
  count = sum(v.size for v in jax.tree.leaves(variables['params']))
  print(f'Wrote {FLAGS.model} ({count:,} parameters) to {FLAGS.out}')


def define_flags():
  """The command's flags; defined only when run as a command, so importing this module (a
  library too) never adds flags to another entry point's."""
  flags.DEFINE_string('torchvision', None, 'Path of a torchvision state_dict (.pth).')
  flags.DEFINE_string('model', None, 'Model name, e.g. resnet50.')
  flags.DEFINE_string('out', None, 'Output directory of the orbax checkpoint.')
  flags.mark_flags_as_required(['torchvision', 'model', 'out'])


if __name__ == '__main__':
  from resnet_jax import cli

  define_flags()
  cli.run(main)
