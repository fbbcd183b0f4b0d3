"""Every user path (workdir, data_dir, init_from, mean image, weights) goes through here.

Paths are ``etils.epath`` paths, the abstraction orbax and TFDS use themselves, so ``gs://``
(and ``s3://``) work wherever a local path does: a cloud path is never mangled into a local
folder. Local paths are made absolute and ``~`` is expanded. epath reaches GCS through
TensorFlow's gfile by default, or through fsspec/gcsfs with ``EPATH_USE_TF=false`` (which is how
the tests point it at a local GCS emulator; gfile's endpoints are compiled in).
"""

from __future__ import annotations

import os
import uuid

from etils import epath

CLOUD_SCHEMES = ('gs://', 's3://', 'az://')


def is_cloud(path) -> bool:
  return os.fspath(path).startswith(CLOUD_SCHEMES)


def path(location) -> epath.Path:
  """A user's path string as an epath.Path (local: absolute, ``~`` expanded)."""
  text = os.fspath(location)
  if is_cloud(text):
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


def write_text_atomic(target: epath.Path, text: str):
  """A concurrent reader sees the old content or the whole new one, never a partial file."""
  write_bytes_atomic(target, text.encode())


def write_bytes_atomic(target: epath.Path, data: bytes):
  target.parent.mkdir(parents=True, exist_ok=True)
  if is_cloud(target):  # an object upload is atomic by itself
    target.write_bytes(data)
    return
  tmp = target.parent / f'.{target.name}.{uuid.uuid4().hex}.tmp'
  tmp.write_bytes(data)
  os.replace(tmp, target)


class AppendOnlyText:
  """A text file that grows by lines (metrics.jsonl), locally or on cloud storage.

  Cloud objects cannot be appended to, so there the whole text is kept and re-uploaded on each
  append (a run's metrics are a few MB at most); locally lines are appended in place.
  """

  def __init__(self, target: epath.Path):
    self.target = target
    self._cloud = is_cloud(target)
    self._text = target.read_text() if self._cloud and target.exists() else ''
    target.parent.mkdir(parents=True, exist_ok=True)

  def append(self, line: str):
    if self._cloud:
      self._text += line
      self.target.write_text(self._text)
    else:
      with self.target.open('a') as f:
        f.write(line)
