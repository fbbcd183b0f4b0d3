"""Where examples come from: TFDS datasets, image folders, scikit-learn's digits, synthetic images.

A ``Source`` answers ``fetch(indices) -> (data, labels)`` for any example indices (random access),
which lets the input pipeline follow one global order whatever the number of processes. ``data``
is either decoded uint8 images or encoded bytes/paths (``encoded``), finished by ``load`` inside
tf.data. TFDS datasets stored only as TFRecord have no random access; they come as a ``stream``
that each process reads its own equal share of.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

from resnet_jax import storage
from resnet_jax.errors import UserError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')


class DatasetNotFoundError(UserError):
  """The dataset is not prepared where the config points; the message says how to prepare it."""


@dataclasses.dataclass(frozen=True)
class Source:
  """One split of a dataset.

  Attributes:
    name: dataset name, for messages.
    num_examples: examples in the split.
    num_classes: classifier width the labels need.
    encoded: ``data`` is encoded image bytes (or file paths, see ``load``) rather than uint8 HxWx3.
    fetch: numpy indices -> (data, int32 labels); None for stream-only sources.
    load: tf function turning fetched ``data`` into what augment.py takes (reads files).
    stream: (process_index, process_count, train) -> (tf.data of (data, label), this process's
      example count, the largest count of any process), for TFDS datasets without random access.
  """

  name: str
  num_examples: int
  num_classes: int
  encoded: bool
  fetch: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None
  load: Callable[[Any], Any] = lambda data: data
  stream: Callable[..., tuple[tf.data.Dataset, int, int]] | None = None
  data_dtype: Any = tf.uint8

  def fetch_tf(self, indices):
    """``fetch`` as a tf op on a 1-D batch of indices, with static ranks for what follows."""
    data, labels = tf.numpy_function(
      self.fetch, [indices], (self.data_dtype, tf.int32), stateful=False
    )
    data.set_shape([None] if self.encoded else [None, None, None, 3])
    labels.set_shape([None])
    return data, labels


def _array_source(name, images, labels, num_classes, encoded) -> Source:
  def fetch(indices):
    return images[indices], labels[indices]

  dtype = tf.string if encoded else tf.uint8
  return Source(name, len(labels), num_classes, encoded, fetch, data_dtype=dtype)


def digits(split: str, test_fraction: float) -> Source:
  """scikit-learn's 1,797 handwritten 8x8 digits as RGB uint8, split stratified with seed 0."""
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split

  data = load_digits()
  images = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)
  images = np.repeat(images[..., None], 3, axis=-1)
  parts = train_test_split(
    images, data.target, test_size=test_fraction, stratify=data.target, random_state=0
  )
  by_split = {'train': (parts[0], parts[2]), 'test': (parts[1], parts[3])}
  if split not in by_split:
    raise UserError(f"digits has splits 'train' and 'test', not {split!r}.")
  split_images, split_labels = by_split[split]
  return _array_source('digits', split_images, split_labels.astype(np.int32), 10, False)


def folder(data_dir: str, split: str) -> Source:
  """``data_dir/<split>/<class>/*.jpg|png``; classes are the sorted subfolders of ``train``.

  ``data_dir`` may be local or cloud storage (files are read by tf.io.read_file, i.e. gfile).
  """
  if not data_dir:
    raise DatasetNotFoundError(
      "dataset='folder' needs --config.data_dir=DIR with DIR/train/<class>/ and DIR/test/<class>/."
    )
  root = storage.path(data_dir)
  split_dir, class_root = root / split, root / 'train'
  if not split_dir.is_dir() or not class_root.is_dir():
    raise DatasetNotFoundError(
      f'No image folder {split_dir}: expected {root}/train/<class>/*.jpg and '
      f'{root}/test/<class>/*.jpg (TFDS ImageFolder layout).'
    )
  classes = sorted(d.name for d in class_root.iterdir() if d.is_dir())
  paths, labels = [], []
  for label, cls in enumerate(classes):
    cls_dir = split_dir / cls
    if not cls_dir.is_dir():
      continue
    for file in sorted(cls_dir.iterdir(), key=lambda f: f.name):
      if file.name.lower().endswith(IMAGE_EXTENSIONS):
        paths.append(str(file))
        labels.append(label)
  if not paths:
    raise DatasetNotFoundError(f'No images ({", ".join(IMAGE_EXTENSIONS)}) under {split_dir!r}.')
  paths_array = np.array(paths, dtype=object)
  labels_array = np.array(labels, dtype=np.int32)

  def fetch(indices):
    return paths_array[indices], labels_array[indices]

  return Source(
    f'folder:{data_dir}', len(paths), len(classes), True, fetch, tf.io.read_file, None, tf.string
  )


def fake(num_examples: int, image_size: int, num_classes: int = 1000) -> Source:
  """Random images (a fixed pool, indexed modulo its size), for throughput measurements only."""
  pool = np.random.default_rng(0).integers(0, 256, (64, image_size, image_size, 3), np.uint8)

  def fetch(indices):
    return pool[indices % len(pool)], (indices % num_classes).astype(np.int32)

  return Source('fake', num_examples, num_classes, False, fetch)


def _not_prepared_message(name: str, data_dir: str | None, error: Exception) -> str:
  where = data_dir or '~/tensorflow_datasets'
  if name.startswith('imagenet2012'):
    return (
      f'ImageNet is not prepared under {where!r}. TFDS cannot download it: get '
      f'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from image-net.org, put them in '
      f'{where}/downloads/manual/, then run\n'
      f'  tfds build imagenet2012 --data_dir={where} --file_format=array_record\n'
      f'(array_record gives random access: the same global batch order on any number of '
      f'hosts). Then pass --config.data_dir={where}. ({error})'
    )
  return (
    f'TFDS dataset {name!r} is not prepared under {where!r} and could not be downloaded '
    f'({error}). On a machine with internet run `tfds build {name} --data_dir=DIR`, copy DIR '
    f'here and pass --config.data_dir=DIR.'
  )


def _tfds_builder(name: str, data_dir: str | None):
  """The prepared builder; preparation runs on process 0 alone while the others wait.

  Every process preparing into one shared data_dir at once would race on the same files.
  """
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # tfds raises several types for unknown names
    raise DatasetNotFoundError(f'Unknown TFDS dataset {name!r}: {e}') from e
  if builder.is_prepared():
    return builder
  if jax.process_index() == 0:
    try:
      builder.download_and_prepare()
    except Exception as e:
      raise DatasetNotFoundError(_not_prepared_message(name, data_dir, e)) from e
  multihost_utils.sync_global_devices(f'tfds_prepare_{name}')
  return tfds.builder(name, data_dir=data_dir) if jax.process_index() else builder


def tfds_source(name, data_dir, split, *, in_memory_max_bytes: int, seed: int):
  """A TFDS split: in memory when small, random access when ArrayRecord, else a stream."""
  builder = _tfds_builder(name, data_dir)
  info = builder.info
  split_info = info.splits[split]
  num_examples = split_info.num_examples
  num_classes = info.features['label'].num_classes
  image_feature = info.features['image']
  fixed_shape = None not in image_feature.shape
  decoders = None if fixed_shape else {'image': tfds.decode.SkipDecoding()}

  in_memory = split_info.num_bytes <= in_memory_max_bytes
  skip = {'image': tfds.decode.SkipDecoding()}
  if info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
    records = builder.as_data_source(split, decoders=skip)

    def fetch(indices):
      items = records.__getitems__(list(indices))
      data = np.array([item['image'] for item in items], dtype=object)
      return data, np.array([item['label'] for item in items], dtype=np.int32)

    if in_memory:  # encoded bytes in host memory, decoded on use
      return _array_source(name, *fetch(np.arange(num_examples)), num_classes, True)
    return Source(name, num_examples, num_classes, True, fetch, data_dtype=tf.string)

  if in_memory:
    data = tfds.as_numpy(builder.as_dataset(split, batch_size=-1, decoders=decoders))
    images = data['image'] if fixed_shape else np.array(list(data['image']), dtype=object)
    if fixed_shape and images.shape[-1] == 1:
      images = np.repeat(images, 3, axis=-1)
    labels = data['label'].astype(np.int32)
    return _array_source(name, images, labels, num_classes, not fixed_shape)

  def stream(process_index: int, process_count: int, train: bool):
    # Training drops the remainder so every process runs the same number of steps; evaluation
    # keeps every example and the pipeline pads each process up to the largest share.
    shards = tfds.even_splits(split, n=process_count, drop_remainder=train)
    counts = [info.splits[shard].num_examples for shard in shards]
    if train and process_index == 0:
      logging.warning(
        '%s is stored as TFRecord (no random access): each of the %d processes reads its own '
        'shard of %d examples, so batches depend on the process count and %d examples are left '
        'out. Prepare it with --file_format=array_record for one global order.',
        name,
        process_count,
        counts[0],
        num_examples - sum(counts),
      )
    read_config = tfds.ReadConfig(shuffle_seed=seed + process_index)
    ds = builder.as_dataset(
      shards[process_index], decoders=skip, shuffle_files=train, read_config=read_config
    )
    ds = ds.map(lambda x: (x['image'], tf.cast(x['label'], tf.int32)))
    return ds, counts[process_index], max(counts)

  return Source(name, num_examples, num_classes, True, None, stream=stream, data_dtype=tf.string)


def get_source(config, split: str) -> Source:
  """The source a config names for ``split``."""
  if config.dataset == 'digits':
    return digits(split, config.digits_test_fraction)
  if config.dataset == 'folder':
    return folder(config.data_dir, split)
  if config.dataset == 'fake':
    size = config.fake_num_examples if split == config.train_split else config.fake_eval_examples
    return fake(size, config.image_size, config.num_classes or 1000)
  return tfds_source(
    config.dataset,
    config.data_dir or None,
    split,
    in_memory_max_bytes=config.in_memory_max_bytes,
    seed=config.seed,
  )
