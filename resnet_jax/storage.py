"""Every user path (workdir, data_dir, init_from, mean image, weights) goes through here.

Paths are ``etils.epath`` paths, the abstraction orbax and TFDS use themselves, so ``gs://``
(and ``s3://``) work wherever a local path does: a cloud path is never mangled into a local
folder. Local paths are made absolute and ``~`` is expanded. epath reaches GCS through
TensorFlow's gfile by default, or through fsspec/gcsfs with ``EPATH_USE_TF=false`` (which is how
the tests point it at a local GCS emulator; gfile's endpoints are compiled in).
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid

from etils import epath

from resnet_jax.errors import UserError

CLOUD_SCHEMES = ('gs://', 's3://', 'az://')


def is_cloud(path) -> bool:
  return os.fspath(path).startswith(CLOUD_SCHEMES)


def path(location) -> epath.Path:
  """A user's path string as an epath.Path (local: absolute, ``~`` expanded)."""
  text = os.fspath(location)
  if is_cloud(text):
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


def check_writable_dir(location, what: str = '--workdir'):
  """Proves ``location`` a directory this process can write (by writing and removing a file;
  folders made for that are removed again), or raises one UserError line that says why not: a
  file in the way, a read-only or full disk, no permission, an unreachable or forbidden bucket,
  missing credentials."""
  target = path(location)
  created = None  # the outermost local folder made here, removed again after the probe
  if not is_cloud(target):
    missing = target
    while not missing.parent.exists():
      missing = missing.parent
    created = None if target.exists() else missing
  probe = target / f'.write_check.{uuid.uuid4().hex}'
  try:
    if target.exists() and not target.is_dir():
      raise UserError(f'{what}={location} is a file, not a directory: give a directory.')
    target.mkdir(parents=True, exist_ok=True)
    probe.write_text('')
    probe.unlink()
  except UserError:
    raise
  except Exception as e:  # OSError locally; gcsfs and gfile raise their own kinds
    why = f'{describe(e)}). {advice(e, location)}'
    raise UserError(f'{what}={location}: cannot write there ({why}') from e
  finally:
    if created is not None and created.exists():
      created.rmtree()


def check_writable_file(location, what: str, example: str):
  """Refuses, before any work, an output file path that cannot be a file: an existing
  directory (``example``: a file name to suggest in it), or a path below a regular file. (A full
  or read-only disk is met on writing.)"""
  target = path(location)
  if is_cloud(target):
    return  # object stores have no directories in the way
  if target.is_dir():
    raise UserError(
      f'{what}={location} is a directory: give a file path, such as {target / example}.'
    )
  parent = target.parent
  while not parent.exists():
    parent = parent.parent
  if not parent.is_dir():
    raise UserError(f'{what}={location}: {parent} is a file, not a directory: give another path.')


def describe(error: BaseException) -> str:
  """An exception as one short line (the first line of its message, with its kind)."""
  if isinstance(error, OSError) and error.strerror:
    return f'{error.strerror}: {error.filename}' if error.filename else error.strerror
  lines = str(error).strip().splitlines()
  return f'{type(error).__name__}: {lines[0][:200] if lines else ""}'


def advice(error: BaseException, location) -> str:
  """What to do about a failed write to ``location``."""
  if getattr(error, 'errno', None) in (errno.ENOSPC, errno.EDQUOT):
    return 'Free some space, or use a directory on a larger disk.'
  if not is_cloud(location):
    return 'Choose a directory you can write to.'
  return (
    'For a bucket, check its name, the network and your credentials (gcloud auth '
    'application-default login, or GOOGLE_APPLICATION_CREDENTIALS).'
  )


def free_bytes(location) -> int | None:
  """Free bytes on the local disk holding ``location`` (or its nearest existing parent); None
  for cloud storage, which has no such limit to check."""
  if is_cloud(location):
    return None
  directory = os.path.abspath(os.fspath(location))
  while not os.path.exists(directory):
    directory = os.path.dirname(directory)
  return shutil.disk_usage(directory).free


def write_text_atomic(target: epath.Path, text: str):
  """A concurrent reader sees the old content or the whole new one, never a partial file."""
  write_bytes_atomic(target, text.encode())


def write_bytes_atomic(target: epath.Path, data: bytes):
  target.parent.mkdir(parents=True, exist_ok=True)
  if is_cloud(target):  # an object upload is atomic by itself
    target.write_bytes(data)
    return
  tmp = target.parent / f'.{target.name}.{uuid.uuid4().hex}.tmp'
  try:
    tmp.write_bytes(data)
    os.replace(tmp, target)
  finally:  # a failed write (full disk, a directory in the way) leaves no temporary file
    if tmp.exists():
      tmp.unlink()


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
