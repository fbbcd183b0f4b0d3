"""big_vision's BiT (``big_vision/models/bit_paper.py``: the ResNet-v2 of "Big Transfer",
Kolesnikov et al. 2020, with the loader of BiT's released ``.npz`` files), rebuilt in plain flax
for cross-checks: big_vision is not a package these machines can install.

Its own names and layout (``root_block/conv_root``, ``block1/unit01/gn1``, ``norm-pre-head``,
``head``), its own GroupNorm and weight standardisation formulas (variance as the mean square of
the centred values, eps 1e-5 and 1e-10), SAME-free explicit paddings, the max pool's -inf border;
and the names of BiT's ``.npz`` files (``resnet/block1/unit01/a/standardized_conv2d/kernel``...).
"""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def _standardize(x, axis, eps):
  x = x - jnp.mean(x, axis=axis, keepdims=True)
  return x / jnp.sqrt(jnp.mean(jnp.square(x), axis=axis, keepdims=True) + eps)


class GroupNorm(nn.Module):
  groups: int = 32

  @nn.compact
  def __call__(self, x):
    shape = x.shape
    x = _standardize(x.reshape(*shape[:-1], self.groups, -1), axis=(1, 2, 4), eps=1e-5)
    x = x.reshape(shape)
    return x * self.param('scale', nn.initializers.ones, (1, 1, 1, shape[-1])) + self.param(
      'bias', nn.initializers.zeros, (1, 1, 1, shape[-1])
    )


class StdConv(nn.Conv):
  def param(self, name, *args, **kwargs):
    value = super().param(name, *args, **kwargs)
    return _standardize(value, axis=(0, 1, 2), eps=1e-10) if name == 'kernel' else value


class Unit(nn.Module):
  mid: int
  strides: int = 1

  @nn.compact
  def __call__(self, x):
    out = self.mid * 4
    residual = x
    x = nn.relu(GroupNorm(name='gn1')(x))
    if x.shape[-1] != out or self.strides != 1:
      residual = StdConv(out, (1, 1), self.strides, use_bias=False, name='conv_proj')(x)
    x = StdConv(self.mid, (1, 1), use_bias=False, name='conv1')(x)
    x = nn.relu(GroupNorm(name='gn2')(x))
    x = StdConv(
      self.mid, (3, 3), self.strides, padding=((1, 1), (1, 1)), use_bias=False, name='conv2'
    )(x)
    x = nn.relu(GroupNorm(name='gn3')(x))
    return StdConv(out, (1, 1), use_bias=False, name='conv3')(x) + residual


class Model(nn.Module):
  num_classes: int
  width: int = 1
  depth: int = 50

  @nn.compact
  def __call__(self, x):
    width = 64 * self.width
    x = StdConv(width, (7, 7), 2, padding=((3, 3), (3, 3)), use_bias=False, name='conv_root')(x)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, units in enumerate(DEPTHS[self.depth]):
      for j in range(units):
        strides = 2 if i > 0 and j == 0 else 1
        x = Unit(width * 2**i, strides, name=f'block{i + 1}_unit{j + 1:02d}')(x)
    x = nn.relu(GroupNorm(name='norm-pre-head')(x))
    return nn.Dense(self.num_classes, name='head')(jnp.mean(x, axis=(1, 2)))


def npz_shapes(depth: int, width: int, num_classes: int) -> dict[str, tuple[int, ...]]:
  """Every key of a BiT ``.npz`` file for R<depth>x<width> and its shape (TF's HWIO)."""
  base = 64 * width
  shapes = {'resnet/root_block/standardized_conv2d/kernel': (7, 7, 3, base)}
  channels = base
  for i, units in enumerate(DEPTHS[depth]):
    mid = base * 2**i
    for j in range(units):
      unit = f'resnet/block{i + 1}/unit{j + 1:02d}'
      for group, (cin, k, cout) in zip(
        'abc', ((channels, 1, mid), (mid, 3, mid), (mid, 1, mid * 4)), strict=True
      ):
        shapes[f'{unit}/{group}/group_norm/gamma'] = (cin,)
        shapes[f'{unit}/{group}/group_norm/beta'] = (cin,)
        shapes[f'{unit}/{group}/standardized_conv2d/kernel'] = (k, k, cin, cout)
      if j == 0:
        shapes[f'{unit}/a/proj/standardized_conv2d/kernel'] = (1, 1, channels, mid * 4)
      channels = mid * 4
  shapes['resnet/group_norm/gamma'] = shapes['resnet/group_norm/beta'] = (channels,)
  shapes['resnet/head/conv2d/kernel'] = (1, 1, channels, num_classes)
  shapes['resnet/head/conv2d/bias'] = (num_classes,)
  return shapes


def random_npz(depth: int, width: int, num_classes: int, seed: int) -> dict[str, np.ndarray]:
  rng = np.random.RandomState(seed)
  arrays = {}
  for key, shape in npz_shapes(depth, width, num_classes).items():
    if key.endswith('gamma'):
      arrays[key] = rng.uniform(0.5, 1.5, shape)
    elif key.endswith(('beta', 'bias')):
      arrays[key] = rng.normal(0.0, 0.2, shape)
    else:
      arrays[key] = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
  return {k: v.astype(np.float32) for k, v in arrays.items()}


def load(arrays: dict[str, np.ndarray]) -> dict:
  """big_vision's ``maybe_convert_big_transfer_format``, onto this rebuild's module names."""
  params = {
    'conv_root': {'kernel': arrays['resnet/root_block/standardized_conv2d/kernel']},
    'norm-pre-head': {
      'scale': arrays['resnet/group_norm/gamma'][None, None, None],
      'bias': arrays['resnet/group_norm/beta'][None, None, None],
    },
    'head': {
      'kernel': arrays['resnet/head/conv2d/kernel'][0, 0],
      'bias': arrays['resnet/head/conv2d/bias'],
    },
  }
  units = sorted({k.split('/')[1] + '/' + k.split('/')[2] for k in arrays if '/unit' in k})
  for unit in units:
    name = unit.replace('/', '_')
    params[name] = {}
    for i, group in enumerate('abc', 1):
      prefix = f'resnet/{unit}/{group}'
      params[name][f'conv{i}'] = {'kernel': arrays[f'{prefix}/standardized_conv2d/kernel']}
      params[name][f'gn{i}'] = {
        'scale': arrays[f'{prefix}/group_norm/gamma'][None, None, None],
        'bias': arrays[f'{prefix}/group_norm/beta'][None, None, None],
      }
    proj = f'resnet/{unit}/a/proj/standardized_conv2d/kernel'
    if proj in arrays:
      params[name]['conv_proj'] = {'kernel': arrays[proj]}
  return {'params': params}
