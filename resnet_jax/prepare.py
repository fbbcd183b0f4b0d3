"""Prepares a TFDS dataset for training, ImageNet from its manually downloaded archives.

  python -m resnet_jax.prepare --dataset=imagenet2012 --data_dir=DATA_DIR

TFDS cannot download ImageNet: put ``ILSVRC2012_img_train.tar`` and ``ILSVRC2012_img_val.tar``
(image-net.org) in ``DATA_DIR/downloads/manual/`` (or name another folder with
``--manual_dir``). The archives are checked first (present, readable, in ImageNet's layout: a
tar of per-synset tars, and a flat tar of validation JPEGs), and anything missing or damaged is
named in one line before hours of preparation start. Then TFDS's own builder writes the dataset
as ArrayRecord (random access: one global batch order on any number of hosts). This is what
``tfds build`` does, without the Apache Beam dependency its command line imports. Other TFDS
names are downloaded and prepared the same way (on a machine with internet).
"""

from __future__ import annotations

import logging
import os
import tarfile

from absl import flags

from resnet_jax import cli, console, storage
from resnet_jax.errors import UserError

LOG = logging.getLogger('resnet_jax.prepare')  # __name__ is '__main__' under python -m

IMAGENET = 'imagenet2012'
IMAGENET_ARCHIVES = {  # split -> the archive image-net.org names it
  'train': 'ILSVRC2012_img_train.tar',
  'validation': 'ILSVRC2012_img_val.tar',
}


def check_imagenet_archives(manual_dir) -> dict[str, int]:
  """The number of members of each archive (synset tars for train, JPEGs for validation).

  Raises:
    UserError: naming every archive that is missing, unreadable or not in ImageNet's layout.
  """
  problems, counts = [], {}
  for split, name in IMAGENET_ARCHIVES.items():
    path = storage.path(manual_dir) / name
    if not path.exists():
      problems.append(f'{path} is missing')
      continue
    try:
      with path.open('rb') as f, tarfile.open(fileobj=f, mode='r|') as tar:
        names = [member.name for member in tar]
    except (OSError, tarfile.TarError) as e:
      problems.append(f'{path} is not a readable tar ({storage.describe(e)})')
      continue
    expected = '.tar' if split == 'train' else '.JPEG'
    wrong = [n for n in names if not n.endswith(expected)]
    if not names or wrong:
      example = f' such as {wrong[0]!r}' if wrong else ''
      problems.append(f'{path} should hold only *{expected} files, but has {len(wrong)}{example}')
    counts[split] = len(names)
  if problems:
    raise UserError(
      f'ImageNet cannot be prepared: {"; ".join(problems)}. Download the ILSVRC2012 training and '
      f'validation archives from image-net.org into {manual_dir} (or pass --manual_dir=DIR).'
    )
  return counts


def prepare(name: str, data_dir: str, manual_dir: str = '', file_format: str = 'array_record'):
  """Runs TFDS's builder for ``name`` into ``data_dir``; returns {split: examples}."""
  import tensorflow_datasets as tfds

  storage.check_writable_dir(data_dir, '--data_dir')
  manual_dir = manual_dir or os.fspath(storage.path(data_dir) / 'downloads' / 'manual')
  if name.split(':')[0] == IMAGENET:
    counts = check_imagenet_archives(manual_dir)
    LOG.info(
      'ImageNet archives in %s: %d synset archives for training, %d validation images',
      manual_dir,
      counts['train'],
      counts['validation'],
    )
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # tfds raises several types for unknown names
    raise UserError(f'--dataset={name}: not a TFDS dataset ({storage.describe(e)}).') from e
  if builder.is_prepared():
    LOG.info('%s is already prepared in %s', name, builder.data_dir)
  else:
    LOG.info(
      'Preparing %s in %s as %s (this can take hours for ImageNet)', name, data_dir, file_format
    )
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
      file_format=file_format,
    )
  return {split: info.num_examples for split, info in builder.info.splits.items()}


FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string('dataset', IMAGENET, 'TFDS name, e.g. imagenet2012 or cifar10.')
  flags.DEFINE_string('data_dir', None, 'TFDS data_dir to prepare into (local or gs://).')
  flags.DEFINE_string(
    'manual_dir', '', "Manually downloaded archives; '' = DATA_DIR/downloads/manual."
  )
  flags.DEFINE_enum('file_format', 'array_record', ['array_record', 'tfrecord'], 'Storage format.')
  flags.mark_flag_as_required('data_dir')


def main(argv):
  if len(argv) > 1:
    raise UserError(f'Unexpected arguments {argv[1:]}: every option is a flag, --name=value.')
  console.setup()
  splits = prepare(FLAGS.dataset, FLAGS.data_dir, FLAGS.manual_dir, FLAGS.file_format)
  listing = ', '.join(f'{split} {count:,}' for split, count in sorted(splits.items()))
  print(
    f'{FLAGS.dataset} in {FLAGS.data_dir}: {listing} examples. Train with '
    f'--config.dataset={FLAGS.dataset} --config.data_dir={FLAGS.data_dir}'
  )


if __name__ == '__main__':
  define_flags()
  cli.run(main)
