"""The augmentation policies: each op against PIL's on the same images (torchvision applies these
policies to PIL images: RandAugment, TrivialAugmentWide, AutoAugment), the magnitude tables, the
policies' draws, and random erasing's boxes."""

import math
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from helpers import TINY, digits_config, mean_of, sample_photos
from PIL import Image, ImageEnhance, ImageOps

from resnet_jax.data import auto_augment, draws, input_pipeline, policy_ops, sources
from resnet_jax.data.input_pipeline import Layout


def pil_op(image: np.ndarray, name: str, magnitude: float) -> np.ndarray:
  """torchvision's ``_apply_op`` on a PIL image, written out: the PIL calls its functional ops
  make (transforms/_functional_pil.py), with torchvision's affine matrices."""
  im = Image.fromarray(image)
  width, height = im.size
  black = {'fillcolor': (0, 0, 0)}
  if name in ('ShearX', 'ShearY'):
    shear = math.degrees(math.atan(magnitude))
    shears = (shear, 0.0) if name == 'ShearX' else (0.0, shear)
    matrix = auto_augment._torchvision_inverse_affine((0, 0), 0.0, (0, 0), shears)
    im = im.transform(im.size, Image.AFFINE, matrix, Image.NEAREST, **black)
  elif name in ('TranslateX', 'TranslateY'):
    shift = (int(magnitude), 0) if name == 'TranslateX' else (0, int(magnitude))
    centre = (width * 0.5, height * 0.5)
    matrix = auto_augment._torchvision_inverse_affine(centre, 0.0, shift, (0.0, 0.0))
    im = im.transform(im.size, Image.AFFINE, matrix, Image.NEAREST, **black)
  elif name == 'Rotate':
    im = im.rotate(magnitude, Image.NEAREST, False, None, **black)
  elif name in ('Brightness', 'Color', 'Contrast', 'Sharpness'):
    im = getattr(ImageEnhance, name)(im).enhance(1.0 + magnitude)
  elif name == 'Posterize':
    im = ImageOps.posterize(im, int(magnitude))
  elif name == 'Solarize':
    im = ImageOps.solarize(im, magnitude)
  elif name == 'AutoContrast':
    im = ImageOps.autocontrast(im)
  elif name == 'Equalize':
    im = ImageOps.equalize(im)
  elif name == 'Invert':
    im = ImageOps.invert(im)
  return np.asarray(im)


def sample_images():
  """Random, low-contrast, one-flat-channel and photo crops, square and not (odd sizes too)."""
  rng = np.random.default_rng(0)
  photo = sample_photos()[0]
  images = [
    rng.integers(0, 256, (24, 24, 3), dtype=np.uint8),
    (rng.integers(0, 256, (23, 23, 3)) // 5 + 90).astype(np.uint8),
    photo[100:132, 200:232],
    photo[40:71, 10:52],
  ]
  images[0][..., 1] = 77  # a flat channel: autocontrast and equalize leave it
  return images


SIGNATURE = [
  tf.TensorSpec([None, None, 3], tf.uint8),
  tf.TensorSpec([], tf.int32),
  tf.TensorSpec([], tf.float32),
  tf.TensorSpec([6], tf.int64),
]


@pytest.mark.parametrize('name', auto_augment.OPS)
def test_each_op_is_pils_pixel_for_pixel(name):
  tables = [('rand', 31), ('wide', 31), ('rand', 10)]
  run = tf.function(policy_ops.apply_op, input_signature=SIGNATURE)
  compared = changed = 0
  for image in sample_images():
    height, width = image.shape[:2]
    for kind, bins in tables:
      table = auto_augment.magnitudes(kind, bins, width, height)[name]
      for b in sorted({0, 1, bins // 3, bins // 2, bins - 1}):
        for sign in (1, -1) if name in auto_augment.SIGNED else (1,):
          magnitude = float(table[b]) * sign
          matrix = auto_augment.geometry_matrix(name, magnitude, width, height)
          op = np.int32(auto_augment.OP[name])
          ours = run(image, op, np.float32(magnitude), matrix).numpy()
          reference = pil_op(image, name, magnitude)
          np.testing.assert_array_equal(ours, reference, err_msg=f'{name} {kind} bin {b} {sign}')
          compared += 1
          changed += not np.array_equal(ours, image)
  assert compared >= 4 * 3 * 4
  if name != 'Identity':
    assert changed >= compared // 4  # the comparisons are of images the op did change


def test_magnitude_tables_are_torchvisions():
  rand = auto_augment.magnitudes('rand', 31, 224, 160)
  assert rand['TranslateX'][-1] == np.float32(150.0 / 331.0 * 224)  # torchvision: image width
  assert rand['TranslateY'][-1] == np.float32(150.0 / 331.0 * 160)
  assert rand['Rotate'][9] == np.float32(9.0) and rand['Solarize'][0] == 255.0
  assert list(rand['Posterize'][[0, 4, 30]]) == [8, 7, 4]
  wide = auto_augment.magnitudes('wide', 31, 224, 224)
  assert wide['TranslateX'][-1] == 32.0 and wide['Rotate'][-1] == 135.0
  assert list(wide['Posterize'][[0, 30]]) == [8, 2]
  torch = pytest.importorskip('torch')
  ends = ((0.3, 31), (0.9, 31), (0.99, 31), (135.0, 31), (32.0, 31), (150 / 331 * 224, 31))
  for start, end, n in (*((0.0, e, n) for e, n in ends), (255.0, 0.0, 10), (0.0, 30.0, 10)):
    expected = torch.linspace(start, end, n).numpy()
    np.testing.assert_array_equal(auto_augment.torch_linspace(start, end, n), expected)


def policy_draws(policy, n=20_000, **options):
  config = digits_config(Path('/nonexistent'), augment_policy=policy, **options)
  return draws.for_examples(config, np.arange(n)), config


def test_randaugment_draws_two_uniform_ops_at_the_fixed_magnitude():
  drawn, config = policy_draws('randaugment', randaugment_magnitude=9)
  ops = drawn['policy_op']
  assert ops.shape == (20_000, 2)
  counts = np.bincount(ops.ravel(), minlength=len(auto_augment.OPS))
  assert counts[auto_augment.OP['Invert']] == 0  # not in RandAugment's table
  expected = 40_000 / len(auto_augment.CHOICES)
  assert np.all(np.abs(counts[:-1] - expected) < 5 * np.sqrt(expected))
  table = auto_augment.magnitudes('rand', 31, config.image_size, config.image_size)
  rotate = ops == auto_augment.OP['Rotate']
  assert set(np.unique(drawn['policy_magnitude'][rotate])) == {-table['Rotate'][9], 9.0}
  assert 0.47 < (drawn['policy_magnitude'][rotate] < 0).mean() < 0.53


def test_trivialaugment_draws_one_op_at_a_uniform_bin():
  drawn, config = policy_draws('trivialaugment')
  assert drawn['policy_op'].shape == (20_000, 1)
  table = auto_augment.magnitudes('wide', 31, config.image_size, config.image_size)['Rotate']
  rotate = drawn['policy_op'][:, 0] == auto_augment.OP['Rotate']
  angles = np.abs(drawn['policy_magnitude'][rotate, 0])
  bins = np.searchsorted(table, angles)
  np.testing.assert_array_equal(table[bins], angles)
  assert len(np.unique(bins)) == 31


def test_autoaugment_applies_each_step_with_its_probability():
  drawn, _ = policy_draws('autoaugment', n=50_000)
  ops = drawn['policy_op']
  # Invert is a step of sub-policies 13, 17 and 22 (of 25), each at 0.6, and nowhere else.
  invert = (ops == auto_augment.OP['Invert']).sum()
  assert invert == pytest.approx(50_000 * 3 / 25 * 0.6, rel=0.05)
  # Rotate is at bins 9, 8, 3, 8, 9, 8 of torchvision's 10 (0 to 30 degrees), signed.
  rotate = ops == auto_augment.OP['Rotate']
  table = auto_augment.magnitudes('rand', 10, 16, 16)['Rotate']
  assert set(np.abs(drawn['policy_magnitude'][rotate])) == {table[3], table[8], table[9]}
  assert np.all(drawn['policy_matrix'][rotate][:, 1] != 0)


def test_random_erasing_boxes_follow_torchvisions_rule():
  config = digits_config(Path('/nonexistent'), image_size=32, eval_resize=32, random_erasing=0.5)
  boxes = draws.erasing_boxes(config, np.arange(20_000))
  erased = boxes[:, 2] > 0
  assert 0.48 < erased.mean() < 0.52  # a rare example finds no box in 10 tries
  y, x, h, w = boxes[erased].T
  assert np.all((y >= 0) & (x >= 0) & (y + h <= 32) & (x + w <= 32) & (h < 32) & (w < 32))
  # round(sqrt(area * aspect)) of an area share in (0.02, 0.33): the box's share up to rounding.
  share = h * w / 1024
  assert share.min() >= 0.01 and share.max() <= 0.45 and 0.12 < share.mean() < 0.2
  aspect = h / w
  assert np.median(aspect) == pytest.approx(1.0, abs=0.1) and aspect.max() <= 3.3 * 1.5
  again = draws.erasing_boxes(config, np.arange(100, 200))
  np.testing.assert_array_equal(again, boxes[100:200])  # a function of the position alone


@pytest.mark.slow  # three tf.data pipelines
def test_the_policy_is_applied_in_the_real_pipeline_and_keyed_on_the_position(tmp_path):
  """digits at 16 px through tf.data with AutoAugment: the crops are the ops of their draws on the
  plain crops; 1 and 2 processes build the same rows (also with TrivialAugmentWide and random
  erasing's boxes, as the 1-vs-2-process training test runs digits)."""
  plain = digits_config(tmp_path, image_size=16, eval_resize=16, train_augment='none')
  policy = digits_config(
    tmp_path, image_size=16, eval_resize=16, train_augment='none', augment_policy='autoaugment'
  )
  source = sources.get_source(plain, 'train')
  first = lambda c, layout: next(  # noqa: E731
    input_pipeline.train_dataset(c, source, layout, mean=mean_of(c)).as_numpy_iterator()
  )
  before, after = first(plain, Layout(64, 0, 1)), first(policy, Layout(64, 0, 1))
  drawn = draws.for_examples(policy, np.arange(64))
  applied = 0
  for row in range(64):
    image = before['image'][row]
    for s in range(2):
      name = auto_augment.OPS[drawn['policy_op'][row, s]]
      magnitude = float(drawn['policy_magnitude'][row, s])
      image = pil_op(image, name, magnitude) if name != 'Identity' else image
    np.testing.assert_array_equal(after['image'][row], image, err_msg=f'row {row}')
    applied += not np.array_equal(image, before['image'][row])
  assert applied > 32
  erasing = digits_config(tmp_path, **TINY, augment_policy='trivialaugment', random_erasing=0.25)
  for config in (policy, erasing):
    whole = first(config, Layout(64, 0, 1))
    halves = [first(config, Layout(64, p, 2)) for p in (0, 1)]
    for key, value in whole.items():
      np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), value, err_msg=key)
  assert whole['erase'][:, 2].any()
