"""The augmentation policies: each op against PIL's on the same images (torchvision and timm apply
these policies to PIL images: torchvision's RandAugment, TrivialAugmentWide, AutoAugment; timm's
RandAugment), the magnitude tables, the policies' draws, and random erasing's boxes."""

import math
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from helpers import TINY, digits_config, mean_of, sample_photos, without_a_compiler
from PIL import Image, ImageEnhance, ImageOps

from resnet_jax.data import auto_augment, draws, input_pipeline, policy_kernel, policy_ops, sources
from resnet_jax.data.input_pipeline import Layout


def torchvision_inverse_affine(center, angle, translate, shear) -> list[float]:
  """torchvision's ``_get_inverse_affine_matrix`` at scale 1 (transforms/functional.py), written
  out."""
  rot, sx, sy = math.radians(angle), math.radians(shear[0]), math.radians(shear[1])
  cx, cy = center
  tx, ty = translate
  a = math.cos(rot - sy) / math.cos(sy)
  b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
  c = math.sin(rot - sy) / math.cos(sy)
  d = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
  m = [d, -b, 0.0, -c, a, 0.0]
  m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty)
  m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty)
  m[2] += cx
  m[5] += cy
  return m


def pil_op(image: np.ndarray, name: str, magnitude: float) -> np.ndarray:
  """torchvision's ``_apply_op`` on a PIL image, written out: the PIL calls its functional ops
  make (transforms/_functional_pil.py), with torchvision's affine matrices."""
  im = Image.fromarray(image)
  width, height = im.size
  black = {'fillcolor': (0, 0, 0)}
  if name in ('ShearX', 'ShearY'):
    shear = math.degrees(math.atan(magnitude))
    shears = (shear, 0.0) if name == 'ShearX' else (0.0, shear)
    matrix = torchvision_inverse_affine((0, 0), 0.0, (0, 0), shears)
    im = im.transform(im.size, Image.AFFINE, matrix, Image.NEAREST, **black)
  elif name in ('TranslateX', 'TranslateY'):
    shift = (int(magnitude), 0) if name == 'TranslateX' else (0, int(magnitude))
    centre = (width * 0.5, height * 0.5)
    matrix = torchvision_inverse_affine(centre, 0.0, shift, (0.0, 0.0))
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
  tf.TensorSpec([6], tf.float64),
  tf.TensorSpec([], tf.int32),
  tf.TensorSpec([3], tf.uint8),
]
BLACK = np.zeros(3, np.uint8)
# Both implementations of the ops: TensorFlow graphs and the C++ op (one slot).
needs_native = pytest.mark.skipif(
  bool(policy_kernel.unavailable_reason()),
  reason=f'C++ policy op unavailable: {policy_kernel.unavailable_reason()}',
)
KERNELS = ['tensorflow', pytest.param('native', marks=needs_native)]


def one_op(kernel: str):
  """``policy_ops.apply_op``'s signature, run by ``kernel``."""
  if kernel == 'tensorflow':
    return tf.function(policy_ops.apply_op, input_signature=SIGNATURE)

  def native(image, op, magnitude, matrix, resample, fill):
    drawn = {'op': [op], 'magnitude': [magnitude], 'matrix': [matrix], 'resample': [resample]}
    return policy_kernel.apply(image, drawn, fill)

  return native


@pytest.mark.parametrize('kernel', KERNELS)
@pytest.mark.parametrize('name', auto_augment.OPS[: auto_augment.OP['SolarizeAdd']])
def test_each_torchvision_op_is_pils_pixel_for_pixel(name, kernel):
  tables = [('rand', 31), ('wide', 31), ('rand', 10)]
  run = one_op(kernel)
  compared = changed = 0
  for image in sample_images():
    height, width = image.shape[:2]
    for kind, bins in tables:
      table = auto_augment.magnitudes(kind, bins, width, height)[name]
      for b in sorted({0, 1, bins // 3, bins // 2, bins - 1}):
        for sign in (1, -1) if name in auto_augment.SIGNED else (1,):
          magnitude = float(table[b]) * sign
          matrix = auto_augment.torchvision_matrix(name, magnitude, width, height)
          op = np.int32(auto_augment.OP[name])
          argument = np.float32(1.0 + magnitude if name in auto_augment.TONE else magnitude)
          ours = run(image, op, argument, matrix, np.int32(0), BLACK).numpy()
          reference = pil_op(image, name, magnitude)
          np.testing.assert_array_equal(ours, reference, err_msg=f'{name} {kind} bin {b} {sign}')
          compared += 1
          changed += not np.array_equal(ours, image)
  assert compared >= 4 * 3 * 4
  if name != 'Identity':
    assert changed >= compared // 4  # the comparisons are of images the op did change


def timm_reference(image, name, level, negative, increasing, resample, fill):
  """timm's ``AugmentOp(name)`` at a given level (after its noise and clip), sign draw and filter,
  written out from timm/data/auto_augment.py: its level-to-argument rules and its PIL calls."""
  im = Image.fromarray(image)
  share = level / 10.0
  signed = lambda v: -v if negative else v  # noqa: E731  (timm's _randomly_negate)
  geometry = {'resample': resample, 'fillcolor': tuple(int(v) for v in fill)}
  if name == 'Rotate':
    im = im.rotate(signed(share * 30.0), **geometry)
  elif name == 'ShearX':
    im = im.transform(im.size, Image.AFFINE, (1, signed(share * 0.3), 0, 0, 1, 0), **geometry)
  elif name == 'ShearY':
    im = im.transform(im.size, Image.AFFINE, (1, 0, 0, signed(share * 0.3), 1, 0), **geometry)
  elif name == 'TranslateXRel':
    pixels = signed(share * 0.45) * im.size[0]
    im = im.transform(im.size, Image.AFFINE, (1, 0, pixels, 0, 1, 0), **geometry)
  elif name == 'TranslateYRel':
    pixels = signed(share * 0.45) * im.size[1]
    im = im.transform(im.size, Image.AFFINE, (1, 0, 0, 0, 1, pixels), **geometry)
  elif name == 'Posterize':
    bits = int(share * 4)
    bits = 4 - bits if increasing else bits
    # Keeping 0 bits is black: PIL's posterize lookup table then was i & ~255, which the PIL of
    # 2021 (RSB's) applied and PIL 13 refuses (bits must be 1 to 8).
    im = ImageOps.posterize(im, bits) if bits else Image.new('RGB', im.size)
  elif name == 'Solarize':
    threshold = min(256, int(share * 256))
    im = ImageOps.solarize(im, 256 - threshold if increasing else threshold)
  elif name == 'SolarizeAdd':
    add = min(128, int(share * 110))
    im = im.point([min(255, i + add) if i < 128 else i for i in range(256)] * 3)
  elif name in ('Color', 'Contrast', 'Brightness', 'Sharpness'):
    factor = max(0.1, 1.0 + signed(share * 0.9)) if increasing else share * 1.8 + 0.1
    im = getattr(ImageEnhance, name)(im).enhance(factor)
  else:
    im = {'AutoContrast': ImageOps.autocontrast, 'Equalize': ImageOps.equalize}.get(
      name, ImageOps.invert
    )(im)
  return np.asarray(im)


@pytest.mark.parametrize('kernel', KERNELS)
@pytest.mark.parametrize('name', auto_augment.TIMM_OPS)
def test_each_timm_op_is_pils_pixel_for_pixel(name, kernel):
  """timm's ops at several levels, both signs, both argument sets, and (the geometric ops) both
  filters with ImageNet's mean as the fill; the bilinear and bicubic paths are PIL's
  ImagingGenericTransform in float64."""
  run = one_op(kernel)
  fill = np.array([124, 116, 104], np.uint8)
  geometric = name in ('Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')
  filters = (Image.BILINEAR, Image.BICUBIC) if geometric else (Image.BILINEAR,)
  compared = changed = 0
  for image in sample_images():
    height, width = image.shape[:2]
    for level in (0.0, 1.3, 5.0, 7.0, 8.72, 10.0):
      for increasing in (True, False):
        for negative in (False, True):
          op, argument, matrix = auto_augment.timm_op(
            name, level, negative, increasing, width, height
          )
          for resample in filters:
            ours = run(
              image,
              np.int32(auto_augment.OP[op]),
              np.float32(argument),
              matrix,
              np.int32(auto_augment.RESAMPLING.index(Image.Resampling(resample).name.lower())),
              fill,
            ).numpy()
            reference = timm_reference(image, name, level, negative, increasing, resample, fill)
            detail = f'{name} level {level} increasing {increasing} negative {negative} {resample}'
            np.testing.assert_array_equal(ours, reference, err_msg=detail)
            compared += 1
            changed += not np.array_equal(ours, image)
  assert compared >= 4 * 6 * 4
  assert changed >= compared // 2  # the comparisons are of images the op did change


@pytest.mark.torch
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
  choices = counts[: len(auto_augment.CHOICES)]
  assert np.all(np.abs(choices - expected) < 5 * np.sqrt(expected)) and choices.sum() == 40_000
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


def test_timm_randaugment_draws_follow_timms_rule():
  """rand-m7-n2-mstd0.5-inc1: each slot an op uniform over 15 with replacement, applied half the
  time, at a level of normal(7, 0.5), signed half the time, bilinear or bicubic half the time."""
  options = dict(
    randaugment_magnitude=7, randaugment_magnitude_std=0.5, randaugment_increasing=True
  )
  drawn, config = policy_draws('randaugment_timm', n=30_000, **options)
  ops = drawn['policy_op']
  assert ops.shape == (30_000, 2)
  identity = ops == auto_augment.OP['Identity']
  assert 0.49 < identity.mean() < 0.51  # randaugment_op_prob 0.5
  counts = np.bincount(ops[~identity], minlength=len(auto_augment.OPS))
  # timm's 15 ops, TranslateXRel and YRel as our TranslateX and Y: each 1/15 of the applied.
  timm = [auto_augment.OP[n.removesuffix('Rel')] for n in auto_augment.TIMM_OPS]
  expected = (~identity).sum() / 15
  assert np.all(np.abs(counts[timm] - expected) < 5 * np.sqrt(expected))
  both = ~identity.any(axis=1)
  assert np.mean(ops[both, 0] == ops[both, 1]) == pytest.approx(1 / 15, abs=0.01)
  # A rotation's angle is +-3 x its level: the level's mean and sd, and its sign.
  rotate = ops == auto_augment.OP['Rotate']
  matrix = drawn['policy_matrix'][rotate]
  angles = np.degrees(np.arctan2(-matrix[:, 1], matrix[:, 0]))  # PIL's matrix of -angle
  levels = np.abs(angles) / 3.0
  assert levels.mean() == pytest.approx(7.0, abs=0.03) and levels.std() == pytest.approx(
    0.5, abs=0.03
  )
  assert 0.47 < (angles < 0).mean() < 0.53
  resample = drawn['policy_resample'][rotate]
  assert set(np.unique(resample)) == {1, 2} and 0.47 < (resample == 2).mean() < 0.53
  # The increasing tone ops: a factor 1 -+ 0.9 x level / 10, so about 0.37 or 1.63.
  factors = drawn['policy_magnitude'][ops == auto_augment.OP['Color']]
  assert np.all((np.abs(factors - 0.37) < 0.2) | (np.abs(factors - 1.63) < 0.2))
  assert list(auto_augment.fill(config)) == [124, 116, 104]  # timm's img_mean for ImageNet's
  fixed, _ = policy_draws('randaugment_timm', n=2000, randaugment_interpolation='bicubic')
  assert np.all(fixed['policy_resample'] == 2)
  uniform, _ = policy_draws('randaugment_timm', n=30_000, randaugment_magnitude_std=math.inf)
  rotate = uniform['policy_op'] == auto_augment.OP['Rotate']
  matrix = uniform['policy_matrix'][rotate]
  levels = np.abs(np.degrees(np.arctan2(-matrix[:, 1], matrix[:, 0]))) / 3.0
  assert levels.max() <= 9.0 and levels.mean() == pytest.approx(4.5, abs=0.15)  # U(0, 9)


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


def pil_drawn(image, name, argument, matrix, resample, fill):
  """An op as ``auto_augment.draw`` hands it over (the argument PIL receives, PIL's matrix and
  filter), done with PIL."""
  if name in auto_augment.GEOMETRIC:
    im = Image.fromarray(image)
    method = [Image.NEAREST, Image.BILINEAR, Image.BICUBIC][resample]
    fillcolor = tuple(int(v) for v in fill)
    return np.asarray(
      im.transform(im.size, Image.AFFINE, tuple(matrix), method, fillcolor=fillcolor)
    )
  if name == 'SolarizeAdd':
    lut = [min(255, i + int(argument)) if i < 128 else i for i in range(256)]
    return np.asarray(Image.fromarray(image).point(lut * 3))
  if name == 'Posterize' and argument == 0:
    return np.zeros_like(image)
  return pil_op(image, name, argument - (name in auto_augment.TONE))  # pil_op takes factor - 1


@pytest.mark.slow  # four tf.data pipelines
@pytest.mark.parametrize(
  'policy, other, kernel',
  [
    ('autoaugment', 'trivialaugment', 'auto'),
    ('randaugment_timm', 'randaugment_timm', 'auto'),
    ('randaugment_timm', 'randaugment_timm', 'tensorflow'),
  ],
)
def test_the_policy_is_applied_in_the_real_pipeline_and_keyed_on_the_position(
  tmp_path, policy, other, kernel
):
  """digits at 16 px through tf.data with a policy (run by the C++ op where it builds, or by
  TensorFlow's graphs): the crops are the ops of their draws on the plain crops; 1 and 2
  processes build the same rows with ``other`` and random erasing's boxes (the 1-vs-2-process
  training test runs digits)."""
  options = dict(image_size=16, eval_resize=16, train_augment='none', policy_kernel=kernel)
  plain = digits_config(tmp_path, **options)
  timm = dict(randaugment_magnitude=9, randaugment_magnitude_std=0.5, randaugment_increasing=True)
  config = digits_config(
    tmp_path, **options, augment_policy=policy, **(timm if policy == 'randaugment_timm' else {})
  )
  source = sources.get_source(plain, 'train')
  first = lambda c, layout: next(  # noqa: E731
    input_pipeline.train_dataset(c, source, layout, mean=mean_of(c)).as_numpy_iterator()
  )
  before, after = first(plain, Layout(64, 0, 1)), first(config, Layout(64, 0, 1))
  drawn = draws.for_examples(config, np.arange(64))
  fill = auto_augment.fill(config)
  applied = 0
  for row in range(64):
    image = before['image'][row]
    for s in range(2):
      name = auto_augment.OPS[drawn['policy_op'][row, s]]
      argument = float(drawn['policy_magnitude'][row, s])
      matrix, resample = drawn['policy_matrix'][row, s], drawn['policy_resample'][row, s]
      if name != 'Identity':
        image = pil_drawn(image, name, argument, matrix, resample, fill)
    np.testing.assert_array_equal(after['image'][row], image, err_msg=f'row {row}')
    applied += not np.array_equal(image, before['image'][row])
  assert applied > 32
  erasing = digits_config(tmp_path, **TINY, augment_policy=other, random_erasing=0.25)
  whole = first(erasing, Layout(64, 0, 1))
  halves = [first(erasing, Layout(64, p, 2)) for p in (0, 1)]
  for key, value in whole.items():
    np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), value, err_msg=key)
  assert whole['erase'][:, 2].any()


@pytest.mark.slow  # a fresh interpreter whose build of the op fails
def test_without_a_compiler_auto_runs_the_graphs_and_says_so_once(tmp_path):
  """No C++ compiler: policy_kernel='auto' builds the same batch as 'tensorflow' (TensorFlow's
  graphs), after one log line that says why and what to install."""
  code = f"""
from pathlib import Path
from helpers import digits_config, mean_of
from resnet_jax import console
from resnet_jax.data import input_pipeline, sources
console.setup()
batches = []
for kernel in ('auto', 'tensorflow', 'auto'):
  config = digits_config(
    Path({str(tmp_path)!r}), image_size=16, eval_resize=16, augment_policy='randaugment_timm',
    randaugment_magnitude=9, randaugment_magnitude_std=0.5, policy_kernel=kernel)
  layout = input_pipeline.Layout(64, 0, 1)
  data = input_pipeline.train_dataset(
    config, sources.get_source(config, 'train'), layout, mean=mean_of(config))
  batches.append(next(data.as_numpy_iterator())['image'])
print('equal', all((b == batches[1]).all() for b in batches))
"""
  done = without_a_compiler(code, tmp_path)
  assert done.returncode == 0, done.stderr[-3000:]
  lines = done.stdout.splitlines()
  assert lines[-1] == 'equal True', lines
  fallback = [line for line in lines if 'unavailable' in line]
  assert len(fallback) == 1, lines
  assert fallback[0].endswith(
    "the augmentation policies' ops in C++ unavailable (no C++ compiler 'no-such-compiler'); "
    "using TensorFlow's graphs of the same ops: install a C++ compiler (Debian/Ubuntu: apt-get "
    'install g++), or set --config.policy_kernel=tensorflow'
  ), fallback
