"""Weight files of the torch world read without torch: {name: numpy array}.

- ``.pth`` / ``.pt`` / ``.bin``, ``torch.save``'s two formats: the zip archive (torch >= 1.6:
  ``<archive>/data.pkl`` and one file per storage) and the legacy stream (pickles of the magic
  number, the protocol, the system info and the object, then each storage's element count and
  bytes), as torchvision's older releases (VGG, AlexNet) are.
- ``.safetensors`` (timm's hub releases): an 8-byte header length, a JSON header of names, dtypes,
  shapes and byte ranges, then the bytes.

Only what a state_dict holds is unpickled (tensors, parameters, ordered dicts and plain values):
any other class is refused, as ``torch.load(weights_only=True)`` refuses it.
"""

from __future__ import annotations

import collections
import io
import json
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGES = {
  'DoubleStorage': np.float64,
  'FloatStorage': np.float32,
  'HalfStorage': np.float16,
  'BFloat16Storage': ml_dtypes.bfloat16,
  'LongStorage': np.int64,
  'IntStorage': np.int32,
  'ShortStorage': np.int16,
  'CharStorage': np.int8,
  'ByteStorage': np.uint8,
  'BoolStorage': np.bool_,
}
_SAFETENSORS = {
  'F64': np.float64,
  'F32': np.float32,
  'F16': np.float16,
  'BF16': ml_dtypes.bfloat16,
  'I64': np.int64,
  'I32': np.int32,
  'I16': np.int16,
  'I8': np.int8,
  'U8': np.uint8,
  'BOOL': np.bool_,
}


class NotWeights(ValueError):
  """The bytes are not a weights file of a known format (the message says what is wrong)."""


def read(data: bytes, name: str = '') -> dict[str, np.ndarray]:
  """A state_dict from a file's bytes: safetensors by its name (``.safetensors``), else torch's
  zip or legacy format by their first bytes. A checkpoint that nests its state_dict under
  'state_dict' or 'model' (training scripts' checkpoints) gives that.

  Raises:
    NotWeights: for anything else, a damaged or truncated file included.
  """
  try:
    if name.endswith('.safetensors'):
      return read_safetensors(data)
    tree = _read_zip(data) if data[:4] == b'PK\x03\x04' else _read_legacy(data)
  except NotWeights:
    raise
  except Exception as e:  # zipfile, pickle and numpy raise many types on damaged bytes
    raise NotWeights(f'not a readable torch file ({type(e).__name__}: {e})') from None
  for key in ('state_dict', 'model'):
    if isinstance(tree, dict) and isinstance(tree.get(key), dict):
      tree = tree[key]
  if not isinstance(tree, dict) or not all(isinstance(v, np.ndarray) for v in tree.values()):
    raise NotWeights('the file holds no state_dict (a dict of tensors)')
  return dict(tree)


def read_safetensors(data: bytes) -> dict[str, np.ndarray]:
  if len(data) < 8:
    raise NotWeights('not a safetensors file (shorter than its header)')
  (size,) = struct.unpack('<Q', data[:8])
  if size > len(data) - 8:
    raise NotWeights(f'a truncated safetensors file (header of {size} bytes, file of {len(data)})')
  try:
    header = json.loads(data[8 : 8 + size])
  except ValueError as e:
    raise NotWeights(f'not a safetensors file (its header is not JSON: {e})') from None
  body = memoryview(data)[8 + size :]
  out = {}
  for key, info in header.items():
    if key == '__metadata__':
      continue
    dtype = _SAFETENSORS.get(info.get('dtype'))
    start, end = info['data_offsets']
    shape = tuple(info['shape'])
    if dtype is None:
      raise NotWeights(f'{key}: unsupported dtype {info.get("dtype")!r}')
    if end > len(body) or end - start != np.dtype(dtype).itemsize * int(np.prod(shape)):
      raise NotWeights(f'a truncated or damaged safetensors file ({key} out of its bytes)')
    out[key] = np.frombuffer(body[start:end], dtype).reshape(shape).copy()
  return out


def write_safetensors(tensors: dict[str, np.ndarray]) -> bytes:
  """The safetensors bytes of ``tensors`` (float32 and the other dtypes above)."""
  names = {np.dtype(v): k for k, v in _SAFETENSORS.items()}
  header, chunks, offset = {}, [], 0
  for key, value in tensors.items():
    raw = np.ascontiguousarray(value).tobytes()
    header[key] = {
      'dtype': names[np.dtype(value.dtype)],
      'shape': list(value.shape),
      'data_offsets': [offset, offset + len(raw)],
    }
    chunks.append(raw)
    offset += len(raw)
  text = json.dumps(header).encode()
  text += b' ' * (-len(text) % 8)  # the format aligns the body to 8 bytes
  return struct.pack('<Q', len(text)) + text + b''.join(chunks)


class _Storage:
  """A storage the pickle names: its dtype, and its elements once read."""

  def __init__(self, dtype, key):
    self.dtype, self.key, self.array = dtype, key, None


class _Tensor:
  """``_rebuild_tensor_v2``'s arguments, materialised once the storage's bytes are known."""

  def __init__(self, storage, offset, size, stride, *_):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), stride

  def array(self) -> np.ndarray:
    flat = self.storage.array
    if not self.size:
      return np.array(flat[self.offset])
    needed = self.offset + 1 + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
    if min(self.size) > 0 and needed > flat.size:
      raise NotWeights('a tensor reaches past its storage (a truncated file)')
    itemsize = flat.dtype.itemsize
    return np.lib.stride_tricks.as_strided(
      flat[self.offset :], self.size, [s * itemsize for s in self.stride]
    ).copy()


def _parameter(data, *_):
  return data


class _Unpickler(pickle.Unpickler):
  """Builds a state_dict's objects only; storages come from ``storage_of(dtype, key)``."""

  def __init__(self, file, storage_of):
    super().__init__(file)
    self.storage_of = storage_of

  def find_class(self, module, name):
    if (module, name) == ('collections', 'OrderedDict'):
      return collections.OrderedDict
    if module == 'torch._utils' and name == '_rebuild_tensor_v2':
      return _Tensor
    if module == 'torch._utils' and name == '_rebuild_parameter':
      return _parameter
    if module == 'torch' and name in _STORAGES:
      return _STORAGES[name]
    raise NotWeights(f'the file holds a {module}.{name}, which a state_dict does not')

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == 'storage'):
      raise NotWeights(f'unknown persistent record {pid!r:.80}')
    return self.storage_of(pid[1], str(pid[2]))


def _materialise(tree):
  if isinstance(tree, _Tensor):
    return tree.array()
  if isinstance(tree, dict):
    return type(tree)((k, _materialise(v)) for k, v in tree.items())
  return tree


def _read_zip(data: bytes):
  with zipfile.ZipFile(io.BytesIO(data)) as archive:
    pickles = [n for n in archive.namelist() if n.endswith('/data.pkl')]
    if len(pickles) != 1:
      raise NotWeights('a zip file that is not torch.save output (no single data.pkl)')
    prefix = pickles[0][: -len('data.pkl')]
    storages = {}

    def storage_of(dtype, key):
      if key not in storages:
        storage = _Storage(dtype, key)
        storage.array = np.frombuffer(archive.read(f'{prefix}data/{key}'), dtype)
        storages[key] = storage
      return storages[key]

    tree = _Unpickler(io.BytesIO(archive.read(pickles[0])), storage_of).load()
    return _materialise(tree)


def _read_legacy(data: bytes):
  stream = io.BytesIO(data)
  if pickle.load(stream) != LEGACY_MAGIC:
    raise NotWeights('not a torch file (neither a zip archive nor the legacy stream)')
  pickle.load(stream)  # protocol version
  pickle.load(stream)  # system info (byte order, sizes)
  storages = {}

  def storage_of(dtype, key):
    return storages.setdefault(key, _Storage(dtype, key))

  tree = _Unpickler(stream, storage_of).load()
  for key in pickle.load(stream):  # the storages' keys, in the order their bytes follow
    storage = storages[key]
    (count,) = struct.unpack('<q', stream.read(8))
    raw = stream.read(count * np.dtype(storage.dtype).itemsize)
    if len(raw) != count * np.dtype(storage.dtype).itemsize:
      raise NotWeights('a truncated torch file')
    storage.array = np.frombuffer(raw, storage.dtype)
  return _materialise(tree)
