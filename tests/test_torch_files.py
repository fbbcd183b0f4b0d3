"""torch's files and safetensors read without torch (resnet_jax/torch_files.py): the committed
files of both torch.save formats (tests/torch_files_fixtures.py wrote them) give their tensors
exactly, as do live ones where torch is installed; damaged or foreign files are refused."""

import io
import os

import numpy as np
import pytest
import torch_files_fixtures

from resnet_jax import torch_files


def _assert_same(got: dict, expected: dict):
  assert list(got) == list(expected)
  for key, value in expected.items():
    assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
    np.testing.assert_array_equal(got[key], value, err_msg=key)


@pytest.mark.parametrize('name', ['zip.pth', 'legacy.pth'])
def test_committed_torch_files_read_exactly(name):
  with open(os.path.join(torch_files_fixtures.OUT, name), 'rb') as f:
    data = f.read()
  _assert_same(torch_files.read(data, name), torch_files_fixtures.expected())


@pytest.mark.torch
@pytest.mark.parametrize('zipped', [True, False])
def test_live_torch_save_reads_exactly(zipped):
  torch = pytest.importorskip('torch')
  buffer = io.BytesIO()
  torch.save(torch_files_fixtures.state_dict(), buffer, _use_new_zipfile_serialization=zipped)
  _assert_same(torch_files.read(buffer.getvalue()), torch_files_fixtures.expected())
  nested = io.BytesIO()  # a training script's checkpoint: the state_dict under 'state_dict'
  torch.save({'state_dict': torch_files_fixtures.state_dict(), 'epoch': 90}, nested)
  _assert_same(torch_files.read(nested.getvalue()), torch_files_fixtures.expected())


def test_safetensors_round_trip_and_damage():
  tensors = {k: v for k, v in torch_files_fixtures.expected().items() if v.ndim}
  tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
  data = torch_files.write_safetensors(tensors)
  _assert_same(torch_files.read(data, 'model.safetensors'), tensors)
  with pytest.raises(torch_files.NotWeights, match='truncated'):
    torch_files.read(data[:-10], 'model.safetensors')
  with pytest.raises(torch_files.NotWeights, match='header'):
    torch_files.read(b'\x01\x02', 'model.safetensors')


def test_damaged_and_foreign_files_are_refused():
  with open(os.path.join(torch_files_fixtures.OUT, 'legacy.pth'), 'rb') as f:
    legacy = f.read()
  with pytest.raises(torch_files.NotWeights, match='truncated'):
    torch_files.read(legacy[:-40])
  with open(os.path.join(torch_files_fixtures.OUT, 'zip.pth'), 'rb') as f:
    zipped = f.read()
  with pytest.raises(torch_files.NotWeights, match='not a readable torch file'):
    torch_files.read(zipped[: len(zipped) // 2])
  with pytest.raises(torch_files.NotWeights):
    torch_files.read(b'<html>404 Not Found</html>')


@pytest.mark.torch
def test_only_a_state_dicts_objects_are_unpickled():
  torch = pytest.importorskip('torch')
  buffer = io.BytesIO()
  torch.save(torch.nn.Linear(3, 2), buffer)  # a whole module: arbitrary classes to import
  with pytest.raises(torch_files.NotWeights, match=r'torch\.nn\.modules\.linear\.Linear'):
    torch_files.read(buffer.getvalue())
