"""BiT's released ``.npz`` files (google-research/big_transfer's BiT-S, BiT-M and the distilled
ResNet-50 of "Knowledge distillation: a good teacher is patient and consistent") as this
project's variables of the ``bit_r<depth>x<width>`` nets, read by their own key names:

  resnet/root_block/standardized_conv2d/kernel             -> conv1/kernel
  resnet/block{s}/unit{u}/{a,b,c}/standardized_conv2d/kernel
                                                            -> layer{s}_{u-1}/conv{1,2,3}/kernel
  resnet/block{s}/unit{u}/{a,b,c}/group_norm/{gamma,beta}  -> layer{s}_{u-1}/bn{1,2,3}/{scale,bias}
  resnet/block{s}/unit01/a/proj/standardized_conv2d/kernel -> layer{s}_0/downsample_0/kernel
  resnet/group_norm/{gamma,beta}                           -> final_bn/{scale,bias}
  resnet/head/conv2d/{kernel,bias}                          -> fc/{kernel,bias}

Kernels are HWIO already (TensorFlow's layout). Some files name a conv ``standardized_conv2d_1``;
big_vision's loader reads those too, and so does this.
"""

from __future__ import annotations

import io
import re
import zipfile
from typing import Any

import numpy as np
from flax import traverse_util

from resnet_jax.models import block_layout, torchvision_weights

_UNIT = re.compile(
  r'^resnet/block(\d+)/unit(\d+)/([abc])/(proj/)?'
  r'(?:standardized_conv2d(?:_\d+)?/kernel|group_norm/(gamma|beta))$'
)
_TOP = {
  'resnet/root_block/standardized_conv2d/kernel': ('conv1', 'kernel'),
  'resnet/group_norm/gamma': ('final_bn', 'scale'),
  'resnet/group_norm/beta': ('final_bn', 'bias'),
  'resnet/head/conv2d/kernel': ('fc', 'kernel'),
  'resnet/head/conv2d/bias': ('fc', 'bias'),
}
_NORM_LEAF = {'gamma': 'scale', 'beta': 'bias'}


def is_npz(data: bytes) -> bool:
  """Whether ``data`` is a NumPy ``.npz`` archive (a zip of ``.npy`` files; torch's zip files
  hold ``data.pkl`` instead)."""
  if not data.startswith(b'PK'):
    return False
  try:
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
  except zipfile.BadZipFile:
    return False
  return bool(names) and all(n.endswith('.npy') for n in names)


def read_npz(data: bytes) -> dict[str, np.ndarray]:
  with np.load(io.BytesIO(data), allow_pickle=False) as archive:
    return {key: archive[key] for key in archive.files}


def flax_path(key: str) -> tuple[str, ...] | None:
  """A BiT key's parameter path here ('layer1_0', 'conv1', 'kernel'), or None for another key."""
  if key in _TOP:
    return _TOP[key]
  match = _UNIT.match(key)
  if not match:
    return None
  stage, unit, group, proj, norm_leaf = match.groups()
  block = f'layer{int(stage)}_{int(unit) - 1}'
  if proj:
    return (block, 'downsample_0', 'kernel') if not norm_leaf else None
  index = 'abc'.index(group) + 1
  if norm_leaf:
    return (block, f'bn{index}', _NORM_LEAF[norm_leaf])
  return (block, f'conv{index}', 'kernel')


def from_bit(arrays: dict[str, Any], name: str, **model_overrides) -> dict[str, dict[str, Any]]:
  """BiT's arrays (``read_npz``) as ``{'params': ...}`` of the net ``name`` (``bit_r50x1``...);
  the class count is read off the head. ``scan_blocks=True`` stacks them for a scanned net.

  Raises:
    ValueError: naming every missing, unexpected or mis-shaped key.
  """
  head = 'resnet/head/conv2d/kernel'
  if head not in arrays:
    raise ValueError(f"no {head!r}: not one of BiT's released .npz files (for {name})")
  num_classes = int(np.shape(arrays[head])[-1])
  scan_blocks = model_overrides.pop('scan_blocks', False)
  expected = traverse_util.flatten_dict(
    torchvision_weights.expected_variables(name, num_classes, **model_overrides)
  )

  def pairs():
    for key, value in arrays.items():
      array = np.asarray(value, np.float32)
      if key == head:
        array = array[0, 0]  # a 1x1 conv over the pooled features: the dense layer
      path = flax_path(key)
      yield key, None if path is None else ('params', *path), array

  what = f"these BiT weights as {name} (a file of another net? BiT-M-R50x3.npz is bit_r50x3's)"
  variables = torchvision_weights.checked_variables(pairs(), expected, name, what)
  return block_layout.stack_blocks(variables) if scan_blocks else variables
