"""TFDS datasets as a ``Source``: prepared on process 0, read in memory, by index (ArrayRecord) or
as per-process streams (TFRecord)."""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import shutil
import socket
import urllib.parse
import urllib.request

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

from resnet_jax import storage
from resnet_jax.data import source

LOG = logging.getLogger(__name__)


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


PROBE_TIMEOUT_SECONDS = 5  # TFDS itself retries an unreachable host for minutes


def _require_download_hosts(builder):
  """Fails in seconds when a host the dataset downloads from cannot be reached (directly, or
  through the proxy the environment names), instead of TFDS's minutes of retries."""
  if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
    return  # read from downloads/manual/: TFDS says at once what is missing
  reached = set()
  for url in sorted(builder.url_infos or {}):
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname):
      parts = urllib.parse.urlsplit(proxy if '://' in proxy else f'http://{proxy}')
    host = (parts.hostname, parts.port or (443 if parts.scheme == 'https' else 80))
    if host in reached:
      continue
    try:
      socket.create_connection(host, timeout=PROBE_TIMEOUT_SECONDS).close()
    except OSError as e:
      raise OSError(f'cannot reach {host[0]}:{host[1]} to download {url}: {e}') from None
    reached.add(host)


def _folders_prepare_may_make(builder) -> list[str]:
  """The folders a preparation creates that do not exist yet (the data dir, or the outermost
  missing folder above it; the dataset's folder; downloads/): what a failed one removes again."""
  root = os.path.dirname(os.path.dirname(str(builder.data_dir)))  # DATA_DIR/NAME/VERSION
  if builder.builder_config is not None:  # DATA_DIR/NAME/CONFIG/VERSION
    root = os.path.dirname(root)
  if storage.is_cloud(root):
    return []
  outermost = root
  while not os.path.exists(os.path.dirname(outermost)):
    outermost = os.path.dirname(outermost)
  folders = [outermost, os.path.join(root, builder.name), os.path.join(root, 'downloads')]
  return [f for f in folders if not os.path.exists(f)]


def _tfds_builder(name: str, data_dir: str | None):
  """The prepared builder; preparation runs on process 0 alone while the others wait.

  Every process preparing into one shared data_dir at once would race on the same files.
  """
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # tfds raises several types for unknown names
    known = tfds.list_builders(with_community_datasets=False)
    close = difflib.get_close_matches(name.split(':')[0].split('/')[0], known, n=3, cutoff=0.4)
    raise source.DatasetNotFoundError(
      f'Unknown dataset {name!r}: not a TFDS name (closest: {", ".join(close) or "none"}) nor '
      f"one of 'folder', 'digits', 'fake'. Set --config.dataset."
    ) from e
  if builder.is_prepared():
    return builder
  if jax.process_index() == 0:
    made = _folders_prepare_may_make(builder)
    try:
      _require_download_hosts(builder)
      builder.download_and_prepare()
    except Exception as e:
      for folder in made:  # leaves no empty or half-written dataset folder behind
        shutil.rmtree(folder, ignore_errors=True)
      raise source.DatasetNotFoundError(_not_prepared_message(name, data_dir, e)) from e
  multihost_utils.sync_global_devices(f'tfds_prepare_{name}')
  return tfds.builder(name, data_dir=data_dir) if jax.process_index() else builder


def tfds_source(name, data_dir, split, **kwargs) -> source.Source:
  """A TFDS split: in memory when small, random access when ArrayRecord, else a stream."""
  builder = _tfds_builder(name, data_dir)
  split_source = _tfds_split(builder, name, split, **kwargs)
  version = builder.info.version
  where = builder.data_dir
  return dataclasses.replace(
    split_source,
    fingerprint=f'tfds:{name}:{version}:{split}:{split_source.num_examples}:{where}',
  )


def _tfds_split(builder, name, split, *, in_memory_max_bytes: int, seed: int) -> source.Source:
  info = builder.info
  split_info = info.splits[split]
  num_examples = split_info.num_examples
  # ReaL (imagenet2012_real) has a set of labels per image, 'real_label', and no 'label'.
  key = 'real_label' if 'real_label' in info.features else 'label'
  if key not in info.features:
    raise source.DatasetError(
      f'TFDS dataset {name!r} has no label feature (it has {", ".join(info.features)}).'
    )
  feature = info.features[key]
  multi_label = key == 'real_label'
  num_classes = (feature.feature if multi_label else feature).num_classes
  labels_of = source.label_sets if multi_label else lambda ls: np.asarray(ls, np.int32)
  width = source.LABEL_SET_WIDTH if multi_label else 0
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
      return data, labels_of([item[key] for item in items])

    if in_memory:  # encoded bytes in host memory, decoded on use
      return source.array_source(name, *fetch(np.arange(num_examples)), num_classes, True)
    return source.Source(
      name, num_examples, num_classes, True, fetch, data_dtype=tf.string, label_width=width
    )

  if in_memory and multi_label:  # label sets are ragged: read example by example
    examples = list(tfds.as_numpy(builder.as_dataset(split, decoders=skip)))
    images = np.array([x['image'] for x in examples], dtype=object)
    labels = labels_of([x[key] for x in examples])
    return source.array_source(name, images, labels, num_classes, True)
  if in_memory:
    data = tfds.as_numpy(builder.as_dataset(split, batch_size=-1, decoders=decoders))
    images = data['image'] if fixed_shape else np.array(list(data['image']), dtype=object)
    if fixed_shape and images.shape[-1] == 1:
      images = np.repeat(images, 3, axis=-1)
    labels = data['label'].astype(np.int32)
    return source.array_source(name, images, labels, num_classes, not fixed_shape)

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
    label = _padded_labels if multi_label else lambda x: tf.cast(x, tf.int32)
    ds = ds.map(lambda x: (x['image'], label(x[key])))
    return source.StreamShare(ds, counts[process_index], max(counts))

  return source.Source(
    name,
    num_examples,
    num_classes,
    True,
    None,
    stream=stream,
    data_dtype=tf.string,
    label_width=width,
  )


def _padded_labels(labels):
  """A label set as int32 [LABEL_SET_WIDTH], padded with -1 (``source.label_sets`` in tf)."""
  width = source.LABEL_SET_WIDTH
  check = tf.debugging.assert_less_equal(
    tf.size(labels), width, message=f'An example has more than {width} labels.'
  )
  with tf.control_dependencies([check]):
    labels = tf.cast(labels, tf.int32)
    padded = tf.pad(labels, [[0, width - tf.size(labels)]], constant_values=-1)
  return tf.ensure_shape(padded, [width])
