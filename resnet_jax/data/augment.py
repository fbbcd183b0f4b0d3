"""Pure tf.data image ops: the paper's training augmentation and its test views.

Every op takes the image as ``data`` with ``encoded`` telling whether it is still compressed
bytes (JPEG/PNG from files or TFDS) or a decoded uint8 HxWx3 tensor (in-memory datasets). On JPEG
bytes the crop window is decoded alone (``decode_and_crop_jpeg``) and only that window is resized:
the same image as resizing the whole photo and then cropping, at a fraction of the cost.

Randomness comes in: each op takes what the example drew (``draws.for_examples``, a function of
the run seed and the example's global position), so a batch is the same whichever process builds it.
"""

from __future__ import annotations

import tensorflow as tf


def image_hw(data, encoded: bool):
  """(height, width) as int32, reading only the JPEG header when possible."""
  if not encoded:
    return tf.shape(data)[0], tf.shape(data)[1]
  shape = tf.cond(
    tf.io.is_jpeg(data),
    lambda: tf.io.extract_jpeg_shape(data),
    lambda: tf.shape(tf.io.decode_image(data, channels=3, expand_animations=False)),
  )
  return shape[0], shape[1]


def decode(data, encoded: bool):
  if not encoded:
    return data
  image = tf.io.decode_image(data, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def _resize(image, size):
  return tf.image.resize(tf.cast(image, tf.float32), size, method='bilinear')


def window_of_resized(hw, short_side, offset, crop):
  """[y, x, height, width] of the window of an image of size ``hw`` (int32 [2]) that becomes the
  crop x crop square at ``offset`` ([2]) once the shorter side is resized to ``short_side``.

  Rows and columns are computed together: every op here runs once per example, at ~0.5 us each.
  """
  factor = tf.cast(tf.reduce_min(hw), tf.float32) / tf.cast(short_side, tf.float32)
  size = tf.minimum(tf.cast(tf.round(crop * factor), tf.int32), hw)
  origin = tf.cast(tf.round(tf.cast(offset, tf.float32) * factor), tf.int32)
  return tf.concat([tf.minimum(origin, hw - size), tf.maximum(size, 1)], 0)


def resized_size(hw, short_side):
  """Image size (int32 [2]) after scaling the shorter side to ``short_side`` (aspect kept)."""
  hw = tf.cast(hw, tf.float32)
  return tf.cast(tf.round(hw * (tf.cast(short_side, tf.float32) / tf.reduce_min(hw))), tf.int32)


def crop_and_resize(data, encoded: bool, window, size):
  """The window ``window(hw) -> [y, x, height, width]`` of the image, resized to ``size``.

  On JPEG bytes only the header and the window (up to its last row) are decoded. One tf.cond per
  image picks JPEG or another format: each costs a function call per example (~20 us).
  """

  def cut(image):
    box = window(tf.shape(image)[:2])
    return image[box[0] : box[0] + box[2], box[1] : box[1] + box[3]]

  if not encoded:
    return _resize(cut(data), size)

  def jpeg():
    box = window(tf.io.extract_jpeg_shape(data)[:2])
    return tf.io.decode_and_crop_jpeg(data, box, channels=3)

  image = tf.cond(tf.io.is_jpeg(data), jpeg, lambda: cut(decode(data, True)))
  image.set_shape([None, None, 3])
  return _resize(image, size)


def below(bits, n):
  """int32 uniform in [0, n) from random 32-bit words (int64): (bits * n) >> 32 (draws.below)."""
  return tf.cast(tf.bitwise.right_shift(bits * tf.cast(n, tf.int64), 32), tf.int32)


def scale_crop(data, encoded, bits, *, crop: int, scale_range):
  """Paper 3.4: shorter side resized to S ~ U{scale_range}, then a random crop x crop window.

  Args:
    bits: int64 [3] random 32-bit words (draws.for_examples): S, then the window's y and x.

  Returns:
    float32 [crop, crop, 3] in 0..255.
  """
  lo, hi = scale_range
  short_side = lo + below(bits[0], hi - lo + 1)

  def window(hw):
    offset = below(bits[1:], tf.maximum(resized_size(hw, short_side) - crop, 0) + 1)
    return window_of_resized(hw, short_side, offset, crop)

  return crop_and_resize(data, encoded, window, [crop, crop])


def inception_crop(data, encoded, seed, *, crop: int, area_range, aspect_range):
  """Random-resized crop (Szegedy et al.): a window of random area and aspect, resized.

  Args:
    seed: int64 [2], the seed of TF's stateless box sampler.
  """

  def window(hw):
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.concat([hw, [3]], 0),
      bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
      seed=seed,
      min_object_covered=0.0,
      aspect_ratio_range=aspect_range,
      area_range=area_range,
      max_attempts=10,
      use_image_if_no_bounding_boxes=True,
    )
    return tf.concat([begin[:2], size[:2]], 0)

  return crop_and_resize(data, encoded, window, [crop, crop])


def pad_crop(image, shift, *, crop: int, pad: int):
  """CIFAR 4.2: zero-pad ``pad`` pixels on each side, the crop x crop window at ``shift`` (y, x in
  [0, 2 * pad]) of the padded image (float input)."""
  padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
  return padded[shift[0] : shift[0] + crop, shift[1] : shift[1] + crop]


def flip_if(image, flip):
  """The image mirrored left-right where ``flip`` (a bool scalar)."""
  return tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)


def erase(image, box):
  """The image with the box (y, x, height, width; 0 x 0: none) set to 0 (random erasing on the
  normalised image, torchvision's value 0)."""
  rows = tf.range(tf.shape(image)[0])[:, None]
  cols = tf.range(tf.shape(image)[1])[None, :]
  inside = (rows >= box[0]) & (rows < box[0] + box[2]) & (cols >= box[1]) & (cols < box[1] + box[3])
  return tf.where(inside[..., None], tf.zeros_like(image), image)


def to_uint8(image):
  """A float image in 0..255 (a resize's output) rounded to uint8 (a uint8 image as it is)."""
  if image.dtype == tf.uint8:
    return image
  return tf.cast(tf.round(image), tf.uint8)


def add_per_channel(image, values):
  """``image + values`` for an HxWxC image and C values, the same sums. TF's CPU kernel
  broadcasting over an innermost dimension of 3 is not vectorised (lighting's add took a quarter
  of the pipeline's time); over rows of W * C values, tiled once, it is."""
  shape = tf.shape(image)
  rows = tf.reshape(image, [shape[0], shape[1] * shape[2]])
  out = tf.reshape(rows + tf.tile(values, [shape[1]]), shape)
  out.set_shape(image.shape)  # the normaliser picks its fast path by the static shape
  return out


def center_view(data, encoded, *, resize: int, crop: int):
  """Shorter side to ``resize``, central crop x crop (decoding only that window)."""

  def window(hw):
    return window_of_resized(hw, resize, (resized_size(hw, resize) - crop) // 2, crop)

  return crop_and_resize(data, encoded, window, [crop, crop])


def ten_crop_views(image, *, crop: int, normalize=lambda x: x):
  """Four corners and the centre of a resized image, normalised, then their mirror images.

  Returns:
    [10, crop, crop, 3]: TL, TR, BL, BR, C, then the same five flipped.
  """
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  offsets = [(0, 0), (0, w - crop), (h - crop, 0), (h - crop, w - crop)]
  offsets.append(((h - crop) // 2, (w - crop) // 2))
  crops = tf.stack([normalize(image[y : y + crop, x : x + crop]) for y, x in offsets])
  return tf.concat([crops, tf.reverse(crops, axis=[2])], axis=0)


def resize_short_side(data, encoded, short_side: int, max_long: int | None = None):
  """Decodes and resizes the shorter side to ``short_side``; the long side is centre-cropped to at
  most ``max_long``. Returns float32 [h, w, 3]."""
  image = decode(data, encoded)
  new_size = resized_size(tf.shape(image)[:2], short_side)
  image = _resize(image, new_size)
  new_h, new_w = new_size[0], new_size[1]
  if max_long is not None:
    crop_h, crop_w = tf.minimum(new_h, max_long), tf.minimum(new_w, max_long)
    y, x = (new_h - crop_h) // 2, (new_w - crop_w) // 2
    image = image[y : y + crop_h, x : x + crop_w]
  return image
