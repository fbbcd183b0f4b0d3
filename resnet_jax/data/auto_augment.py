"""Augmentation policies: torchvision's RandAugment, TrivialAugmentWide and AutoAugment (ImageNet),
and timm's RandAugment: which ops each example gets.

As those libraries apply them to PIL images (torchvision's classification reference scripts'
default; timm's are PIL throughout): the same operations, magnitude tables and policies, with
each operation's arithmetic PIL's. The ops (``policy_ops``) run in tf.data on the crop rounded to
uint8; every random choice (the ops, their magnitudes and signs, AutoAugment's sub-policy and
odds, timm's odds and resampling filters) is drawn in numpy from the run seed and the example's
global position (``draw``), with the geometric ops' matrices (the ``data`` PIL's ``transform``
receives) computed there in float64, so a batch is the same whichever process builds it and after
a resume.

No TensorFlow here: the draws are numpy (``draws`` computes them for many examples at once).
"""

from __future__ import annotations

import math

import numpy as np

# Op ids: the order of torchvision's RandAugment table, then Invert, then timm's SolarizeAdd.
OPS = (
  'Identity',
  'ShearX',
  'ShearY',
  'TranslateX',
  'TranslateY',
  'Rotate',
  'Brightness',
  'Color',
  'Contrast',
  'Sharpness',
  'Posterize',
  'Solarize',
  'AutoContrast',
  'Equalize',
  'Invert',
  'SolarizeAdd',
)
OP = {name: i for i, name in enumerate(OPS)}
GEOMETRIC = ('ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Rotate')
TONE = ('Brightness', 'Color', 'Contrast', 'Sharpness')  # ImageEnhance's: the argument is a factor
SIGNED = (*GEOMETRIC, *TONE)
# torchvision's RandAugment and TrivialAugmentWide choose among these (its tables have no Invert).
CHOICES = OPS[: OP['Invert']]
# PIL's filters for the geometric ops, by id: torchvision's policies use nearest; timm's draw
# bilinear or bicubic (``randaugment_interpolation``).
RESAMPLING = ('nearest', 'bilinear', 'bicubic')
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # the matrix of a slot without a geometric op

# AutoAugment's ImageNet policy (Cubuk et al. 2019, as torchvision lists it): 25 sub-policies of
# two (op, probability, magnitude bin of 10) steps.
IMAGENET_POLICY = (
  (('Posterize', 0.4, 8), ('Rotate', 0.6, 9)),
  (('Solarize', 0.6, 5), ('AutoContrast', 0.6, None)),
  (('Equalize', 0.8, None), ('Equalize', 0.6, None)),
  (('Posterize', 0.6, 7), ('Posterize', 0.6, 6)),
  (('Equalize', 0.4, None), ('Solarize', 0.2, 4)),
  (('Equalize', 0.4, None), ('Rotate', 0.8, 8)),
  (('Solarize', 0.6, 3), ('Equalize', 0.6, None)),
  (('Posterize', 0.8, 5), ('Equalize', 1.0, None)),
  (('Rotate', 0.2, 3), ('Solarize', 0.6, 8)),
  (('Equalize', 0.6, None), ('Posterize', 0.4, 6)),
  (('Rotate', 0.8, 8), ('Color', 0.4, 0)),
  (('Rotate', 0.4, 9), ('Equalize', 0.6, None)),
  (('Equalize', 0.0, None), ('Equalize', 0.8, None)),
  (('Invert', 0.6, None), ('Equalize', 1.0, None)),
  (('Color', 0.6, 4), ('Contrast', 1.0, 8)),
  (('Rotate', 0.8, 8), ('Color', 1.0, 2)),
  (('Color', 0.8, 8), ('Solarize', 0.8, 7)),
  (('Sharpness', 0.4, 7), ('Invert', 0.6, None)),
  (('ShearX', 0.6, 5), ('Equalize', 1.0, None)),
  (('Color', 0.4, 0), ('Equalize', 0.6, None)),
  (('Equalize', 0.4, None), ('Solarize', 0.2, 4)),
  (('Solarize', 0.6, 5), ('AutoContrast', 0.6, None)),
  (('Invert', 0.6, None), ('Equalize', 1.0, None)),
  (('Color', 0.6, 4), ('Contrast', 1.0, 8)),
  (('Equalize', 0.8, None), ('Equalize', 0.6, None)),
)


def torch_linspace(start: float, end: float, steps: int) -> np.ndarray:
  """float32 values of ``torch.linspace(start, end, steps)``: its CPU kernel counts from the start
  for the first half and back from the end for the rest, each a fused multiply-add of the
  float32 step (one rounding: a float32 product is exact in float64)."""
  step = np.float64(np.float32((np.float32(end) - np.float32(start)) / np.float32(steps - 1)))
  i = np.arange(steps)
  head = np.float64(np.float32(start)) + step * i
  tail = np.float64(np.float32(end)) - step * (steps - 1 - i)
  return np.where(i < steps // 2, head, tail).astype(np.float32)


def magnitudes(table: str, num_bins: int, width: int, height: int) -> dict[str, np.ndarray]:
  """Each op's magnitude per bin: torchvision's RandAugment / AutoAugment ('rand') or
  TrivialAugmentWide ('wide') table, as float32 (ops without a magnitude: zeros)."""
  wide = table == 'wide'
  space = torch_linspace(0.0, 0.99 if wide else 0.3, num_bins)
  tone = torch_linspace(0.0, 0.99 if wide else 0.9, num_bins)
  levels = 6 if wide else 4
  posterize = 8 - np.round(np.arange(num_bins) / ((num_bins - 1) / levels))  # half to even
  out = {name: np.zeros(num_bins, np.float32) for name in OPS}
  out.update(
    ShearX=space,
    ShearY=space,
    TranslateX=torch_linspace(0.0, 32.0 if wide else 150.0 / 331.0 * width, num_bins),
    TranslateY=torch_linspace(0.0, 32.0 if wide else 150.0 / 331.0 * height, num_bins),
    Rotate=torch_linspace(0.0, 135.0 if wide else 30.0, num_bins),
    Brightness=tone,
    Color=tone,
    Contrast=tone,
    Sharpness=tone,
    Posterize=posterize.astype(np.float32),
    Solarize=torch_linspace(255.0, 0.0, num_bins),
  )
  return out


def _torchvision_inverse_affine(center, angle, translate, shear) -> list[float]:
  """torchvision's inverse matrix of ``affine`` at scale 1 (what it hands PIL), in float64."""
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


def _pil_rotate_matrix(angle: float, width: int, height: int) -> list[float]:
  """PIL's ``Image.rotate`` inverse matrix about the image centre (expand=False)."""
  cx, cy = width / 2.0, height / 2.0
  theta = -math.radians(angle % 360.0)
  cos, sin = round(math.cos(theta), 15), round(math.sin(theta), 15)
  m = [cos, sin, 0.0, -sin, cos, 0.0]
  m[2] = m[0] * -cx + m[1] * -cy + m[2] + cx
  m[5] = m[3] * -cx + m[4] * -cy + m[5] + cy
  return m


def torchvision_matrix(op: str, magnitude: float, width: int, height: int) -> np.ndarray:
  """The inverse affine matrix torchvision hands PIL for a geometric op (float64 [6]: source x of
  output pixel centre (x, y) is ``m0 x + m1 y + m2``)."""
  if op == 'ShearX':
    m = _torchvision_inverse_affine((0, 0), 0.0, (0, 0), (math.degrees(math.atan(magnitude)), 0))
  elif op == 'ShearY':
    m = _torchvision_inverse_affine((0, 0), 0.0, (0, 0), (0, math.degrees(math.atan(magnitude))))
  elif op in ('TranslateX', 'TranslateY'):
    shift = (int(magnitude), 0) if op == 'TranslateX' else (0, int(magnitude))
    m = _torchvision_inverse_affine((width * 0.5, height * 0.5), 0.0, shift, (0.0, 0.0))
  elif op == 'Rotate':
    m = _pil_rotate_matrix(magnitude, width, height)
  else:
    m = IDENTITY
  return np.array(m, np.float64)


# timm's RandAugment (timm/data/auto_augment.py; its train script's ``--aa rand-m9-mstd0.5-inc1``
# strings): its 15 ops, the "increasing" set's or the original's arguments. An op's strength is
# its level / 10 (timm's _LEVEL_DENOM); TranslateXRel/YRel move by up to 0.45 of the side.
TIMM_OPS = (
  'AutoContrast',
  'Equalize',
  'Invert',
  'Rotate',
  'Posterize',
  'Solarize',
  'SolarizeAdd',
  'Color',
  'Contrast',
  'Brightness',
  'Sharpness',
  'ShearX',
  'ShearY',
  'TranslateXRel',
  'TranslateYRel',
)
TIMM_MAX_LEVEL = 10.0
TIMM_TRANSLATE_SHARE = 0.45


def timm_op(name: str, level: float, negative: bool, increasing: bool, width: int, height: int):
  """What timm's ``AugmentOp`` named ``name`` does at ``level`` (its magnitude after the noise and
  the clip to [0, 10]): our op, its argument as PIL receives it (a factor, bits, a threshold or an
  addend) and the affine matrix. Python floats, as timm computes them."""
  share = level / TIMM_MAX_LEVEL
  sign = -1.0 if negative else 1.0
  matrix = IDENTITY
  argument = 0.0
  if name == 'Rotate':
    op, matrix = 'Rotate', _pil_rotate_matrix(sign * (share * 30.0), width, height)
  elif name in ('ShearX', 'ShearY'):
    op, shear = name, sign * (share * 0.3)
    matrix = (
      [1.0, shear, 0.0, 0.0, 1.0, 0.0] if name == 'ShearX' else [1.0, 0.0, 0.0, shear, 1.0, 0.0]
    )
  elif name in ('TranslateXRel', 'TranslateYRel'):
    op, share_moved = name[:-3], sign * (share * TIMM_TRANSLATE_SHARE)
    if op == 'TranslateX':
      matrix = [1.0, 0.0, share_moved * width, 0.0, 1.0, 0.0]
    else:
      matrix = [1.0, 0.0, 0.0, 0.0, 1.0, share_moved * height]
  elif name == 'Posterize':  # bits kept: 0..4, more of the image kept as the level rises ...
    op, argument = name, int(share * 4)
    if increasing:  # ... or fewer
      argument = 4 - argument
  elif name == 'Solarize':  # threshold: pixels at or above it are inverted
    op, argument = name, min(256, int(share * 256))
    if increasing:
      argument = 256 - argument
  elif name == 'SolarizeAdd':  # below 128: + this, to at most 255
    op, argument = name, min(128, int(share * 110))
  elif name in TONE:  # increasing: 1 (no change) moved by up to 0.9 either way, at least 0.1;
    op = name  # otherwise 0.1 to 1.9, unsigned
    argument = max(0.1, 1.0 + sign * (share * 0.9)) if increasing else share * 1.8 + 0.1
  else:  # AutoContrast, Equalize, Invert
    op = name
  return op, argument, np.array(matrix, np.float64)


def timm_levels(config, first: np.ndarray, second: np.ndarray) -> np.ndarray:
  """Each op's level: ``randaugment_magnitude`` plus normal noise of sd
  ``randaugment_magnitude_std`` (Box-Muller on two words; inf: uniform in [0, magnitude]),
  clipped to [0, 10]."""
  m, sd = float(config.randaugment_magnitude), float(config.randaugment_magnitude_std)
  if math.isinf(sd):
    level = m * _uniform(first)
  elif sd > 0:
    u1 = (first + 1) / 2.0**32  # (0, 1]: the logarithm stays finite
    level = m + sd * np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * _uniform(second))
  else:
    level = np.full(first.shape, m)
  return np.clip(level, 0.0, TIMM_MAX_LEVEL)


def _uniform(bits) -> np.ndarray:
  """[0, 1) from 32-bit words (torch.rand's range)."""
  return bits / 2.0**32


def _below(bits, n):
  return (bits * n) >> 32


def words(config) -> int:
  """Per-example random words a policy uses. torchvision's: 0-3 the ops of up to 4 slots
  (config_check's bound on randaugment_ops), 4-7 their magnitude bins (TrivialAugmentWide) or
  odds (AutoAugment), 12-15 their signs, 16 AutoAugment's sub-policy. timm's: 0-3 the ops, 4-7
  whether each applies, 8-11 and 16-19 their levels' noise, 12-15 their signs, 20-23 their
  filters."""
  return 24 if config.augment_policy == 'randaugment_timm' else 17


def fill(config) -> np.ndarray:
  """The colour of the geometric ops' uncovered pixels: torchvision's black, or timm's
  ``img_mean``, the normalisation's channel mean rounded (124, 116, 104 for ImageNet's)."""
  if config.augment_policy != 'randaugment_timm':
    return np.zeros(3, np.uint8)
  return np.array([min(255, round(v)) for v in config.channel_mean], np.uint8)


def filters(config) -> tuple[str, ...]:
  """The filters a policy's geometric ops may draw (of RESAMPLING)."""
  if config.augment_policy != 'randaugment_timm':
    return ('nearest',)
  if config.randaugment_interpolation == 'random':
    return ('bilinear', 'bicubic')
  return (config.randaugment_interpolation,)


def draw(config, bits: np.ndarray, width: int, height: int) -> dict[str, np.ndarray]:
  """The policy's per-example ops from [n, words(config)] random words.

  Returns:
    'op': int32 [n, slots], the op of each slot in order (Identity where none applies);
    'magnitude': float32 [n, slots], its argument as PIL receives it: the enhancement factor of
      the tone ops, posterize's bits, solarize's threshold, SolarizeAdd's addend;
    'matrix': float64 [n, slots, 6], the geometric ops' inverse affine matrices (PIL's data);
    'resample': int32 [n, slots], their filter (an index of RESAMPLING).
  """
  n = len(bits)
  kind = config.augment_policy
  if kind == 'randaugment_timm':
    return _draw_timm(config, bits, width, height)
  if kind == 'randaugment':
    slots = config.randaugment_ops
    table = magnitudes('rand', config.randaugment_bins, width, height)
    ops = _below(bits[:, :slots], len(CHOICES))
    level = config.randaugment_magnitude
    negative = bits[:, 12 : 12 + slots] >= 1 << 31
    names = [[CHOICES[o] for o in row] for row in ops]
    values = np.array([[table[o][level] for o in row] for row in names])
  elif kind == 'trivialaugment':
    slots = 1
    table = magnitudes('wide', 31, width, height)
    names = [[CHOICES[o]] for o in _below(bits[:, 0], len(CHOICES))]
    bins = _below(bits[:, 4], 31)
    values = np.array([[table[r[0]][b]] for r, b in zip(names, bins, strict=True)])
    negative = bits[:, 12:13] >= 1 << 31
  elif kind == 'autoaugment':
    slots = 2
    table = magnitudes('rand', 10, width, height)
    policy = _below(bits[:, 16], len(IMAGENET_POLICY))
    odds = _uniform(bits[:, 4:6])
    names, values = [], []
    for p, u in zip(policy, odds, strict=True):
      steps = IMAGENET_POLICY[p]
      names.append([op if u[i] <= prob else 'Identity' for i, (op, prob, _) in enumerate(steps)])
      values.append([0.0 if b is None else table[op][b] for op, _, b in steps])
    values = np.array(values)
    negative = bits[:, 12:14] < 1 << 31  # torchvision negates on a sign draw of 0
  else:
    raise ValueError(f'augment_policy {kind!r} has no ops.')
  names = np.array(names).reshape(n, slots)
  values = np.where(negative & np.isin(names, SIGNED), -values, values).astype(np.float32)
  # torchvision hands PIL 1 + the float32 magnitude, which PIL's C code takes as a float.
  tone = np.isin(names, TONE)
  values[tone] = (1.0 + values[tone].astype(np.float64)).astype(np.float32)
  op_ids = np.vectorize(OP.__getitem__, otypes=[np.int32])(names)
  matrix = np.tile(np.array(IDENTITY), (n, slots, 1))
  for i, s in zip(*np.nonzero(np.isin(names, GEOMETRIC)), strict=True):
    matrix[i, s] = torchvision_matrix(names[i, s], float(values[i, s]), width, height)
  return {
    'op': op_ids,
    'magnitude': values,
    'matrix': matrix,
    'resample': np.zeros((n, slots), np.int32),
  }


def _draw_timm(config, bits, width, height):
  """timm's RandAugment: ``randaugment_ops`` slots, each an op uniform over its 15 (with
  replacement, as timm's unweighted choice), applied with ``randaugment_op_prob``."""
  n, slots = len(bits), config.randaugment_ops
  chosen = _below(bits[:, :slots], len(TIMM_OPS))
  applied = _uniform(bits[:, 4 : 4 + slots]) <= config.randaugment_op_prob
  levels = timm_levels(config, bits[:, 8 : 8 + slots], bits[:, 16 : 16 + slots])
  negative = bits[:, 12 : 12 + slots] >= 1 << 31
  if config.randaugment_interpolation == 'random':
    resample = 1 + (bits[:, 20 : 20 + slots] >= 1 << 31)
  else:
    resample = np.full((n, slots), RESAMPLING.index(config.randaugment_interpolation))
  out = {
    'op': np.zeros((n, slots), np.int32),
    'magnitude': np.zeros((n, slots), np.float32),
    'matrix': np.tile(np.array(IDENTITY), (n, slots, 1)),
    'resample': resample.astype(np.int32),
  }
  for i, s in zip(*np.nonzero(applied), strict=True):
    op, argument, matrix = timm_op(
      TIMM_OPS[chosen[i, s]],
      float(levels[i, s]),
      bool(negative[i, s]),
      config.randaugment_increasing,
      width,
      height,
    )
    out['op'][i, s], out['magnitude'][i, s], out['matrix'][i, s] = OP[op], argument, matrix
  return out


def slots(config) -> int:
  if config.augment_policy in ('randaugment', 'randaugment_timm'):
    return config.randaugment_ops
  return {'trivialaugment': 1, 'autoaugment': 2}.get(config.augment_policy, 0)
