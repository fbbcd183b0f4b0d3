"""Shared test fixtures: small configs, image folders, real photos."""

import os

import numpy as np
from PIL import Image

from configs import default, digits


def digits_config(tmp_path, **overrides):
  c = digits.get_config()
  c.mean_image_path = str(tmp_path / 'digits_mean.npy')
  c.log_every = 5
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def sample_photos():
  """scikit-learn's two bundled photos (427x640x3 uint8)."""
  from sklearn.datasets import load_sample_images

  return load_sample_images().images


def write_image_folder(root, *, classes=3, train_per_class=5, test_per_class=3, size=(40, 56)):
  """An ImageFolder tree of JPEG (train) and PNG (test) crops of the sample photos."""
  photos = sample_photos()
  rng = np.random.default_rng(0)
  for split, per_class, ext in [('train', train_per_class, 'jpg'), ('test', test_per_class, 'png')]:
    for c in range(classes):
      os.makedirs(os.path.join(root, split, f'class_{c}'), exist_ok=True)
      for i in range(per_class):
        photo = photos[(c + i) % 2]
        y, x = rng.integers(0, 200), rng.integers(0, 300)
        crop = photo[y : y + size[0], x : x + size[1]]
        Image.fromarray(crop).save(os.path.join(root, split, f'class_{c}', f'{i}.{ext}'))
  return str(root)


def folder_config(tmp_path, data_dir, **overrides):
  c = default.get_config()
  c.dataset = 'folder'
  c.data_dir = data_dir
  c.train_split, c.eval_split = 'train', 'test'
  c.image_size, c.eval_resize = 24, 32
  c.scale_range = (32, 48)
  c.mean_image_path = str(tmp_path / 'folder_mean.npy')
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def random_torchvision_weights(keys_and_shapes, seed: int) -> dict[str, np.ndarray]:
  """Seeded random values for a torchvision ResNet state_dict, from its keys and shapes alone.

  NumPy's legacy RandomState stream is stable across NumPy versions, so a test regenerates the
  exact weights that tests/torch_references.py gave torch. BN statistics are randomised too, so
  that eval mode tests them rather than the identity.
  """
  rng = np.random.RandomState(seed)
  weights = {}
  for key, shape in keys_and_shapes:
    shape = tuple(shape)
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    if key.endswith('num_batches_tracked'):
      value = np.zeros(shape, np.int64)
    elif len(shape) == 4:  # conv: He normal
      value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
    elif key.startswith('fc.'):  # torch Linear's default bound, fan-in of the weight
      bound = 1.0 / np.sqrt(shape[1] if len(shape) == 2 else weights['fc.weight'].shape[1])
      value = rng.uniform(-bound, bound, shape)
    elif key.endswith('running_var'):
      value = rng.uniform(0.5, 2.0, shape)
    elif key.endswith('weight'):  # BN scale
      value = rng.uniform(0.5, 1.5, shape)
    else:  # BN bias and running mean
      value = rng.normal(0.0, 0.2, shape)
    weights[key] = value.astype(np.int64 if key.endswith('num_batches_tracked') else np.float32)
  return weights
