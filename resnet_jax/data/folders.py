"""Image folders as a dataset: ``data_dir/<split>/<class>/*.jpg``, local or in cloud storage."""

from __future__ import annotations

import collections
import hashlib
import io
import logging
import os

import numpy as np
import tensorflow as tf

from resnet_jax import storage
from resnet_jax.data import source

LOG = logging.getLogger(__name__)

# What tf.io.decode_image reads; other files in class folders are counted in a start-up line.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp')


def folder(data_dir: str, split: str, *, skip_bad_images: bool = False) -> source.Source:
  """``data_dir/<split>/<class>/*.jpg|png``; classes are the sorted subfolders of ``train``.

  ``data_dir`` may be local (files read in Python by ``fetch``) or cloud storage (file paths,
  read by tf.io.read_file, i.e. gfile).
  Checked here, before any work: every class of ``split`` is a training class (else its images
  would be dropped or mislabelled) and no training class is empty. ``skip_bad_images`` decodes
  every file now and leaves out (and counts) those that do not decode; otherwise an undecodable
  file stops the run when it is met, named by ``diagnose``.
  """
  if not data_dir:
    raise source.DatasetNotFoundError(
      "dataset='folder' needs --config.data_dir=DIR with DIR/train/<class>/ and DIR/test/<class>/."
    )
  root = storage.path(data_dir)
  split_dir, class_root = root / split, root / 'train'
  if not split_dir.is_dir() or not class_root.is_dir():
    raise source.DatasetNotFoundError(
      f'No image folder {split_dir}: expected {root}/train/<class>/*.jpg and '
      f'{root}/test/<class>/*.jpg (TFDS ImageFolder layout; split names are folder names).'
    )
  classes = _class_folders(class_root)
  unknown = sorted(set(_class_folders(split_dir)) - set(classes))
  if unknown:
    raise source.DatasetError(
      f'{split_dir} has classes that {class_root} lacks: {unknown}. Labels are the train/ '
      f'folder names: add those classes to train/ or remove them from {split}/.'
    )
  paths, labels, empty, left_out = [], [], [], collections.Counter()
  for label, cls in enumerate(classes):
    files, others = _images_in(split_dir / cls)
    if not files and split == 'train':
      empty.append(cls)
    paths += files
    labels += [label] * len(files)
    left_out.update(others)
  if left_out:
    LOG.warning(
      '%s: left out %d file(s) whose extension is not an image format read here (%s); read: %s.',
      split_dir,
      left_out.total(),
      ', '.join(f'{ext or "no extension"}: {n}' for ext, n in sorted(left_out.items())),
      ' '.join(IMAGE_EXTENSIONS),
    )
  if empty:
    raise source.DatasetError(
      f'Training classes with no images ({", ".join(IMAGE_EXTENSIONS)}) under {class_root}: '
      f'{empty}. Add images or remove those folders.'
    )
  if not paths:
    raise source.DatasetNotFoundError(
      f'No images ({", ".join(IMAGE_EXTENSIONS)}) under {split_dir}.'
    )
  if skip_bad_images:
    paths, labels = _without_unreadable(paths, labels)
  paths_array = np.array(paths, dtype=object)
  labels_array = np.array(labels, dtype=np.int32)

  # Python reads a local file ~4x faster than tf.io.read_file (12 vs 52 us for a 40 KB JPEG,
  # 2026-11-30): a tenth of the one-core pipeline's time per image. Cloud paths go through gfile.
  cloud = storage.is_cloud(data_dir)

  def fetch(indices):
    if cloud:
      return paths_array[indices], labels_array[indices]
    return np.array([_read_bytes(p) for p in paths_array[indices]], object), labels_array[indices]

  def diagnose() -> str:
    bad = [p for p in paths if _unreadable(p)]
    shown = ', '.join(bad[:5]) + (f' and {len(bad) - 5} more' if len(bad) > 5 else '')
    return (
      f'unreadable image(s) in {root}: {shown}. Fix or remove them, or pass '
      f'--config.skip_bad_images=True to leave them out.'
      if bad
      else ''
    )

  return source.Source(
    f'folder:{data_dir}',
    len(paths),
    len(classes),
    True,
    fetch,
    tf.io.read_file if cloud else lambda data: data,
    None,
    tf.string,
    fingerprint=_files_fingerprint(paths),
    diagnose=diagnose,
  )


def _read_bytes(path: str) -> bytes:
  with open(path, 'rb') as f:
    return f.read()


def _visible(directory) -> list:
  """The entries of ``directory`` by name, without hidden ones (``.ipynb_checkpoints``,
  ``.DS_Store``, macOS's ``._*`` twins), which are never classes or images."""
  visible = (f for f in directory.iterdir() if not f.name.startswith('.'))
  return sorted(visible, key=lambda f: f.name)


def _class_folders(directory) -> list[str]:
  return [d.name for d in _visible(directory) if d.is_dir()]


def _images_in(directory) -> tuple[list[str], collections.Counter]:
  """The image files of a class folder, and the other files' extensions counted."""
  if not directory.is_dir():
    return [], collections.Counter()
  images, others = [], collections.Counter()
  for f in _visible(directory):
    if f.name.lower().endswith(IMAGE_EXTENSIONS):
      images.append(str(f))
    elif not f.is_dir():
      others[os.path.splitext(f.name)[1].lower()] += 1
  return images, others


def _unreadable(path: str) -> bool:
  from PIL import Image

  try:
    with Image.open(io.BytesIO(storage.path(path).read_bytes())) as image:
      image.load()
  except Exception:  # PIL raises many types for broken files
    return True
  return False


def _without_unreadable(paths, labels):
  keep = [not _unreadable(p) for p in paths]
  bad = [p for p, k in zip(paths, keep, strict=True) if not k]
  if bad:
    LOG.warning('skip_bad_images: left out %d unreadable image(s): %s', len(bad), bad[:20])
  return (
    [p for p, k in zip(paths, keep, strict=True) if k],
    [label for label, k in zip(labels, keep, strict=True) if k],
  )


def _files_fingerprint(paths: list[str]) -> str:
  """Names, sizes and modification times of every file: any edit of the folder changes it."""
  digest = hashlib.sha256()
  for path in paths:
    if storage.is_cloud(path):
      stat = storage.path(path).stat()
      size, mtime = stat.length, stat.mtime
    else:  # nanoseconds: a same-size rewrite within a second must show too
      stat = os.stat(path)
      size, mtime = stat.st_size, stat.st_mtime_ns
    digest.update(f'{path}|{size}|{mtime}\n'.encode())
  return digest.hexdigest()
