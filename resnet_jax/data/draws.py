"""Each training example's random draws, computed for many examples at once in numpy.

An example's draws are a fixed function of the run seed and the example's global position in the
stream (``counter``): SplitMix64 seeded from the run seed and advanced to ``counter * STREAMS +
stream``, one 64-bit word per draw. So an example looks the same whichever process, chunk or
resumed run computes it, as the per-example TF stateless ops this replaces did; but a chunk of
examples costs a few vectorised numpy passes instead of ~10 small TF ops per example, which took
~9% of a one-core tf.data pipeline's time (2026-11-30, PERFORMANCE.md).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from resnet_jax.data import auto_augment

# AlexNet's PCA of ImageNet RGB pixels (0..255 scale), as used by fb.resnet.torch.
IMAGENET_EIGVAL = (55.46, 4.794, 1.148)
IMAGENET_EIGVEC = (
  (-0.5675, 0.7192, 0.4009),
  (-0.5808, -0.0045, -0.8140),
  (-0.5836, -0.6948, 0.4203),
)
# Draw columns of one example: 0-2 the crop (scale: shorter side, y, x; inception: its op's seed),
# 3-4 CIFAR's pad-crop offset, 5 the flip, 6-11 three Box-Muller pairs for PCA lighting.
STREAMS = 12
# What ``for_examples`` returns whatever the config: name -> (dtype, per-example shape). 'erase'
# is random erasing's box (y, x, height, width; 0 x 0 when none).
FIELDS = {
  'crop': (np.int64, (3,)),
  'shift': (np.int32, (2,)),
  'flip': (np.bool_, ()),
  'lighting': (np.float32, (3,)),
  'erase': (np.int32, (4,)),
}
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
# Word families beside the first (STREAMS words above): their own keys under the run seed, so
# adding a kind of draw leaves the others' words as they were.
POLICY_FAMILY, ERASING_FAMILY = 1, 2
ERASING_ATTEMPTS = 10  # torchvision's RandomErasing tries this many boxes


class PixelDraws(NamedTuple):
  """Which per-pixel draws a config's augmentation applies (the host pipeline, the train step's
  ``device_pixels.PixelOps`` and ``for_examples`` all decide by this)."""

  lighting: bool
  pad: int  # CIFAR's pad-crop padding; 0: no pad-crop
  flip: bool
  erasing: bool


def pixel_draws(config) -> PixelDraws:
  augmented = config.train_augment != 'none'
  return PixelDraws(
    lighting=config.lighting_std > 0 and augmented,
    pad=config.pad if config.train_augment == 'pad_crop' else 0,
    flip=config.random_flip and augmented,
    erasing=config.random_erasing > 0,
  )


def _mix(z: np.ndarray) -> np.ndarray:
  """SplitMix64's output function (a bijection of uint64 with full avalanche)."""
  z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return z ^ (z >> np.uint64(31))


def random_bits(seed: int, counters: np.ndarray, streams: int = STREAMS, family: int = 0):
  """[n, streams] uniform 32-bit integers (as int64) for the examples at ``counters``, from
  word family ``family`` (0: the crop, pad, flip and lighting words)."""
  key = _mix(np.array([seed], np.uint64) * _GAMMA)  # seeds 0, 1, ... start far apart
  if family:
    key = _mix(key ^ _mix(np.array([family], np.uint64) * _GAMMA))
  positions = np.asarray(counters, np.uint64)[:, None] * np.uint64(streams)
  positions = positions + np.arange(1, streams + 1, dtype=np.uint64)
  return (_mix(key + positions * _GAMMA) >> np.uint64(32)).astype(np.int64)


def fields(config) -> dict:
  """``FIELDS`` and, with an augmentation policy, its per-example ops (auto_augment.draw)."""
  slots = auto_augment.slots(config)
  if not slots:
    return FIELDS
  return {
    **FIELDS,
    'policy_op': (np.int32, (slots,)),
    'policy_magnitude': (np.float32, (slots,)),
    'policy_matrix': (np.float64, (slots, 6)),
    'policy_resample': (np.int32, (slots,)),
  }


def erasing_boxes(config, counters: np.ndarray) -> np.ndarray:
  """torchvision's RandomErasing boxes on the image_size crop (int32 [n, 4]: y, x, height,
  width; zeros where the example is not erased): with probability ``random_erasing``, up to 10
  tries of an area share in ``erasing_scale`` and a log-uniform aspect in ``erasing_ratio``,
  the first that fits."""
  n, size = len(counters), config.image_size
  boxes = np.zeros((n, 4), np.int32)
  if config.random_erasing <= 0:
    return boxes
  bits = random_bits(config.seed, counters, 1 + 4 * ERASING_ATTEMPTS, ERASING_FAMILY)
  uniform = bits / 2.0**32
  erase = uniform[:, 0] < config.random_erasing
  done = ~erase
  lo, hi = config.erasing_scale
  log_lo, log_hi = np.log(config.erasing_ratio)
  for attempt in range(ERASING_ATTEMPTS):
    u = uniform[:, 1 + 4 * attempt : 5 + 4 * attempt]
    area = size * size * (lo + (hi - lo) * u[:, 0])
    aspect = np.exp(log_lo + (log_hi - log_lo) * u[:, 1])
    h = np.round(np.sqrt(area * aspect)).astype(np.int64)
    w = np.round(np.sqrt(area / aspect)).astype(np.int64)
    fits = ~done & (h < size) & (w < size)
    y = below(bits[:, 3 + 4 * attempt], size - h + 1)
    x = below(bits[:, 4 + 4 * attempt], size - w + 1)
    boxes[fits] = np.stack([y, x, h, w], axis=1)[fits]
    done |= fits
  return boxes


def below(bits, n):
  """Integers uniform in [0, n) from 32 random bits: (bits * n) >> 32, exact (Lemire)."""
  return (bits * n) >> 32


def for_examples(config, counters: np.ndarray) -> dict[str, np.ndarray]:
  """What each example at ``counters`` draws for ``config``'s training augmentation.

  Returns:
    'crop': int64 [n, 3] random 32-bit words for the crop (see augment.scale_crop,
      augment.inception_crop);
    'shift': int32 [n, 2] CIFAR's pad-crop offset in [0, 2 * pad] (zeros unless pad_crop);
    'flip': bool [n] (all False unless random_flip);
    'lighting': float32 [n, 3] the RGB offset of AlexNet's PCA lighting (zeros when disabled);
    'erase': int32 [n, 4] random erasing's box (``erasing_boxes``);
    with an augmentation policy, 'policy_op', 'policy_magnitude', 'policy_matrix',
      'policy_resample' (``auto_augment.draw``).
  """
  bits = random_bits(config.seed, counters)
  n, used = len(bits), pixel_draws(config)
  shift = np.zeros((n, 2), np.int32)
  if used.pad:
    shift = below(bits[:, 3:5], 2 * used.pad + 1).astype(np.int32)
  flip = np.zeros(n, bool)
  if used.flip:
    flip = bits[:, 5] >= 1 << 31
  lighting = np.zeros((n, 3), np.float32)
  if used.lighting:
    u1 = (bits[:, 6::2] + 1) / 2.0**32  # (0, 1]: the logarithm stays finite
    u2 = bits[:, 7::2] / 2.0**32
    alpha = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2) * config.lighting_std
    lighting = (alpha * np.asarray(IMAGENET_EIGVAL)) @ np.asarray(IMAGENET_EIGVEC).T
    lighting = lighting.astype(np.float32)
  out = {
    'crop': bits[:, :3],
    'shift': shift,
    'flip': flip,
    'lighting': lighting,
    'erase': erasing_boxes(config, counters),
  }
  if auto_augment.slots(config):
    words = random_bits(config.seed, counters, auto_augment.words(config), POLICY_FAMILY)
    policy = auto_augment.draw(config, words, config.image_size, config.image_size)
    out.update({f'policy_{k}': v for k, v in policy.items()})
  return out
