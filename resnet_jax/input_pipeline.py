"""Source -> this process's slice of each global batch -> augment -> global device arrays.

Order is global: global batch ``b`` of epoch ``e`` holds the examples ``perm(seed, e)[b*G:(b+1)*G]``
and process ``p`` of ``P`` reads only rows ``[p*G/P, (p+1)*G/P)`` of it, with per-example random
seeds from the example's global position. So the sequence of global batches depends on the seed
and the global batch size alone: 1 host and 64 hosts train on the same batches, and a resumed run
continues the stream exactly. Evaluation pads the last batch and carries a mask, so every example
of the split is counted exactly once.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import numpy as np
import tensorflow as tf

from resnet_jax import augment, multiscale
from resnet_jax.sources import FETCH_CHUNK, Source

# Stream-only sources: process p seeds its examples' augmentation from p * this, so processes
# never share seeds (no process reads 2**40 examples).
PROCESS_SEED_STRIDE = 1 << 40


@dataclasses.dataclass(frozen=True)
class Layout:
  """How a global batch is split over processes."""

  global_batch: int
  process_index: int
  process_count: int

  @property
  def local_batch(self) -> int:
    return self.global_batch // self.process_count

  @classmethod
  def current(cls, global_batch: int) -> Layout:
    return cls(global_batch, jax.process_index(), jax.process_count())


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def train_index_batches(num_examples: int, layout: Layout, seed: int, start_step: int = 0):
  """This process's rows of every global batch from ``start_step`` on: (indices, counters).

  ``counters`` are the examples' global positions in the stream (step * G + row); they seed the
  augmentation, so an example looks the same whichever process reads it.
  """
  g, lb = layout.global_batch, layout.local_batch
  steps_per_epoch = num_examples // g
  if steps_per_epoch == 0:
    raise ValueError(f'batch_size={g} exceeds the {num_examples} training examples.')
  rows = np.arange(layout.process_index * lb, (layout.process_index + 1) * lb)
  step, cached_epoch, perm = start_step, None, None
  while True:
    epoch, batch = divmod(step, steps_per_epoch)
    if epoch != cached_epoch:
      perm, cached_epoch = epoch_permutation(num_examples, seed, epoch), epoch
    yield perm[batch * g + rows], step * g + rows
    step += 1


def eval_index_batches(num_examples: int, layout: Layout):
  """This process's rows of each padded global eval batch: (indices, mask)."""
  g, lb = layout.global_batch, layout.local_batch
  rows = np.arange(layout.process_index * lb, (layout.process_index + 1) * lb)
  for step in range(math.ceil(num_examples / g)):
    positions = step * g + rows
    yield np.where(positions < num_examples, positions, 0), positions < num_examples


class Normalizer:
  """The paper's per-pixel mean subtraction, or per-channel mean/std.

  Constants are kept at the full image_size x image_size x 3 shape: tf's broadcast of a
  3-vector over an image is ~10x slower than a same-shape elementwise op, enough to halve the
  pipeline's throughput. Other shapes (multi-scale views) take the broadcasting path.
  """

  def __init__(self, config, mean: np.ndarray | None = None):
    self.mode = config.normalization
    full = (config.image_size, config.image_size, 3)
    if self.mode == 'pixel_mean':
      if mean is None:
        raise ValueError("normalization='pixel_mean' needs the training split's mean image.")
      self.mean, self.inv_std = tf.constant(mean, tf.float32), None
    elif self.mode == 'channel_mean_std':
      channel_mean = np.asarray(config.channel_mean, np.float32)
      inv_std = 1.0 / np.asarray(config.channel_std, np.float32)
      self.mean = tf.constant(np.broadcast_to(channel_mean, full))
      self.inv_std = tf.constant(np.broadcast_to(inv_std, full))
    elif self.mode != 'none':
      raise ValueError("normalization must be 'pixel_mean', 'channel_mean_std' or 'none'.")

  def __call__(self, image):
    if self.mode == 'none':
      return image
    if self.mode == 'pixel_mean':
      if image.shape[:2] == self.mean.shape[:2]:
        return image - self.mean
      return image - tf.image.resize(self.mean, tf.shape(image)[:2])
    if image.shape[:2] == self.mean.shape[:2]:
      return (image - self.mean) * self.inv_std
    return (image - self.mean[0, 0]) * self.inv_std[0, 0]


def center_view(data, encoded, config):
  """Shorter side to eval_resize, central image_size crop (also the frame of the mean image)."""
  return augment.center_view(data, encoded, resize=config.eval_resize, crop=config.image_size)


def train_example(data, label, counter, *, config, encoded, normalize):
  """One augmented training example, seeded by its global position."""
  seed = tf.stack([tf.cast(config.seed, tf.int64), tf.cast(counter, tf.int64)])
  seeds = tf.random.experimental.stateless_split(seed, 4)
  size, kind = config.image_size, config.train_augment
  if kind == 'scale':
    image = augment.scale_crop(data, encoded, seeds[0], crop=size, scale_range=config.scale_range)
  elif kind == 'inception':
    image = augment.inception_crop(
      data,
      encoded,
      seeds[0],
      crop=size,
      area_range=config.area_range,
      aspect_range=config.aspect_range,
    )
  elif kind in ('pad_crop', 'none'):
    image = center_view(data, encoded, config)
  else:
    raise ValueError("train_augment must be 'scale', 'inception', 'pad_crop' or 'none'.")
  if config.lighting_std > 0 and kind != 'none':
    image = augment.lighting(image, seeds[1], std=config.lighting_std)
  image = normalize(image)
  if kind == 'pad_crop':  # Padding is zeros of the normalised image, as in the paper's CIFAR.
    image = augment.pad_crop(image, seeds[2], crop=size, pad=config.pad)
  if config.random_flip and kind != 'none':
    image = augment.random_flip(image, seeds[3])
  return {'image': image, 'label': label}


def eval_example(data, label, mask, *, config, encoded, normalize):
  """The test view(s) of one example per ``config.eval_mode``."""
  out = {'label': label, 'mask': mask}
  mode = config.eval_mode
  if mode == 'center':
    out['image'] = normalize(center_view(data, encoded, config))
  elif mode == '10crop':
    resized = augment.resize_short_side(data, encoded, config.eval_resize)
    out['image'] = augment.ten_crop_views(resized, crop=config.image_size, normalize=normalize)
  else:
    raise ValueError(f"eval_mode must be 'center' or '10crop' here, got {mode!r}.")
  return out


def _fetch_and_map(index_batches, extra_dtype, source: Source, layout: Layout, example_fn, config):
  """Index batches -> fetched data (parallel chunks) -> per-example map -> local batches."""
  parallel = config.num_parallel_calls if config.num_parallel_calls > 0 else tf.data.AUTOTUNE
  lb = layout.local_batch
  ds = tf.data.Dataset.from_generator(
    index_batches,
    output_signature=(
      tf.TensorSpec([lb], tf.int64),
      tf.TensorSpec([lb], extra_dtype),
    ),
  )

  ds = ds.unbatch().batch(min(FETCH_CHUNK, lb))
  ds = ds.map(lambda i, extra: (*source.fetch_tf(i), extra), num_parallel_calls=parallel)
  ds = ds.unbatch().map(
    lambda data, label, extra: example_fn(source.load(data), label, extra),
    num_parallel_calls=parallel,
  )
  return ds.batch(lb, drop_remainder=True).prefetch(config.prefetch_batches)


def train_dataset(
  config, source: Source, layout: Layout, start_step: int = 0, mean: np.ndarray | None = None
) -> tf.data.Dataset:
  """This process's local training batches, from ``start_step`` on, forever."""
  normalize = Normalizer(config, mean)
  example_fn = functools.partial(
    train_example, config=config, encoded=source.encoded, normalize=normalize
  )
  if source.fetch is not None:
    batches = lambda: train_index_batches(  # noqa: E731
      source.num_examples, layout, config.seed, start_step
    )
    return _fetch_and_map(batches, tf.int64, source, layout, example_fn, config)

  ds = source.stream(layout.process_index, layout.process_count, train=True).dataset
  ds = ds.shuffle(config.shuffle_buffer, seed=config.seed, reshuffle_each_iteration=True).repeat()
  ds = ds.skip(start_step * layout.local_batch).enumerate(start_step * layout.local_batch)
  offset = layout.process_index * PROCESS_SEED_STRIDE
  ds = ds.map(lambda i, x: example_fn(x[0], x[1], i + offset), num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(layout.local_batch, drop_remainder=True).prefetch(config.prefetch_batches)


def train_steps_per_epoch(source: Source, layout: Layout) -> int:
  if source.fetch is not None:
    return source.num_examples // layout.global_batch
  per_process = source.stream(layout.process_index, layout.process_count, train=True).count
  return per_process // layout.local_batch


def eval_dataset(
  config, source: Source, layout: Layout, mean: np.ndarray | None = None
) -> tuple[tf.data.Dataset, int]:
  """This process's local eval batches (with 'mask') and their number, equal on all processes."""
  normalize = Normalizer(config, mean)  # the mean image is the training split's
  if config.eval_mode == 'multiscale':  # batches of one shape each, bucket by bucket
    return multiscale.eval_dataset(config, source, layout, normalize)
  example_fn = functools.partial(
    eval_example, config=config, encoded=source.encoded, normalize=normalize
  )
  if source.fetch is not None:
    steps = math.ceil(source.num_examples / layout.global_batch)
    batches = lambda: eval_index_batches(source.num_examples, layout)  # noqa: E731
    return _fetch_and_map(batches, tf.bool, source, layout, example_fn, config), steps

  share = source.stream(layout.process_index, layout.process_count, train=False)
  ds, max_count = share.dataset, share.max_count
  steps = math.ceil(max_count / layout.local_batch)
  real = ds.map(lambda d, label: (d, label, True))
  padding = ds.take(1).repeat().map(lambda d, label: (d, label, False))
  ds = real.concatenate(padding).take(steps * layout.local_batch)
  ds = ds.map(example_fn, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(layout.local_batch).prefetch(config.prefetch_batches), steps
