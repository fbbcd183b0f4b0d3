"""Source -> this process's slice of each global batch -> augment -> global device arrays.

Order is global: global batch ``b`` of epoch ``e`` holds the examples ``perm(seed, e)[b*G:(b+1)*G]``
and process ``p`` of ``P`` reads only rows ``[p*G/P, (p+1)*G/P)`` of it; each example's random
draws are a function of the run seed and its global position (``draws``). So the sequence of
global batches depends on the seed and the global batch size alone: 1 host and 64 hosts train on
the same batches, and a resumed run continues the stream exactly. Training batches are uint8 crops
with their pixel draws (``pixel_ops='device'``, finished by ``device_pixels`` in the train step)
or finished float32 images (``'host'``). Evaluation pads the last batch and carries a mask, so
every example of the split is counted exactly once.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import numpy as np
import tensorflow as tf

from resnet_jax.data import (
  augment,
  auto_augment,
  device_pixels,
  draws,
  multiscale,
  policy_kernel,
  policy_ops,
)
from resnet_jax.data.source import FETCH_CHUNK, DatasetError, Source

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


def train_index_batches(
  num_examples: int, layout: Layout, seed: int, start_step: int = 0, repeats: int = 1
):
  """This process's rows of every global batch from ``start_step`` on: (indices, counters).

  ``counters`` are the examples' global positions in the stream (step * G + row); they seed the
  augmentation, so an example looks the same whichever process reads it.

  Repeated augmentation (Hoffer et al. 2020; timm's RepeatAugSampler, torchvision's RASampler):
  with ``repeats`` k, global batch b holds the m = ceil(G / k) examples ``perm[b*m:(b+1)*m]``,
  each at rows j, m + j, 2m + j, ... below G (spread over the devices, as those samplers deal
  copies to different GPUs): k copies each, or k - 1 for the last ones when k does not divide G
  ("ResNet strikes back": 3 at 2,048). Each copy has its own draws. An epoch keeps its number of
  steps, so it sees about 1 / k of the examples.
  """
  g, lb = layout.global_batch, layout.local_batch
  steps_per_epoch = num_examples // g
  if steps_per_epoch == 0:
    raise ValueError(f'batch_size={g} exceeds the {num_examples} training examples.')
  distinct = -(-g // repeats)
  rows = np.arange(layout.process_index * lb, (layout.process_index + 1) * lb)
  step, cached_epoch, perm = start_step, None, None
  while True:
    epoch, batch = divmod(step, steps_per_epoch)
    if epoch != cached_epoch:
      perm, cached_epoch = epoch_permutation(num_examples, seed, epoch), epoch
    yield perm[batch * distinct + rows % distinct], step * g + rows
    step += 1


def eval_index_batches(num_examples: int, layout: Layout):
  """This process's rows of each padded global eval batch: (indices, mask)."""
  g, lb = layout.global_batch, layout.local_batch
  rows = np.arange(layout.process_index * lb, (layout.process_index + 1) * lb)
  for step in range(math.ceil(num_examples / g)):
    positions = step * g + rows
    yield np.where(positions < num_examples, positions, 0), positions < num_examples


class Normalizer:
  """The paper's per-pixel mean subtraction, or per-channel mean/std, in tf.data.

  The constants are ``device_pixels.normalization``'s, so both places normalise alike.

  Channel constants are kept at the full image_size x image_size x 3 shape: tf's broadcast of a
  3-vector over an image is ~10x slower than a same-shape elementwise op, enough to halve the
  pipeline's throughput. Other shapes (multi-scale views) take the broadcasting path.
  """

  def __init__(self, config, mean: np.ndarray | None = None):
    subtract, multiply = device_pixels.normalization(config, mean)
    full = (config.image_size, config.image_size, 3)
    self.mean = self.inv_std = None
    if subtract is not None:
      self.mean = tf.constant(np.broadcast_to(subtract, full) if subtract.ndim == 1 else subtract)
    if multiply is not None:
      self.inv_std = tf.constant(np.broadcast_to(multiply, full))

  def __call__(self, image):
    if self.mean is None:
      return image
    full = image.shape[:2] == self.mean.shape[:2]
    if full:
      image = image - self.mean
    elif self.inv_std is None:  # a mean image, at another size
      image = image - tf.image.resize(self.mean, tf.shape(image)[:2])
    else:
      image = image - self.mean[0, 0]
    if self.inv_std is not None:
      image = image * (self.inv_std if full else self.inv_std[0, 0])
    return image


def center_view(data, encoded, config):
  """Shorter side to eval_resize, central image_size crop (also the frame of the mean image)."""
  return augment.center_view(data, encoded, resize=config.eval_resize, crop=config.image_size)


def train_example(data, label, drawn, *, config, encoded, normalize):
  """One augmented training example from what it drew (``draws.for_examples``).

  With pixel_ops='device' the crop goes out as uint8 with the draws the train step applies
  (device_pixels.PixelOps); otherwise lit, normalised, padded and flipped here, as float32.
  """
  size, kind = config.image_size, config.train_augment
  if kind == 'scale':
    bits = drawn['crop']
    image = augment.scale_crop(data, encoded, bits, crop=size, scale_range=config.scale_range)
  elif kind == 'inception':
    image = augment.inception_crop(
      data,
      encoded,
      drawn['crop'][:2],
      crop=size,
      area_range=config.area_range,
      aspect_range=config.aspect_range,
    )
  elif kind in ('pad_crop', 'none'):
    image = center_view(data, encoded, config)
  else:
    raise ValueError("train_augment must be 'scale', 'inception', 'pad_crop' or 'none'.")
  if config.augment_policy != 'none':  # on the uint8 crop, as torchvision on a PIL image
    ops = {k: drawn[f'policy_{k}'] for k in ('op', 'magnitude', 'matrix', 'resample')}
    fill, filters = auto_augment.fill(config), auto_augment.filters(config)
    if policy_kernel.enabled(config.policy_kernel):
      image = policy_kernel.apply(augment.to_uint8(image), ops, fill)
    else:
      image = policy_ops.apply(augment.to_uint8(image), ops, fill, filters)
  if config.pixel_ops == 'device':
    pixel_draws = {name: drawn[name] for name in device_pixels.DRAWS}
    return {'image': augment.to_uint8(image), 'label': label, **pixel_draws}
  image = tf.cast(image, tf.float32)
  used = draws.pixel_draws(config)
  if used.lighting:
    image = augment.add_per_channel(image, drawn['lighting'])
  image = normalize(image)
  if used.pad:  # Padding is zeros of the normalised image, as in the paper's CIFAR.
    image = augment.pad_crop(image, drawn['shift'], crop=size, pad=used.pad)
  if used.flip:
    image = augment.flip_if(image, drawn['flip'])
  if used.erasing:
    image = augment.erase(image, drawn['erase'])
  return {'image': image, 'label': label}


def eval_example(data, label, mask, *, config, encoded, normalize):
  """The test view(s) of one example per ``config.eval_mode``, ``eval_image_size`` crops."""
  out = {'label': label, 'mask': mask}
  mode, crop = config.eval_mode, config.eval_image_size or config.image_size
  if mode == 'center':
    view = augment.center_view(data, encoded, resize=config.eval_resize, crop=crop)
    out['image'] = normalize(view)
  elif mode == '10crop':
    resized = augment.resize_short_side(data, encoded, config.eval_resize)
    out['image'] = augment.ten_crop_views(resized, crop=crop, normalize=normalize)
  else:
    raise ValueError(f"eval_mode must be 'center' or '10crop' here, got {mode!r}.")
  return out


def _draw_specs(config, rows: int | None) -> dict[str, tf.TensorSpec]:
  return {
    name: tf.TensorSpec([rows, *shape], tf.as_dtype(dtype))
    for name, (dtype, shape) in draws.fields(config).items()
  }


def _draws_tf(config, counters):
  """``draws.for_examples`` as a tf op on a 1-D batch of counters."""
  specs = _draw_specs(config, None)
  values = tf.numpy_function(
    lambda c: list(draws.for_examples(config, c).values()),
    [counters],
    [spec.dtype for spec in specs.values()],
    stateful=False,
  )
  return {
    name: tf.ensure_shape(value, spec.shape)
    for (name, spec), value in zip(specs.items(), values, strict=True)
  }


def _fetch_and_map(index_batches, extra_spec, source: Source, layout: Layout, example_fn, config):
  """Index batches (with per-row extras) -> fetched data (parallel chunks) -> per-example map ->
  local batches."""
  parallel = config.num_parallel_calls if config.num_parallel_calls > 0 else tf.data.AUTOTUNE
  lb = layout.local_batch
  ds = tf.data.Dataset.from_generator(
    index_batches, output_signature=(tf.TensorSpec([lb], tf.int64), extra_spec)
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

    def batches():
      for indices, counters in train_index_batches(
        source.num_examples, layout, config.seed, start_step, config.repeated_augmentation
      ):
        yield indices, draws.for_examples(config, counters)

    specs = _draw_specs(config, layout.local_batch)
    return _fetch_and_map(batches, specs, source, layout, example_fn, config)

  if config.repeated_augmentation > 1:
    raise DatasetError(
      f'--config.repeated_augmentation={config.repeated_augmentation} needs examples by index, '
      f'and {config.dataset} is stored as TFRecord (streamed): prepare it as ArrayRecord '
      f'(python -m resnet_jax.prepare) or set repeated_augmentation=1.'
    )
  first = start_step * layout.local_batch
  ds = source.stream(layout.process_index, layout.process_count, train=True).dataset
  ds = ds.shuffle(config.shuffle_buffer, seed=config.seed, reshuffle_each_iteration=True).repeat()
  offset = layout.process_index * PROCESS_SEED_STRIDE
  counters = tf.data.Dataset.range(first + offset, offset + PROCESS_SEED_STRIDE)
  drawn = counters.batch(FETCH_CHUNK).map(lambda c: _draws_tf(config, c)).unbatch()
  ds = tf.data.Dataset.zip((ds.skip(first), drawn))
  ds = ds.map(lambda x, d: example_fn(x[0], x[1], d), num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(layout.local_batch, drop_remainder=True).prefetch(config.prefetch_batches)


def train_steps_per_epoch(source: Source, layout: Layout) -> int:
  """Whole global batches per epoch. A batch larger than the split would give no step at all:
  refused here, before anything compiles."""
  if source.fetch is not None:
    steps, largest = source.num_examples // layout.global_batch, source.num_examples
  else:  # each process reads its own share and fills its own rows
    share = source.stream(layout.process_index, layout.process_count, train=True).count
    steps, largest = share // layout.local_batch, share * layout.process_count
  if steps == 0:
    devices = jax.device_count()
    raise DatasetError(
      f'--config.batch_size={layout.global_batch} is more than the {source.num_examples:,} '
      f'training examples of {source.name}: not one batch can be formed. Lower '
      f'--config.batch_size to at most {largest // devices * devices:,} (a multiple of the '
      f'{devices} devices), or train on a larger split.'
    )
  return steps


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
    specs = tf.TensorSpec([layout.local_batch], tf.bool)
    return _fetch_and_map(batches, specs, source, layout, example_fn, config), steps

  share = source.stream(layout.process_index, layout.process_count, train=False)
  ds, max_count = share.dataset, share.max_count
  steps = math.ceil(max_count / layout.local_batch)
  real = ds.map(lambda d, label: (d, label, True))
  padding = ds.take(1).repeat().map(lambda d, label: (d, label, False))
  ds = real.concatenate(padding).take(steps * layout.local_batch)
  ds = ds.map(example_fn, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(layout.local_batch).prefetch(config.prefetch_batches), steps
