"""The project's C++ kernels for XLA:CPU (XLA FFI custom calls): compiled on first use, cached.

Each ``Library`` is one C++ source in this package, compiled with the C++ compiler (``$CXX``, else
``c++``) and JAX's FFI headers into ``$RESNET_JAX_CACHE`` (default ``~/.cache/resnet_jax``) under a
name that hashes the source, the command and the JAX version, so an edit or an upgrade rebuilds
and concurrent first uses do not clash (each writes a temporary file and renames it into place).
``unavailable_reason`` builds (once per machine), loads and registers the library's targets (once
per process) and says why not where that fails; the modules that use a library fall back to XLA's
own lowering then (``onednn``: convolution gradients; ``batch_norm``: per-channel sums).
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile

import jax


@dataclasses.dataclass(frozen=True)
class Library:
  """A C++ source of this package and how to compile it.

  Attributes:
    name: the cached file's stem.
    source: the C++ file, in this package.
    targets: the FFI handler symbols it exports, registered under the same names.
    flags: extra compiler and linker arguments (include and library paths, ``-l...``).
  """

  name: str
  source: str
  targets: tuple[str, ...]
  flags: tuple[str, ...] = ()

  @property
  def source_path(self) -> pathlib.Path:
    return pathlib.Path(__file__).with_name(self.source)


def compile_command(library: Library, output: pathlib.Path) -> list[str]:
  # -O3: GCC vectorises the channel loops at -O3 only; -w: JAX's FFI headers warn under GCC.
  command = [os.environ.get('CXX', 'c++'), '-O3', '-std=c++17', '-shared', '-fPIC', '-w']
  command += ['-I', jax.ffi.include_dir(), str(library.source_path), '-o', str(output)]
  return command + list(library.flags)


def library_path(library: Library) -> pathlib.Path:
  """Where the compiled library is (or will be) kept for this source, command and JAX."""
  cache = pathlib.Path(os.environ.get('RESNET_JAX_CACHE', '~/.cache/resnet_jax')).expanduser()
  key = hashlib.sha256(library.source_path.read_bytes())
  key.update(' '.join(compile_command(library, pathlib.Path('out'))).encode())
  key.update(jax.__version__.encode())
  return cache / f'{library.name}-{key.hexdigest()[:16]}.so'


def _build(library: Library, path: pathlib.Path):
  """Compiles ``library`` to ``path`` (via a temporary file renamed into place)."""
  compiler = compile_command(library, path)[0]
  if not shutil.which(compiler):
    raise OSError(f'no C++ compiler {compiler!r}')
  path.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
    partial = pathlib.Path(tmp) / path.name
    done = subprocess.run(
      compile_command(library, partial), capture_output=True, text=True, timeout=300, check=False
    )
    if done.returncode:
      lines = [line for line in done.stderr.splitlines() if 'error' in line] or ['(no output)']
      raise OSError(f'compiling {library.source} failed: {lines[0].strip()}')
    os.replace(partial, path)


@functools.cache
def unavailable_reason(library: Library) -> str:
  """Builds ``library`` (once per machine) and registers its custom calls (once per process);
  '' when that worked, else what went wrong."""
  path = library_path(library)
  try:
    if not path.exists():
      _build(library, path)
    loaded = ctypes.cdll.LoadLibrary(str(path))
  except (OSError, subprocess.TimeoutExpired) as e:
    return str(e)
  for target in library.targets:
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(loaded, target)), platform='cpu')
  return ''
