"""The per-pixel mean image of a training split (paper 3.4 and 4.2), computed once and cached.

The mean is taken over the images' centre views (shorter side ``eval_resize``, central
``image_size`` crop: the frame in which training crops and test views are normalised), over
``mean_image_examples`` training images spread evenly over the split (all when 0). It is cached
as .npy next to the data and reused; training computes it on first use. To compute it ahead:

  python -m resnet_jax.mean_image --config=configs/r50.py --config.data_dir=DIR
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
import tensorflow as tf

from resnet_jax import sources


def cache_path(config) -> str:
  if config.mean_image_path:
    return config.mean_image_path
  root = config.data_dir or os.path.expanduser('~/tensorflow_datasets')
  name = config.dataset.replace('/', '_').replace(':', '_')
  split = config.train_split.replace('[', '_').replace(']', '').replace(':', '-')
  size = f'{config.eval_resize}_{config.image_size}'
  return os.path.join(
    root, 'mean_images', f'{name}_{split}_{size}_{config.mean_image_examples}.npy'
  )


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


def load_or_compute(config, source: sources.Source | None) -> np.ndarray:
  """The cached mean image, computing (and, on process 0, caching) it when missing."""
  path = cache_path(config)
  if os.path.exists(path):
    mean = np.load(path)
    expected = (config.image_size, config.image_size, 3)
    if mean.shape != expected:
      raise ValueError(f'Mean image {path} has shape {mean.shape}, this config needs {expected}.')
    return mean
  if source is None:
    source = sources.get_source(config, config.train_split)
  logging.info('Computing the mean image of %s (%s examples)', config.dataset, source.num_examples)
  mean = compute(config, source)
  if jax.process_index() == 0:
    try:
      save(path, mean)
    except OSError as e:
      logging.warning('Could not cache the mean image at %s (%s); set mean_image_path.', path, e)
  return mean


def save(path: str, mean: np.ndarray):
  """Writes atomically: a concurrent reader sees the old file or the whole new one."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = f'{path}.tmp{os.getpid()}.npy'
  np.save(tmp, mean)
  os.replace(tmp, path)


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
