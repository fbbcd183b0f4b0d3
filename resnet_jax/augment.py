"""Pure tf.data image ops: the paper's training augmentation and its test views.

Every op takes the image as ``data`` with ``encoded`` telling whether it is still compressed
bytes (JPEG/PNG from files or TFDS) or a decoded uint8 HxWx3 tensor (in-memory datasets). On JPEG
bytes the crop window is decoded alone (``decode_and_crop_jpeg``) and only that window is resized:
the same image as resizing the whole photo and then cropping, at a fraction of the cost.

Randomness is stateless: each op takes a ``seed`` tensor of shape [2], derived per example from
the run seed and the example's global position, so a batch is the same whichever process builds it.
"""

from __future__ import annotations

import tensorflow as tf

# AlexNet's PCA of ImageNet RGB pixels (0..255 scale), as used by fb.resnet.torch.
IMAGENET_EIGVAL = (55.46, 4.794, 1.148)
IMAGENET_EIGVEC = (
  (-0.5675, 0.7192, 0.4009),
  (-0.5808, -0.0045, -0.8140),
  (-0.5836, -0.6948, 0.4203),
)


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


def decode_window(data, encoded: bool, y, x, h, w):
  """Decodes only the window [y:y+h, x:x+w] of the image (uint8)."""
  if not encoded:
    return data[y : y + h, x : x + w]

  def jpeg():
    return tf.io.decode_and_crop_jpeg(data, tf.stack([y, x, h, w]), channels=3)

  def other():
    return decode(data, True)[y : y + h, x : x + w]

  image = tf.cond(tf.io.is_jpeg(data), jpeg, other)
  image.set_shape([None, None, 3])
  return image


def _resize(image, size):
  return tf.image.resize(tf.cast(image, tf.float32), size, method='bilinear')


def _window_of_resized(h, w, short_side, oy, ox, crop):
  """The window of the original image that becomes [oy:oy+crop, ox:ox+crop] once the shorter
  side is resized to ``short_side``."""
  factor = tf.cast(tf.minimum(h, w), tf.float32) / tf.cast(short_side, tf.float32)
  size_y = tf.minimum(tf.cast(tf.round(crop * factor), tf.int32), h)
  size_x = tf.minimum(tf.cast(tf.round(crop * factor), tf.int32), w)
  y = tf.minimum(tf.cast(tf.round(tf.cast(oy, tf.float32) * factor), tf.int32), h - size_y)
  x = tf.minimum(tf.cast(tf.round(tf.cast(ox, tf.float32) * factor), tf.int32), w - size_x)
  return y, x, tf.maximum(size_y, 1), tf.maximum(size_x, 1)


def resized_hw(h, w, short_side):
  """Image size after scaling the shorter side to ``short_side`` (aspect kept)."""
  short = tf.cast(tf.minimum(h, w), tf.float32)
  scale = tf.cast(short_side, tf.float32) / short
  new_h = tf.cast(tf.round(tf.cast(h, tf.float32) * scale), tf.int32)
  new_w = tf.cast(tf.round(tf.cast(w, tf.float32) * scale), tf.int32)
  return new_h, new_w


def scale_crop(data, encoded, seed, *, crop: int, scale_range):
  """Paper 3.4: shorter side resized to S ~ U{scale_range}, then a random crop x crop window.

  Returns:
    float32 [crop, crop, 3] in 0..255.
  """
  seeds = tf.random.experimental.stateless_split(seed, 3)
  h, w = image_hw(data, encoded)
  lo, hi = scale_range
  short_side = tf.random.stateless_uniform([], seeds[0], lo, hi + 1, dtype=tf.int32)
  new_h, new_w = resized_hw(h, w, short_side)
  oy = tf.random.stateless_uniform([], seeds[1], 0, tf.maximum(new_h - crop, 0) + 1, tf.int32)
  ox = tf.random.stateless_uniform([], seeds[2], 0, tf.maximum(new_w - crop, 0) + 1, tf.int32)
  y, x, size_y, size_x = _window_of_resized(h, w, short_side, oy, ox, crop)
  return _resize(decode_window(data, encoded, y, x, size_y, size_x), [crop, crop])


def inception_crop(data, encoded, seed, *, crop: int, area_range, aspect_range):
  """Random-resized crop (Szegedy et al.): a window of random area and aspect, resized."""
  h, w = image_hw(data, encoded)
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
    tf.stack([h, w, 3]),
    bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
    seed=seed,
    min_object_covered=0.0,
    aspect_ratio_range=aspect_range,
    area_range=area_range,
    max_attempts=10,
    use_image_if_no_bounding_boxes=True,
  )
  window = decode_window(data, encoded, begin[0], begin[1], size[0], size[1])
  return _resize(window, [crop, crop])


def pad_crop(image, seed, *, crop: int, pad: int):
  """CIFAR 4.2: zero-pad ``pad`` pixels on each side, random crop x crop (float input)."""
  padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
  return tf.image.stateless_random_crop(padded, [crop, crop, 3], seed)


def random_flip(image, seed):
  return tf.image.stateless_random_flip_left_right(image, seed)


def lighting(image, seed, *, std: float):
  """AlexNet PCA colour noise: adds eigvec @ (alpha * eigval), alpha ~ N(0, std), per image."""
  alpha = tf.random.stateless_normal([3], seed, stddev=std)
  eigvec = tf.constant(IMAGENET_EIGVEC, tf.float32)
  rgb = tf.linalg.matvec(eigvec, alpha * tf.constant(IMAGENET_EIGVAL, tf.float32))
  return add_per_channel(image, rgb)


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
  h, w = image_hw(data, encoded)
  new_h, new_w = resized_hw(h, w, resize)
  oy, ox = (new_h - crop) // 2, (new_w - crop) // 2
  y, x, size_y, size_x = _window_of_resized(h, w, resize, oy, ox, crop)
  return _resize(decode_window(data, encoded, y, x, size_y, size_x), [crop, crop])


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
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  new_h, new_w = resized_hw(h, w, short_side)
  image = _resize(image, tf.stack([new_h, new_w]))
  if max_long is not None:
    crop_h, crop_w = tf.minimum(new_h, max_long), tf.minimum(new_w, max_long)
    y, x = (new_h - crop_h) // 2, (new_w - crop_w) // 2
    image = image[y : y + crop_h, x : x + crop_w]
  return image
