"""The ``Source`` a config names: a TFDS dataset, an image folder, or a bundled dataset (digits,
photos, fake)."""

from __future__ import annotations

import dataclasses

import numpy as np

from resnet_jax.data import bundled, folders, source, tfds_source


def get_source(config, split: str) -> source.Source:
  """The source a config names for ``split`` (only the ``class_subset`` classes, if set)."""
  whole = _dataset_source(config, split)
  return class_subset(whole, config.class_subset) if config.class_subset else whole


def class_subset(whole: source.Source, classes: str) -> source.Source:
  """``whole``'s examples of ``classes`` ('5,6,7,8,9') alone, relabelled 0, 1, ... in that order:
  a held-out task of a dataset (pretrain on digits 0-4, transfer to 5-9). Its labels are read
  once from every example, so it is meant for small random-access datasets."""
  keep = [int(c) for c in classes.split(',')]
  if whole.fetch is None:
    raise source.DatasetError(
      f'class_subset needs random access to {whole.name}; it is stored as TFRecord (prepare it '
      f'as ArrayRecord).'
    )
  unknown = [c for c in keep if c >= whole.num_classes]
  if unknown:
    raise source.DatasetError(
      f'class_subset={classes!r}: {whole.name} has classes 0..{whole.num_classes - 1}, not '
      f'{unknown}.'
    )
  labels = np.concatenate(
    [
      whole.fetch(np.arange(i, min(i + 1024, whole.num_examples)))[1]
      for i in range(0, whole.num_examples, 1024)
    ]
  )
  index = np.flatnonzero(np.isin(labels, keep))
  relabel = np.full(whole.num_classes, -1, np.int32)
  relabel[keep] = np.arange(len(keep), dtype=np.int32)

  def fetch(indices):
    data, old = whole.fetch(index[indices])
    return data, relabel[old]

  return dataclasses.replace(
    whole,
    num_examples=len(index),
    num_classes=len(keep),
    fetch=fetch,
    fingerprint=f'{whole.fingerprint}:classes={classes}',
  )


def _dataset_source(config, split: str) -> source.Source:
  if config.dataset == 'digits':
    digits = bundled.digits(split, config.digits_test_fraction)
    return dataclasses.replace(
      digits, fingerprint=f'digits:{config.digits_test_fraction}:{split}:{digits.num_examples}'
    )
  if config.dataset == 'photos':
    count = config.photos_num_examples[0 if split == config.train_split else 1]
    return dataclasses.replace(bundled.photos(split, count), fingerprint=f'photos:{split}:{count}')
  if config.dataset == 'folder':
    return folders.folder(config.data_dir, split, skip_bad_images=config.skip_bad_images)
  if config.dataset == 'fake':
    size = config.fake_num_examples if split == config.train_split else config.fake_eval_examples
    return dataclasses.replace(
      bundled.fake(size, config.image_size, config.num_classes or 1000), fingerprint=f'fake:{size}'
    )
  return tfds_source.tfds_source(
    config.dataset,
    config.data_dir or None,
    split,
    in_memory_max_bytes=config.in_memory_max_bytes,
    seed=config.seed,
  )
