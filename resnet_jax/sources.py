"""Where examples come from: TFDS datasets, image folders, scikit-learn's digits, synthetic images.

A ``Source`` answers ``fetch(indices) -> (data, labels)`` for any example indices (random access),
which lets the input pipeline follow one global order whatever the number of processes. ``data``
is either decoded uint8 images or encoded bytes/paths (``encoded``), finished by ``load`` inside
tf.data. TFDS datasets stored only as TFRecord have no random access; they come as a ``stream``
that each process reads its own equal share of.
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import hashlib
import io
import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

from resnet_jax import storage
from resnet_jax.errors import UserError

LOG = logging.getLogger(__name__)

# What tf.io.decode_image reads; other files in class folders are counted in a start-up line.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp')
FETCH_CHUNK = 64  # Examples fetched per call into a random-access source (read in parallel).


class DatasetNotFoundError(UserError):
  """The dataset is not prepared where the config points; the message says how to prepare it."""


class DatasetError(UserError):
  """The dataset is there but wrong (classes missing or empty, files that do not decode)."""


@dataclasses.dataclass(frozen=True)
class StreamShare:
  """One process's share of a split that has no random access (TFDS stored as TFRecord).

  Attributes:
    dataset: tf.data of (data, label), in a fixed order for evaluation.
    count: examples in this share.
    max_count: the largest share of any process; evaluation pads every process up to it.
  """

  dataset: tf.data.Dataset
  count: int
  max_count: int


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
    stream: (process_index, process_count, train) -> this process's ``StreamShare``, for TFDS
      datasets without random access.
  """

  name: str
  num_examples: int
  num_classes: int
  encoded: bool
  fetch: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None
  load: Callable[[Any], Any] = lambda data: data
  stream: Callable[..., StreamShare] | None = None
  data_dtype: Any = tf.uint8
  fingerprint: str = ''  # changes whenever the examples do (keys caches such as the mean image)
  # After a decoding error: () -> a message naming the files that do not decode ('' if none).
  diagnose: Callable[[], str] | None = None

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


PHOTO_ASPECTS = (1.0, 4 / 3, 3 / 2, 3 / 4, 2 / 3)  # crop shapes, so every test bucket is used


def photos(split: str, num_examples: int, short_side_range=(64, 160)) -> Source:
  """JPEG crops of scikit-learn's two bundled 427x640 photos: an ImageNet-style smoke dataset.

  Eight classes: which photo and which quadrant of it holds the crop's centre. Crops have random
  positions, sizes (shorter side in ``short_side_range``) and aspect ratios (``PHOTO_ASPECTS``),
  so the paper's scale augmentation, JPEG window decoding and multi-scale buckets all see real
  photographs. The examples are a fixed function of ``split`` and ``num_examples``.
  """
  from PIL import Image

  if split not in ('train', 'test'):
    raise UserError(f"photos has splits 'train' and 'test', not {split!r}.")
  images = _sample_photos()
  rng = np.random.default_rng([0 if split == 'train' else 1, num_examples])
  data, labels = [], []
  for _ in range(num_examples):
    which = int(rng.integers(len(images)))
    photo = images[which]
    aspect = PHOTO_ASPECTS[rng.integers(len(PHOTO_ASPECTS))]
    short = int(rng.integers(short_side_range[0], short_side_range[1] + 1))
    h, w = (short, round(short * aspect)) if aspect >= 1 else (round(short / aspect), short)
    h, w = min(h, photo.shape[0]), min(w, photo.shape[1])
    y, x = int(rng.integers(photo.shape[0] - h + 1)), int(rng.integers(photo.shape[1] - w + 1))
    quadrant = 2 * int(y + h / 2 >= photo.shape[0] / 2) + int(x + w / 2 >= photo.shape[1] / 2)
    encoded = io.BytesIO()
    Image.fromarray(photo[y : y + h, x : x + w]).save(encoded, format='JPEG', quality=90)
    data.append(encoded.getvalue())
    labels.append(4 * which + quadrant)
  data_array = np.array(data, dtype=object)
  return _array_source('photos', data_array, np.array(labels, np.int32), 8, True)


def _sample_photos() -> list[np.ndarray]:
  from sklearn.datasets import load_sample_images

  return list(load_sample_images().images)


def folder(data_dir: str, split: str, *, skip_bad_images: bool = False) -> Source:
  """``data_dir/<split>/<class>/*.jpg|png``; classes are the sorted subfolders of ``train``.

  ``data_dir`` may be local (files read in Python by ``fetch``) or cloud storage (file paths,
  read by tf.io.read_file, i.e. gfile).
  Checked here, before any work: every class of ``split`` is a training class (else its images
  would be dropped or mislabelled) and no training class is empty. ``skip_bad_images`` decodes
  every file now and leaves out (and counts) those that do not decode; otherwise an undecodable
  file stops the run when it is met, named by ``diagnose``.
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
      f'{root}/test/<class>/*.jpg (TFDS ImageFolder layout; split names are folder names).'
    )
  classes = _class_folders(class_root)
  unknown = sorted(set(_class_folders(split_dir)) - set(classes))
  if unknown:
    raise DatasetError(
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
    raise DatasetError(
      f'Training classes with no images ({", ".join(IMAGE_EXTENSIONS)}) under {class_root}: '
      f'{empty}. Add images or remove those folders.'
    )
  if not paths:
    raise DatasetNotFoundError(f'No images ({", ".join(IMAGE_EXTENSIONS)}) under {split_dir}.')
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

  return Source(
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
    known = tfds.list_builders(with_community_datasets=False)
    close = difflib.get_close_matches(name.split(':')[0].split('/')[0], known, n=3, cutoff=0.4)
    raise DatasetNotFoundError(
      f'Unknown dataset {name!r}: not a TFDS name (closest: {", ".join(close) or "none"}) nor '
      f"one of 'folder', 'digits', 'fake'. Set --config.dataset."
    ) from e
  if builder.is_prepared():
    return builder
  if jax.process_index() == 0:
    try:
      builder.download_and_prepare()
    except Exception as e:
      raise DatasetNotFoundError(_not_prepared_message(name, data_dir, e)) from e
  multihost_utils.sync_global_devices(f'tfds_prepare_{name}')
  return tfds.builder(name, data_dir=data_dir) if jax.process_index() else builder


def tfds_source(name, data_dir, split, **kwargs) -> Source:
  """A TFDS split: in memory when small, random access when ArrayRecord, else a stream."""
  builder = _tfds_builder(name, data_dir)
  source = _tfds_split(builder, name, split, **kwargs)
  version = builder.info.version
  where = builder.data_dir
  return dataclasses.replace(
    source, fingerprint=f'tfds:{name}:{version}:{split}:{source.num_examples}:{where}'
  )


def _tfds_split(builder, name, split, *, in_memory_max_bytes: int, seed: int) -> Source:
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
      LOG.warning(
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
    return StreamShare(ds, counts[process_index], max(counts))

  return Source(name, num_examples, num_classes, True, None, stream=stream, data_dtype=tf.string)


def numpy_batches(ds: tf.data.Dataset, source: Source):
  """``ds`` as numpy; a decoding failure becomes a UserError naming the files, if it can."""
  iterator = ds.as_numpy_iterator()
  while True:
    try:
      yield next(iterator)
    except StopIteration:
      return
    except tf.errors.InvalidArgumentError as e:
      message = source.diagnose() if source.diagnose else ''
      if message:
        raise DatasetError(message) from e
      raise


def get_source(config, split: str) -> Source:
  """The source a config names for ``split``."""
  if config.dataset == 'digits':
    source = digits(split, config.digits_test_fraction)
    return dataclasses.replace(
      source, fingerprint=f'digits:{config.digits_test_fraction}:{split}:{source.num_examples}'
    )
  if config.dataset == 'photos':
    count = config.photos_num_examples[0 if split == config.train_split else 1]
    return dataclasses.replace(photos(split, count), fingerprint=f'photos:{split}:{count}')
  if config.dataset == 'folder':
    return folder(config.data_dir, split, skip_bad_images=config.skip_bad_images)
  if config.dataset == 'fake':
    size = config.fake_num_examples if split == config.train_split else config.fake_eval_examples
    return dataclasses.replace(
      fake(size, config.image_size, config.num_classes or 1000), fingerprint=f'fake:{size}'
    )
  return tfds_source(
    config.dataset,
    config.data_dir or None,
    split,
    in_memory_max_bytes=config.in_memory_max_bytes,
    seed=config.seed,
  )
