"""Augmentation policies: RandAugment, TrivialAugmentWide and AutoAugment (ImageNet): which ops each
example gets.

As torchvision's transforms of those names apply them to PIL images (its classification reference
scripts' default; timm's are PIL too): the same operations, magnitude tables and policy, with each
operation's arithmetic PIL's. The ops (``policy_ops``) run in tf.data on the crop rounded to uint8;
every random choice (the ops, their magnitudes and signs, AutoAugment's sub-policy and odds) is
drawn in numpy from the run seed and the example's global position (``draw``), with the geometric
ops' inverse matrices computed there in float64 and fixed to PIL's 16.16 fixed point, so a batch is
the same whichever process builds it and after a resume.

No TensorFlow here: the draws are numpy (``draws`` computes them for many examples at once).
"""

from __future__ import annotations

import math

import numpy as np

# Op ids (the order of torchvision's RandAugment table, then Invert).
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
)
OP = {name: i for i, name in enumerate(OPS)}
GEOMETRIC = ('ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Rotate')
SIGNED = (*GEOMETRIC, 'Brightness', 'Color', 'Contrast', 'Sharpness')
# RandAugment and TrivialAugmentWide choose among these (torchvision's tables have no Invert).
CHOICES = OPS[:-1]

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


def geometry_matrix(op: str, magnitude: float, width: int, height: int) -> np.ndarray:
  """The op's inverse affine matrix in PIL's 16.16 fixed point, with the half-pixel offsets
  folded in (int64 [6]): source x of output (x, y) is ``(m2 + x m0 + y m1) >> 16``."""
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
    m = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
  fix = lambda v: math.floor(v * 65536.0 + 0.5)  # noqa: E731
  return np.array(
    [
      fix(m[0]),
      fix(m[1]),
      fix(m[2] + m[0] * 0.5 + m[1] * 0.5),
      fix(m[3]),
      fix(m[4]),
      fix(m[5] + m[3] * 0.5 + m[4] * 0.5),
    ],
    np.int64,
  )


def _uniform(bits) -> np.ndarray:
  """[0, 1) from 32-bit words (torch.rand's range)."""
  return bits / 2.0**32


def _below(bits, n):
  return (bits * n) >> 32


# Per-example random words a policy uses: words 0-3 the ops of up to 4 slots (config_check's
# bound on randaugment_ops), 4-7 their magnitude bins (TrivialAugmentWide) or odds (AutoAugment),
# 12-15 their signs, 16 AutoAugment's sub-policy.
POLICY_WORDS = 17


def draw(config, bits: np.ndarray, width: int, height: int) -> dict[str, np.ndarray]:
  """The policy's per-example ops from [n, POLICY_WORDS] random words.

  Returns:
    'op': int32 [n, slots], the op of each slot in order (Identity where none applies);
    'magnitude': float32 [n, slots], the signed magnitude (tone factor - 1, posterize bits,
      solarize threshold);
    'matrix': int64 [n, slots, 6], the geometric ops' fixed-point inverse matrices.
  """
  n = len(bits)
  kind = config.augment_policy
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
  values = np.where(negative & np.isin(np.array(names), SIGNED), -values, values)
  op_ids = np.array([[OP[name] for name in row] for row in names], np.int32).reshape(n, slots)
  matrix = np.zeros((n, slots, 6), np.int64)
  for i, row in enumerate(names):
    for s, name in enumerate(row):
      if name in GEOMETRIC:
        matrix[i, s] = geometry_matrix(name, float(values[i, s]), width, height)
  return {'op': op_ids, 'magnitude': values.astype(np.float32), 'matrix': matrix}


def slots(config) -> int:
  return {'randaugment': config.randaugment_ops, 'trivialaugment': 1, 'autoaugment': 2}.get(
    config.augment_policy, 0
  )
