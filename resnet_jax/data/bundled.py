"""Datasets that ship inside packages, so a run needs no download: scikit-learn's handwritten
digits, JPEG crops of its two sample photos, and random images for throughput measurements."""

from __future__ import annotations

import io

import numpy as np

from resnet_jax.data import source
from resnet_jax.errors import UserError


def digits(split: str, test_fraction: float) -> source.Source:
  """scikit-learn's 1,797 handwritten 8x8 digits as RGB uint8, split stratified with seed 0."""
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split

  data = load_digits()
  images = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)
  images = np.repeat(images[..., None], 3, axis=-1)
  parts = train_test_split(
    images, data.target, test_size=test_fraction, stratify=data.target, random_state=0
  )
  by_split = {'train': (parts[0], parts[2]), 'test': (parts[1], parts[3])}
  if split not in by_split:
    raise UserError(f"digits has splits 'train' and 'test', not {split!r}.")
  split_images, split_labels = by_split[split]
  return source.array_source('digits', split_images, split_labels.astype(np.int32), 10, False)


PHOTO_ASPECTS = (1.0, 4 / 3, 3 / 2, 3 / 4, 2 / 3)  # crop shapes, so every test bucket is used


def photos(split: str, num_examples: int, short_side_range=(64, 160)) -> source.Source:
  """JPEG crops of scikit-learn's two bundled 427x640 photos: an ImageNet-style smoke dataset.

  Eight classes: which photo and which quadrant of it holds the crop's centre. Crops have random
  positions, sizes (shorter side in ``short_side_range``) and aspect ratios (``PHOTO_ASPECTS``),
  so the paper's scale augmentation, JPEG window decoding and multi-scale buckets all see real
  photographs. The examples are a fixed function of ``split`` and ``num_examples``.
  """
  from PIL import Image

  if split not in ('train', 'test'):
    raise UserError(f"photos has splits 'train' and 'test', not {split!r}.")
  images = _sample_photos()
  rng = np.random.default_rng([0 if split == 'train' else 1, num_examples])
  data, labels = [], []
  for _ in range(num_examples):
    which = int(rng.integers(len(images)))
    photo = images[which]
    aspect = PHOTO_ASPECTS[rng.integers(len(PHOTO_ASPECTS))]
    short = int(rng.integers(short_side_range[0], short_side_range[1] + 1))
    h, w = (short, round(short * aspect)) if aspect >= 1 else (round(short / aspect), short)
    h, w = min(h, photo.shape[0]), min(w, photo.shape[1])
    y, x = int(rng.integers(photo.shape[0] - h + 1)), int(rng.integers(photo.shape[1] - w + 1))
    quadrant = 2 * int(y + h / 2 >= photo.shape[0] / 2) + int(x + w / 2 >= photo.shape[1] / 2)
    encoded = io.BytesIO()
    Image.fromarray(photo[y : y + h, x : x + w]).save(encoded, format='JPEG', quality=90)
    data.append(encoded.getvalue())
    labels.append(4 * which + quadrant)
  data_array = np.array(data, dtype=object)
  return source.array_source('photos', data_array, np.array(labels, np.int32), 8, True)


def _sample_photos() -> list[np.ndarray]:
  from sklearn.datasets import load_sample_images

  return list(load_sample_images().images)


def fake(num_examples: int, image_size: int, num_classes: int = 1000) -> source.Source:
  """Random images (a fixed pool, indexed modulo its size), for throughput measurements only."""
  pool = np.random.default_rng(0).integers(0, 256, (64, image_size, image_size, 3), np.uint8)

  def fetch(indices):
    return pool[indices % len(pool)], (indices % num_classes).astype(np.int32)

  return source.Source('fake', num_examples, num_classes, False, fetch)
