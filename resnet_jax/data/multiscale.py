"""The paper's multi-scale test (section 3.4): whole images, fully convolutional, at several sizes.

No padding reaches the network. Each image is resized so that its shorter side is each size ``s``
of ``multiscale_sizes``, and its longer side is centre-cropped to ``floor(s * a)``, where ``a`` is
its *bucket*: the largest of ``multiscale_aspects`` not above its aspect ratio (longer / shorter
side). Images of one bucket and orientation have one shape at every size, so evaluation runs
bucket after bucket with every batch holding images of one shape (padding rows carry mask False),
and one eval step compiles per bucket. An image whose aspect ratio is one of the buckets (square,
4:3 and 3:2 by default) is seen whole, up to a pixel of rounding; others lose at most the gap to
the next bucket.

Every process agrees on the number of batches of each bucket (counts are gathered first), so all
processes run the same compiled steps in the same order.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import tensorflow as tf
from jax.experimental import multihost_utils

from resnet_jax.data import augment
from resnet_jax.data.source import FETCH_CHUNK


def buckets(aspects) -> list[tuple[bool, float]]:
  """Every (portrait, aspect) bucket, in evaluation order; square images count as landscape."""
  ordered = sorted(aspects)
  return [(False, a) for a in ordered] + [(True, a) for a in ordered if a > 1.0]


def bucket_index(h: int, w: int, aspects) -> int:
  """The bucket of an ``h`` x ``w`` image: orientation and the largest aspect <= its ratio."""
  portrait = h > w
  ratio = max(h, w) / min(h, w)
  fitting = [a for a in sorted(aspects) if a <= ratio]
  aspect = fitting[-1] if fitting else min(aspects)
  return buckets(aspects).index((portrait and aspect > 1.0, aspect))


def view_hw(size: int, bucket: tuple[bool, float]) -> tuple[int, int]:
  """Shape of every view at shorter side ``size`` in ``bucket``."""
  portrait, aspect = bucket
  long = math.floor(size * aspect + 1e-6)  # the epsilon keeps exact products (240 * 1.5) exact
  return (long, size) if portrait else (size, long)


def views(image, label, mask, *, sizes, bucket, normalize):
  """The example's views at every size: resized (aspect kept), centre-cropped to the bucket."""
  out = {'label': label, 'mask': mask}
  for size in sizes:
    target_h, target_w = view_hw(size, bucket)
    resized = augment.resize_short_side(image, False, size)
    new_h, new_w = tf.shape(resized)[0], tf.shape(resized)[1]
    y, x = (new_h - target_h) // 2, (new_w - target_w) // 2
    view = resized[y : y + target_h, x : x + target_w]
    out[f'image_{size}'] = normalize(tf.ensure_shape(view, [target_h, target_w, 3]))
  return out


def _padding(sizes, bucket, label_width: int) -> dict:
  zeros = {f'image_{s}': tf.zeros([*view_hw(s, bucket), 3], tf.float32) for s in sizes}
  label = tf.fill([label_width], -1) if label_width else tf.constant(0, tf.int32)
  return {'label': label, 'mask': tf.constant(False), **zeros}


def _local_reader(source, layout):
  """(this process's example count, positions -> tf.data of (data, label) at those positions).

  Random-access sources give each process a contiguous share of the split; stream-only sources
  give each process its own stream, filtered by position.
  """
  if source.fetch is not None:
    share = np.array_split(np.arange(source.num_examples), layout.process_count)
    indices = share[layout.process_index]

    def read(positions):
      ds = tf.data.Dataset.from_tensor_slices(indices[positions].astype(np.int64))
      return ds.batch(FETCH_CHUNK).map(source.fetch_tf).unbatch()

    return len(indices), read

  share = source.stream(layout.process_index, layout.process_count, train=False)
  stream, count = share.dataset, share.count

  def read(positions):
    wanted = np.zeros(count, bool)
    wanted[positions] = True
    table = tf.constant(wanted)
    picked = stream.enumerate().filter(lambda i, example: tf.gather(table, i))
    return picked.map(lambda i, example: example)

  return count, read


def image_shapes(source, read, count: int) -> np.ndarray:
  """[count, 2] (height, width) of this process's images, reading only JPEG headers."""
  if count == 0:
    return np.zeros((0, 2), np.int64)
  ds = read(np.arange(count)).map(
    lambda data, label: tf.stack(augment.image_hw(source.load(data), source.encoded)),
    num_parallel_calls=tf.data.AUTOTUNE,
  )
  return np.stack(list(ds.as_numpy_iterator()))


@functools.lru_cache(maxsize=8)
def _bucket_assignment(source, layout, aspects) -> tuple[np.ndarray, np.ndarray]:
  """(bucket of each of this process's examples, [process, bucket] example counts).

  Cached: evaluations during training reuse it instead of reading every image header again.
  Every process evaluates at the same steps, so every process computes (and gathers) it once.
  """
  count, read = _local_reader(source, layout)
  shapes = image_shapes(source, read, count)
  local = np.array([bucket_index(h, w, aspects) for h, w in shapes], np.int64)
  counts = np.bincount(local, minlength=len(buckets(aspects)))
  if layout.process_count > 1:
    return local, np.asarray(multihost_utils.process_allgather(counts))
  return local, counts[None]


def eval_dataset(config, source, layout, normalize) -> tuple[tf.data.Dataset, int]:
  """This process's multi-scale eval batches, bucket by bucket, and their number."""
  _, read = _local_reader(source, layout)
  aspects = tuple(config.multiscale_aspects)
  all_buckets = buckets(aspects)
  local, counts_everywhere = _bucket_assignment(source, layout, aspects)
  counts = counts_everywhere[layout.process_index if layout.process_count > 1 else 0]
  lb, sizes = layout.local_batch, tuple(config.multiscale_sizes)
  parallel = config.num_parallel_calls if config.num_parallel_calls > 0 else tf.data.AUTOTUNE
  parts, total_steps = [], 0
  for b, bucket in enumerate(all_buckets):
    steps = math.ceil(counts_everywhere[:, b].max() / lb)
    if steps == 0:
      continue

    def example_views(data, label, bucket=bucket):
      image = augment.decode(source.load(data), source.encoded)
      return views(image, label, True, sizes=sizes, bucket=bucket, normalize=normalize)

    real = read(np.flatnonzero(local == b)).map(example_views, num_parallel_calls=parallel)
    padding = tf.data.Dataset.from_tensors(_padding(sizes, bucket, source.label_width))
    padding = padding.repeat(steps * lb - int(counts[b]))
    parts.append(real.concatenate(padding).batch(lb))
    total_steps += steps
  ds = parts[0]
  for part in parts[1:]:
    ds = ds.concatenate(part)
  return ds.prefetch(config.prefetch_batches), total_steps
