"""Writes tests/data/torch_files/{zip,legacy}.pth: one state_dict in torch.save's two formats, for
tests/test_torch_files.py, which reads them without torch.

  pip install torch==2.13.0 && python tests/torch_files_fixtures.py

The values are ``expected()``'s (numpy, seeded); the tensors include a transposed view, a view at
an offset into another tensor's storage, float16, bfloat16, int64 and a 0-d tensor.
"""

import os

import ml_dtypes
import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'torch_files')


def _bases():
  rng = np.random.RandomState(0)
  return rng.randn(4, 3, 3, 3).astype(np.float32), rng.randn(5, 6).astype(np.float32)


def expected() -> dict[str, np.ndarray]:
  conv, dense = _bases()
  return {
    'conv1.weight': conv,
    'fc.weight': dense.T,
    'layer1.0.conv1.weight': conv[1],
    'bn1.running_var': dense[0].astype(np.float16),
    'bn1.running_mean': dense[1].astype(ml_dtypes.bfloat16),
    'bn1.num_batches_tracked': np.array(7, np.int64),
    'fc.bias': np.array(2.5, np.float32),
  }


def state_dict():
  """``expected()`` as torch tensors, views sharing storages as torch keeps them."""
  import torch

  conv, dense = (torch.from_numpy(a) for a in _bases())
  return {
    'conv1.weight': conv,
    'fc.weight': dense.t(),
    'layer1.0.conv1.weight': conv[1],
    'bn1.running_var': dense[0].half(),
    'bn1.running_mean': dense[1].bfloat16(),
    'bn1.num_batches_tracked': torch.tensor(7),
    'fc.bias': torch.tensor(2.5),
  }


if __name__ == '__main__':
  import torch

  os.makedirs(OUT, exist_ok=True)
  for name, zipped in (('zip.pth', True), ('legacy.pth', False)):
    path = os.path.join(OUT, name)
    torch.save(state_dict(), path, _use_new_zipfile_serialization=zipped)
    print(f'{path}: {os.path.getsize(path):,} bytes, torch {torch.__version__}')
