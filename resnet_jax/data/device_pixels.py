"""The training images' per-pixel operations inside the compiled train step (pixel_ops='device').

With ``pixel_ops='device'`` the input pipeline sends each training crop resized but rounded to uint8
(a quarter of float32's bytes to batch, copy and transfer), beside what the example drew
(``draws.for_examples``); ``PixelOps`` then applies PCA lighting, normalisation, CIFAR's pad-crop,
the flip and random erasing on the devices, in the host pipeline's order and float32 arithmetic. A
finished batch is bitwise the host pipeline's images of the same uint8 crops. On one core these
passes took 6-10% of the host pipeline's time (PERFORMANCE.md); XLA fuses them into one pass.

No TensorFlow here: the device-only benchmark modes run on images without it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from resnet_jax.data import draws

# What a batch carries beside its uint8 'image' and 'label' (draws.for_examples's fields).
DRAWS = ('lighting', 'shift', 'flip', 'erase')


def normalization(config, mean: np.ndarray | None = None):
  """``config.normalization`` as (subtrahend, factor), float32; None where not applied.

  'pixel_mean': (the training split's mean image, None); 'channel_mean_std': (channel means,
  1 / channel stds); 'none': (None, None).
  """
  if config.normalization == 'pixel_mean':
    if mean is None:
      raise ValueError("normalization='pixel_mean' needs the training split's mean image.")
    return np.asarray(mean, np.float32), None
  if config.normalization == 'channel_mean_std':
    inv_std = 1.0 / np.asarray(config.channel_std, np.float32)
    return np.asarray(config.channel_mean, np.float32), inv_std
  if config.normalization == 'none':
    return None, None
  raise ValueError("normalization must be 'pixel_mean', 'channel_mean_std' or 'none'.")


class PixelOps:
  """Finishes a batch the input pipeline sent as uint8 crops with their draws.

  Args:
    config: the run's config (normalization, train_augment, pad, lighting_std, random_flip).
    mean: the training split's mean image, for normalization='pixel_mean'.
  """

  def __init__(self, config, mean: np.ndarray | None = None):
    self.subtract, self.multiply = normalization(config, mean)
    self.used = draws.pixel_draws(config)

  def __call__(self, batch) -> jax.Array:
    """float32 [N, H, W, 3] images from batch's 'image' (uint8) 'lighting', 'shift', 'flip'."""
    x = batch['image'].astype(jnp.float32)
    if self.used.lighting:
      x = x + batch['lighting'][:, None, None, :]
    if self.subtract is not None:
      x = x - self.subtract
    if self.multiply is not None:
      x = x * self.multiply
    if pad := self.used.pad:  # zeros of the normalised image, as the host pipeline pads
      size = x.shape[1:]
      padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
      crop = lambda image, s: lax.dynamic_slice(image, (s[0], s[1], 0), size)  # noqa: E731
      x = jax.vmap(crop)(padded, batch['shift'])
    if self.used.flip:
      x = jnp.where(batch['flip'][:, None, None, None], x[:, :, ::-1], x)
    if self.used.erasing:  # the box set to 0 of the normalised image, last (torchvision's order)
      box = batch['erase'][:, :, None, None]
      rows = jnp.arange(x.shape[1])[None, :, None]
      cols = jnp.arange(x.shape[2])[None, None, :]
      inside = (rows >= box[:, 0]) & (rows < box[:, 0] + box[:, 2])
      inside &= (cols >= box[:, 1]) & (cols < box[:, 1] + box[:, 3])
      x = jnp.where(inside[..., None], 0.0, x)
    return x


def example_batch(config, size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """A random batch of ``size`` in the form pixel_ops='device' sends (for device-only timing)."""
  shape = (size, config.image_size, config.image_size, 3)
  return {
    'image': rng.integers(0, 256, shape, dtype=np.uint8),
    'lighting': rng.standard_normal((size, 3), dtype=np.float32),
    'shift': rng.integers(0, 2 * config.pad + 1, (size, 2), dtype=np.int32),
    'flip': rng.integers(0, 2, size).astype(bool),
    'erase': np.zeros((size, 4), np.int32),
  }
