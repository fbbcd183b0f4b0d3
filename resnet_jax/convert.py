"""Converts weights between torchvision and this project, both ways.

  # torchvision state_dict -> a checkpoint that init_from reads (no torch needed)
  python -m resnet_jax.convert --torchvision=resnet50.pth --model=resnet50 --out=/tmp/r50_tv
  python -m resnet_jax.convert --torchvision=torchvision:resnet50.IMAGENET1K_V2 --out=/tmp/r50_v2
  python -m resnet_jax.main --config=configs/r50.py --workdir=DIR --config.init_from=/tmp/r50_tv
  # a run's latest checkpoint (or a converted one) -> torchvision's state_dict
  python -m resnet_jax.convert --weights=DIR --to_torchvision=resnet50.pth

torchvision's pretrained weights expect inputs scaled to [0, 1] and normalised per channel, so
fine-tune or evaluate them with ``--config.normalization=channel_mean_std``. A state_dict written
here loads into torchvision's model of the same name with ``load_state_dict(..., strict=True)``.
"""

from __future__ import annotations

import io

import jax
from absl import flags

from resnet_jax import cli, torch_files
from resnet_jax.errors import UserError
from resnet_jax.models import torchvision_weights

FLAGS = flags.FLAGS
flags.DEFINE_string(
  'torchvision',
  None,
  'A torchvision or timm state_dict (.pth, .safetensors) or a BiT .npz to convert: a path, a URL, '
  'or released weights by name (torchvision:resnet50.IMAGENET1K_V2, timm:resnet50.a1_in1k, '
  'bit:M-R50x1).',
)
flags.DEFINE_string('model', None, 'The net of --torchvision, e.g. resnet50 (names: their own).')
flags.DEFINE_string('out', None, 'Output directory of the orbax checkpoint (from --torchvision).')
flags.DEFINE_string('weights', None, 'A run workdir or a converted checkpoint to export.')
flags.DEFINE_string('to_torchvision', None, 'Output .pth of torchvision state_dict (of --weights).')
flags.DEFINE_bool(
  'ema', False, "With --weights: the run's moving average of its weights (ema_decay)."
)

USAGE = (
  'give --torchvision=FILE.pth --model=NAME --out=DIR (torchvision -> checkpoint), or '
  '--weights=DIR --to_torchvision=FILE.pth (a run or checkpoint -> torchvision).'
)


def _torch():
  try:
    import torch  # only writing a .pth needs torch (an optional dependency)
  except ImportError:
    raise UserError(
      'convert --to_torchvision writes a torch file and needs torch: pip install torch==2.13.0 '
      '(the small CPU build), or pip install -e ".[convert]".'
    ) from None
  return torch


def from_torchvision_file():
  """A torch file (torchvision's or timm's: a local or cloud path, a URL, or released weights by
  name, downloaded once into the cache) as a checkpoint; read without torch."""
  from resnet_jax import storage
  from resnet_jax.models import releases
  from resnet_jax.train import checkpoint, pretrained

  source, model = FLAGS.torchvision, FLAGS.model
  if releases.is_reference(source):
    if not source.startswith(('http://', 'https://')):
      weights = releases.lookup(source)
      model = model or weights.model
      if model != weights.model:
        raise UserError(f'--torchvision={source} are weights of {weights.model}, not {model}.')
      source = weights.url
    file = pretrained.download(source)
    data = storage.path(file).read_bytes()
  else:
    weights = storage.path(source)  # local or cloud
    if not weights.is_file():
      raise UserError(f'--torchvision={FLAGS.torchvision}: no such file.')
    data = weights.read_bytes()
  if not model:
    raise UserError(f'convert: --model=NAME is the net of {FLAGS.torchvision}.')
  try:
    variables = pretrained.variables_of_file(data, source, model)
  except torch_files.NotWeights as e:
    raise UserError(
      f'--torchvision={FLAGS.torchvision}: {e}: re-download it, or save it with '
      f'torch.save(model.state_dict()).'
    ) from None
  except ValueError as e:
    raise UserError(f'--torchvision={FLAGS.torchvision}: {e}') from None
  checkpoint.save_variables(FLAGS.out, variables)
  count = sum(v.size for v in jax.tree.leaves(variables['params']))
  print(f'Wrote {model} ({count:,} parameters) to {FLAGS.out}')


def to_torchvision_file():
  from resnet_jax import storage
  from resnet_jax.train import checkpoint

  storage.check_writable_file(FLAGS.to_torchvision, '--to_torchvision', 'model.pth')
  source = storage.path(FLAGS.weights)
  if not source.is_dir():
    raise UserError(
      f'--weights={FLAGS.weights}: no such directory (give a run workdir or a convert output).'
    )
  torch = _torch()
  variables = checkpoint.read_variables(source, sharding=None, use_ema=FLAGS.ema)
  state_dict = torchvision_weights.to_torchvision(variables)
  buffer = io.BytesIO()
  torch.save({k: torch.from_numpy(v) for k, v in state_dict.items()}, buffer)
  storage.write_bytes_atomic(storage.path(FLAGS.to_torchvision), buffer.getvalue())
  count = sum(v.size for v in jax.tree.leaves(variables['params']))
  print(f'Wrote {len(state_dict)} tensors ({count:,} parameters) to {FLAGS.to_torchvision}')


def main(argv):
  if len(argv) > 1:
    raise UserError(f'Unexpected arguments {argv[1:]}: every option is a flag, --name=value.')
  importing = [FLAGS.torchvision, FLAGS.out]
  exporting = [FLAGS.weights, FLAGS.to_torchvision]
  if all(importing) and not any(exporting):
    from_torchvision_file()
  elif all(exporting) and not any(importing):
    to_torchvision_file()
  else:
    raise UserError(f'convert: {USAGE}')


if __name__ == '__main__':
  cli.run(main)
