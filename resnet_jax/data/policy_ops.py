"""The augmentation policies' ops in TensorFlow, on uint8 [H, W, 3] crops, with PIL's arithmetic
(what torchvision's RandAugment, TrivialAugmentWide and AutoAugment and timm's RandAugment do to a
PIL image).

Each op is checked against PIL on the same images (tests/test_auto_augment.py): equal pixel for
pixel. What each example applies comes from ``auto_augment.draw``.
"""

from __future__ import annotations

import tensorflow as tf

from resnet_jax.data.auto_augment import GEOMETRIC, OPS, RESAMPLING


def _blend(degenerate, image, alpha):
  """PIL's ImagingBlend: ``degenerate + alpha * (image - degenerate)`` in float32, clipped and
  truncated to uint8 (alpha is the float32 factor)."""
  d = tf.cast(degenerate, tf.float32)
  diff = tf.cast(tf.cast(image, tf.int32) - tf.cast(degenerate, tf.int32), tf.float32)
  return tf.cast(tf.clip_by_value(d + alpha * diff, 0.0, 255.0), tf.uint8)


def _luminance(image):
  """PIL's RGB -> L: (19595 R + 38470 G + 7471 B + 0x8000) >> 16, as int32 [H, W]."""
  rgb = tf.cast(image, tf.int32)
  weighted = rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000
  return tf.bitwise.right_shift(weighted, 16)


def _smooth(image):
  """PIL's ImageFilter.SMOOTH (3x3 kernel 1 1 1 / 1 5 1 / 1 1 1 over 13, rounded; the border
  rows and columns kept)."""
  x = tf.cast(image, tf.int32)
  h, w = tf.shape(x)[0], tf.shape(x)[1]
  window = lambda dy, dx: x[dy : h - 2 + dy, dx : w - 2 + dx]  # noqa: E731
  total = 4 * window(1, 1) + sum(window(dy, dx) for dy in range(3) for dx in range(3))
  inner = tf.cast((2 * total + 13) // 26, tf.uint8)
  middle = tf.concat([image[1:-1, :1], inner, image[1:-1, -1:]], axis=1)
  return tf.concat([image[:1], middle, image[-1:]], axis=0)


def _histograms(image):
  """Per-channel 256-bin histograms, int64 [3, 256]."""
  channels = tf.transpose(tf.reshape(tf.cast(image, tf.int32), [-1, 3]))
  return tf.cast(
    tf.math.bincount(channels, minlength=256, maxlength=256, axis=-1, dtype=tf.int64), tf.int64
  )


def _apply_luts(image, luts):
  """``luts[c][v]`` for every pixel value v of channel c (luts: int [3, 256])."""
  x = tf.cast(image, tf.int32) + tf.constant([0, 256, 512])
  return tf.gather(tf.cast(tf.reshape(luts, [-1]), tf.uint8), x)  # a uint8 table: faster


def _autocontrast(image):
  """PIL's ImageOps.autocontrast (no cutoff): each channel's [lo, hi] stretched to [0, 255],
  ``int(v * scale + offset)`` in float64; a flat channel unchanged."""
  hist = _histograms(image)
  values = tf.range(256, dtype=tf.int64)
  present = hist > 0
  lo = tf.reduce_min(tf.where(present, values, 255), axis=1, keepdims=True)
  hi = tf.reduce_max(tf.where(present, values, 0), axis=1, keepdims=True)
  scale = 255.0 / tf.cast(tf.maximum(hi - lo, 1), tf.float64)
  offset = -tf.cast(lo, tf.float64) * scale
  stretched = tf.cast(tf.cast(values, tf.float64) * scale + offset, tf.int64)  # truncates
  luts = tf.where(hi > lo, tf.clip_by_value(stretched, 0, 255), values)
  return _apply_luts(image, luts)


def _equalize(image):
  """PIL's ImageOps.equalize: per channel ``step = (pixels - count of the last present value) //
  255`` and ``lut[i] = (step // 2 + pixels below i) // step``; a channel with one value or
  step 0 unchanged."""
  hist = _histograms(image)
  values = tf.range(256, dtype=tf.int64)
  last = tf.reduce_max(tf.where(hist > 0, values, -1), axis=1, keepdims=True)
  last_count = tf.gather(hist, last, batch_dims=1)
  step = (tf.reduce_sum(hist, axis=1, keepdims=True) - last_count) // 255
  below = tf.cumsum(hist, axis=1, exclusive=True)
  lut = (step // 2 + below) // tf.maximum(step, 1)
  luts = tf.where(step > 0, tf.minimum(lut, 255), values)
  return _apply_luts(image, luts)


def _affine_nearest(image, matrix, fill):
  """PIL's nearest-neighbour affine transform: in 16.16 fixed point with the half-pixel offsets
  folded into the offsets (PIL's ``affine_fixed``). int32 sums, as PIL's: PIL takes this path
  while every coordinate is below 32768 in magnitude (2**31 in fixed point)."""
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  a = tf.unstack(matrix)
  fix = lambda v: tf.cast(tf.floor(v * 65536.0 + 0.5), tf.int32)  # noqa: E731
  m0, m1, m3, m4 = fix(a[0]), fix(a[1]), fix(a[3]), fix(a[4])
  m2, m5 = fix(a[2] + a[0] * 0.5 + a[1] * 0.5), fix(a[5] + a[3] * 0.5 + a[4] * 0.5)
  y = tf.range(h)[:, None]
  x = tf.range(w)[None, :]
  xin = tf.bitwise.right_shift(m2 + x * m0 + y * m1, 16)
  yin = tf.bitwise.right_shift(m5 + x * m3 + y * m4, 16)
  inside = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
  # One gather of whole pixels; outside the image points at a fill pixel after the last (TF's
  # select on uint8 pixels took as long as the rest of the op).
  rows = tf.concat([tf.reshape(image, [-1, 3]), fill[None]], axis=0)
  picked = tf.gather(rows, tf.reshape(tf.where(inside, yin * w + xin, h * w), [-1]))
  return tf.reshape(picked, tf.shape(image))


def _cubic(v1, v2, v3, v4, d):
  """PIL's BICUBIC macro (a = -1 cubic convolution), in its order of operations."""
  p2 = -v1 + v3
  p3 = 2.0 * (v1 - v2) + v3 - v4
  p4 = -v1 + v2 - v3 + v4
  return v2 + d * (p2 + d * (p3 + d * p4))


def _affine_interpolated(image, matrix, cubic, fill):
  """PIL's bilinear or bicubic affine transform (``ImagingGenericTransform``), in float64 as PIL:
  each output pixel centre maps to ``(m0 (x + .5) + m1 (y + .5) + m2, ...)``; a point outside the
  image takes ``fill``; inside, 2 x 2 or 4 x 4 source pixels around it (indices clamped to the
  image) are interpolated along rows, then down the column, and truncated to uint8 (bicubic
  clipped to [0, 255] first)."""
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  a = tf.unstack(matrix)
  x = tf.cast(tf.range(w), tf.float64)[None, :] + 0.5
  y = tf.cast(tf.range(h), tf.float64)[:, None] + 0.5
  xx = a[0] * x + a[1] * y + a[2]
  yy = a[3] * x + a[4] * y + a[5]
  inside = (xx >= 0.0) & (xx < tf.cast(w, tf.float64)) & (yy >= 0.0) & (yy < tf.cast(h, tf.float64))
  xs, ys = xx - 0.5, yy - 0.5
  x0, y0 = tf.floor(xs), tf.floor(ys)
  dx, dy = (xs - x0)[..., None], (ys - y0)[..., None]
  taps = 4 if cubic else 2
  first = -1 if cubic else 0
  pixels = tf.cast(tf.reshape(image, [-1, 3]), tf.float64)
  cols = [tf.clip_by_value(tf.cast(x0, tf.int32) + first + k, 0, w - 1) for k in range(taps)]
  rows = [tf.clip_by_value(tf.cast(y0, tf.int32) + first + k, 0, h - 1) for k in range(taps)]
  sample = lambda r, c: tf.gather(pixels, r * w + c)  # noqa: E731
  if cubic:
    along = [_cubic(*(sample(r, c) for c in cols), dx) for r in rows]
    value = tf.clip_by_value(_cubic(*along, dy), 0.0, 255.0)
  else:
    along = []
    for r in rows:
      left, right = sample(r, cols[0]), sample(r, cols[1])
      along.append(left + (right - left) * dx)
    value = along[0] + (along[1] - along[0]) * dy
  out = tf.cast(tf.cast(value, tf.int32), tf.uint8)  # truncation, as PIL's (UINT8) cast
  return tf.where(inside[..., None], out, fill)


def _affine(image, matrix, resample, fill, filters):
  """The geometric ops: PIL's ``Image.transform`` with ``matrix`` (its AFFINE data) and the filter
  ``resample`` (an index of auto_augment.RESAMPLING), one of ``filters``; uncovered pixels
  ``fill`` (uint8 [3]). Only ``filters``' code is built: tf.data runs a branch not taken at a
  cost (the bilinear and bicubic code made torchvision's nearest-only policies 25% slower)."""
  build = {
    'nearest': lambda: _affine_nearest(image, matrix, fill),
    'bilinear': lambda: _affine_interpolated(image, matrix, False, fill),
    'bicubic': lambda: _affine_interpolated(image, matrix, True, fill),
  }
  if len(filters) == 1:
    return build[filters[0]]()
  position = tf.constant([filters.index(f) if f in filters else 0 for f in RESAMPLING])
  return tf.switch_case(tf.gather(position, resample), [build[f] for f in filters])


def apply_op(image, op, magnitude, matrix, resample, fill, filters=RESAMPLING):
  """One op (id ``op``, a scalar tensor) on a uint8 image, with its argument ``magnitude`` as PIL
  receives it (auto_augment.draw); a geometric op resamples with one of ``filters``."""
  factor = magnitude  # the tone ops' enhancement factor (float32, as PIL's C code takes it)
  bits = tf.cast(magnitude, tf.int32)
  gray = lambda: tf.repeat(tf.cast(_luminance(image), tf.uint8)[..., None], 3, axis=-1)  # noqa: E731

  def contrast():
    mean = tf.cast(tf.reduce_mean(tf.cast(_luminance(image), tf.float64)) + 0.5, tf.int32)
    return _blend(tf.fill(tf.shape(image), tf.cast(mean, tf.uint8)), image, factor)

  def posterize():
    mask = tf.bitwise.invert(tf.bitwise.left_shift(1, 8 - bits) - 1)
    return tf.cast(tf.bitwise.bitwise_and(tf.cast(image, tf.int32), mask), tf.uint8)

  def solarize():  # 255 - v is v ^ 255; v >= threshold for integers v: v >= ceil(threshold)
    threshold = tf.cast(tf.math.ceil(magnitude), tf.int32)
    above = tf.cast(tf.cast(image, tf.int16) >= tf.cast(threshold, tf.int16), tf.uint8)
    return tf.bitwise.bitwise_xor(image, above * 255)

  def solarize_add():  # timm's: v + addend, at most 255, for v below 128
    added = tf.minimum(tf.cast(image, tf.int32) + tf.cast(magnitude, tf.int32), 255)
    return tf.where(image < 128, tf.cast(added, tf.uint8), image)

  branches = {
    'Identity': lambda: image,
    'geometric': lambda: _affine(image, matrix, resample, fill, filters),
    'Brightness': lambda: _blend(tf.zeros_like(image), image, factor),
    'Color': lambda: _blend(gray(), image, factor),
    'Contrast': contrast,
    'Sharpness': lambda: _blend(_smooth(image), image, factor),
    'Posterize': posterize,
    'Solarize': solarize,
    'AutoContrast': lambda: _autocontrast(image),
    'Equalize': lambda: _equalize(image),
    'Invert': lambda: 255 - image,
    'SolarizeAdd': solarize_add,
  }
  # The geometric ops share one branch (their matrix is what differs): one copy of its code.
  kinds = list(branches)
  kind_of_op = [kinds.index('geometric' if name in GEOMETRIC else name) for name in OPS]
  out = tf.switch_case(tf.gather(kind_of_op, op), [branches[k] for k in kinds])
  out.set_shape(image.shape)
  return out


def apply(image, drawn, fill, filters):
  """The example's drawn ops (auto_augment.draw), in order, on its uint8 crop; ``fill`` the
  geometric ops' uncovered pixels and ``filters`` those they may draw (auto_augment.fill,
  auto_augment.filters)."""
  fill = tf.constant(fill, tf.uint8)
  for s in range(drawn['op'].shape[0]):
    args = (drawn[k][s] for k in ('op', 'magnitude', 'matrix', 'resample'))
    image = apply_op(image, *args, fill, filters)
  return image
