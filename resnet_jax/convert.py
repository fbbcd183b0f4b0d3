"""Converts a torchvision ResNet state_dict into a checkpoint that ``init_from`` reads.

Usage:
  python -m resnet_jax.convert --torchvision=resnet50.pth --model=resnet50 --out=/tmp/r50_tv
  python -m resnet_jax.main --config=configs/r50.py --workdir=DIR --config.init_from=/tmp/r50_tv

torchvision's pretrained weights expect inputs scaled to [0, 1] and normalised per channel, so
fine-tune or evaluate them with ``--config.normalization=channel_mean_std``.
"""

from __future__ import annotations

import io

import jax
from absl import flags

from resnet_jax import cli
from resnet_jax.errors import UserError
from resnet_jax.models import torchvision_weights

FLAGS = flags.FLAGS
flags.DEFINE_string('torchvision', None, 'Path of a torchvision state_dict (.pth).')
flags.DEFINE_string('model', None, 'Model name, e.g. resnet50.')
flags.DEFINE_string('out', None, 'Output directory of the orbax checkpoint.')
flags.mark_flags_as_required(['torchvision', 'model', 'out'])


def main(argv):
  del argv
  from resnet_jax import storage
  from resnet_jax.train import checkpoint

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
    variables = torchvision_weights.from_torchvision(state_dict, FLAGS.model)
  except ValueError as e:
    raise UserError(f'--torchvision={FLAGS.torchvision}: {e}') from None
  checkpoint.save_variables(FLAGS.out, variables)
  count = sum(v.size for v in jax.tree.leaves(variables['params']))
  print(f'Wrote {FLAGS.model} ({count:,} parameters) to {FLAGS.out}')


if __name__ == '__main__':
  cli.run(main)
