"""The per-pixel mean image of a training split (paper 3.4 and 4.2), computed once and cached.

The mean is taken over the images' centre views (shorter side ``eval_resize``, central
``image_size`` crop: the frame in which training crops and test views are normalised), over
``mean_image_examples`` training images spread evenly over the split (all when 0). It is cached
as .npy next to the data and reused; training computes it on first use. To compute it ahead:

  python -m resnet_jax.mean_image --config=configs/r50.py --config.data_dir=DIR
"""

from __future__ import annotations

import io
import logging

import jax
import numpy as np
import tensorflow as tf
from etils import epath
from jax.experimental import multihost_utils

from resnet_jax import sources, storage
from resnet_jax.errors import UserError


def cache_path(config) -> epath.Path:
  if config.mean_image_path:
    return storage.path(config.mean_image_path)
  root = storage.path(config.data_dir or '~/tensorflow_datasets')
  name = config.dataset.replace('/', '_').replace(':', '_')
  split = config.train_split.replace('[', '_').replace(']', '').replace(':', '-')
  size = f'{config.eval_resize}_{config.image_size}'
  return root / 'mean_images' / f'{name}_{split}_{size}_{config.mean_image_examples}.npy'


def compute(config, source: sources.Source, batch: int = 256) -> np.ndarray:
  """Mean of the centre views of the chosen training images, float32 [size, size, 3] in 0..255."""
  from resnet_jax.input_pipeline import base_view  # the canonical frame lives with the pipeline

  limit = source.num_examples if not config.mean_image_examples else config.mean_image_examples
  limit = min(limit, source.num_examples)
  if source.fetch is not None:
    indices = np.linspace(0, source.num_examples - 1, limit).round().astype(np.int64)
    ds = tf.data.Dataset.from_tensor_slices(indices).batch(batch)
    ds = ds.map(lambda i: source.fetch_tf(i)[0]).unbatch()
  else:
    ds, _, _ = source.stream(0, 1, train=False)
    ds = ds.map(lambda data, label: data).take(limit)
  ds = ds.map(
    lambda data: base_view(source.load(data), source.encoded, config),
    num_parallel_calls=tf.data.AUTOTUNE,
  ).batch(batch)
  total = np.zeros((config.image_size, config.image_size, 3), np.float64)
  count = 0
  for views in ds.as_numpy_iterator():
    total += views.sum(axis=0, dtype=np.float64)
    count += len(views)
  return (total / count).astype(np.float32)


def _load(path: epath.Path, config) -> np.ndarray:
  mean = np.load(io.BytesIO(path.read_bytes()))
  expected = (config.image_size, config.image_size, 3)
  if mean.shape != expected:
    raise UserError(
      f'Mean image {path} has shape {mean.shape}, this config needs {expected}: delete it or '
      f'set --config.mean_image_path to another file.'
    )
  return mean


def load_or_compute(config, source: sources.Source | None) -> np.ndarray:
  """The cached mean image; when missing, process 0 computes and caches it for every process.

  The other processes wait and read process 0's file (one pass over the data, not one per host);
  if process 0 could not write it (a read-only data_dir), each computes its own.
  """
  path = cache_path(config)
  if _exists_on_process_0(path):
    return _load(path, config)
  if jax.process_index() == 0:
    mean = _compute_and_cache(config, source, path)
  multihost_utils.sync_global_devices('mean_image_cached')
  if jax.process_index() == 0:
    return mean
  if path.exists():
    return _load(path, config)
  return compute(config, source or sources.get_source(config, config.train_split))


def _exists_on_process_0(path: epath.Path) -> bool:
  """One answer for all processes: each asking on its own could race process 0's write."""
  exists = path.exists() if jax.process_index() == 0 else False
  if jax.process_count() == 1:
    return exists
  return bool(multihost_utils.broadcast_one_to_all(np.int32(exists)))


def _compute_and_cache(config, source, path: epath.Path) -> np.ndarray:
  if source is None:
    source = sources.get_source(config, config.train_split)
  logging.info('Computing the mean image of %s (%s examples)', config.dataset, source.num_examples)
  mean = compute(config, source)
  try:
    save(path, mean)
  except OSError as e:
    logging.warning('Could not cache the mean image at %s (%s); set mean_image_path.', path, e)
  return mean


def save(path: epath.Path, mean: np.ndarray):
  """Writes atomically: a concurrent reader sees the old file or the whole new one."""
  buffer = io.BytesIO()
  np.save(buffer, mean)
  storage.write_bytes_atomic(path, buffer.getvalue())


def main(argv):
  del argv
  config = FLAGS.config
  source = sources.get_source(config, config.train_split)
  mean = compute(config, source)
  path = cache_path(config)
  save(path, mean)
  print(f'Mean image of {config.dataset} {config.train_split}: {mean.mean((0, 1))} -> {path}')


if __name__ == '__main__':
  from absl import app, flags
  from ml_collections import config_flags

  FLAGS = flags.FLAGS
  config_flags.DEFINE_config_file('config', None, 'Training config file.', lock_config=True)
  app.run(main)
