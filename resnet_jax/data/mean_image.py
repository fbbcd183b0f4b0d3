"""The per-pixel mean image of a training split (paper 3.4 and 4.2), computed once and cached.

The mean is taken over the images' centre views (shorter side ``eval_resize``, central
``image_size`` crop: the frame in which training crops and test views are normalised), over
``mean_image_examples`` training images spread evenly over the split (all when 0). It is cached
(.npz, with a key of the content it was computed from: the source's fingerprint and the view
geometry) next to the data, and reused only for the same content; training computes it on
first use; ``python -m resnet_jax.mean_image`` computes it ahead.
"""

from __future__ import annotations

import hashlib
import io
import logging

import jax
import numpy as np
import tensorflow as tf
from etils import epath
from jax.experimental import multihost_utils

from resnet_jax import storage
from resnet_jax.data import augment, sources
from resnet_jax.data.source import Source, numpy_batches
from resnet_jax.errors import UserError

LOG = logging.getLogger(__name__)


def content_key(config, source: Source) -> str:
  """What the mean depends on: the examples (the source's fingerprint) and the view geometry."""
  parts = [source.fingerprint, config.eval_resize, config.image_size, config.mean_image_examples]
  return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def cache_path(config, key: str) -> epath.Path:
  """``mean_image_path`` if set, else a file under data_dir named by the content key."""
  if config.mean_image_path:
    return storage.path(config.mean_image_path)
  root = storage.path(config.data_dir or '~/tensorflow_datasets')
  name = config.dataset.replace('/', '_').replace(':', '_')
  split = config.train_split.replace('[', '_').replace(']', '').replace(':', '-')
  size = f'{config.eval_resize}_{config.image_size}'
  return root / 'mean_images' / f'{name}_{split}_{size}_{config.mean_image_examples}_{key}.npz'


def compute(config, source: Source, batch: int = 256) -> np.ndarray:
  """Mean of the centre views of the chosen training images, float32 [size, size, 3] in 0..255."""
  limit = source.num_examples if not config.mean_image_examples else config.mean_image_examples
  limit = min(limit, source.num_examples)
  if source.fetch is not None:
    indices = np.linspace(0, source.num_examples - 1, limit).round().astype(np.int64)
    ds = tf.data.Dataset.from_tensor_slices(indices).batch(batch)
    ds = ds.map(lambda i: source.fetch_tf(i)[0]).unbatch()
  else:
    ds = source.stream(0, 1, train=False).dataset
    ds = ds.map(lambda data, label: data).take(limit)
  ds = ds.map(
    lambda data: augment.center_view(  # the frame of input_pipeline.center_view
      source.load(data), source.encoded, resize=config.eval_resize, crop=config.image_size
    ),
    num_parallel_calls=tf.data.AUTOTUNE,
  ).batch(batch)
  total = np.zeros((config.image_size, config.image_size, 3), np.float64)
  count = 0
  for views in numpy_batches(ds, source):
    total += views.sum(axis=0, dtype=np.float64)
    count += len(views)
  return (total / count).astype(np.float32)


def _load(path: epath.Path, key: str, config) -> np.ndarray | None:
  """The cached mean if it was computed from the same content, else None (stale or foreign)."""
  try:
    stored = np.load(io.BytesIO(path.read_bytes()))
  except (OSError, ValueError) as e:
    LOG.warning('Mean image cache %s is unreadable (%s); recomputing it.', path, e)
    return None
  if not isinstance(stored, np.lib.npyio.NpzFile) or str(stored.get('key', '')) != key:
    LOG.warning('Mean image cache %s was computed from other data; recomputing it.', path)
    return None
  mean = stored['mean']
  expected = (config.image_size, config.image_size, 3)
  if mean.shape != expected:
    raise UserError(
      f'Mean image {path} has shape {mean.shape}, this config needs {expected}: delete it or '
      f'set --config.mean_image_path to another file.'
    )
  return mean


def load_or_compute(config, source: Source | None = None) -> np.ndarray:
  """The cached mean image of this content; else process 0 computes and caches it for all.

  The other processes wait and read process 0's file (one pass over the data, not one per host);
  if process 0 could not write it (a read-only data_dir), each computes its own.
  """
  source = source or sources.get_source(config, config.train_split)
  key = content_key(config, source)
  path = cache_path(config, key)
  cached = _load_on_every_process(path, key, config)
  if cached is not None:
    return cached
  if jax.process_index() == 0:
    mean = _compute_and_cache(config, source, path, key)
  multihost_utils.sync_global_devices('mean_image_cached')
  if jax.process_index() == 0:
    return mean
  cached = _load(path, key, config) if path.exists() else None
  return cached if cached is not None else compute(config, source)


def _load_on_every_process(path: epath.Path, key: str, config) -> np.ndarray | None:
  """One verdict for all processes: each deciding alone could race process 0's write."""
  mean = _load(path, key, config) if jax.process_index() == 0 and path.exists() else None
  if jax.process_count() == 1:
    return mean
  if not multihost_utils.broadcast_one_to_all(np.int32(mean is not None)):
    return None
  return mean if mean is not None else _load(path, key, config)


def _compute_and_cache(config, source, path: epath.Path, key: str) -> np.ndarray:
  LOG.info('Computing the mean image of %s (%s examples)', config.dataset, source.num_examples)
  mean = compute(config, source)
  try:
    save(path, mean, key)
  except OSError as e:
    LOG.warning('Could not cache the mean image at %s (%s); set mean_image_path.', path, e)
  return mean


def save(path: epath.Path, mean: np.ndarray, key: str):
  """Writes mean and content key atomically: a reader sees the old file or the whole new one."""
  buffer = io.BytesIO()
  np.savez(buffer, mean=mean, key=np.array(key))
  storage.write_bytes_atomic(path, buffer.getvalue())
