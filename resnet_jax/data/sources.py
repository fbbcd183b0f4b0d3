"""The ``Source`` a config names: a TFDS dataset, an image folder, or a bundled dataset (digits,
photos, fake)."""

from __future__ import annotations

import dataclasses

from resnet_jax.data import bundled, folders, source, tfds_source


def get_source(config, split: str) -> source.Source:
  """The source a config names for ``split``."""
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
