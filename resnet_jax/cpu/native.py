"""The project's C++ kernels for XLA:CPU (XLA FFI custom calls): compiled on first use, cached.

Each ``Library`` is C++ sources of this package, compiled with the C++ compiler (``$CXX``, else
``c++``) and JAX's FFI headers into ``$RESNET_JAX_CACHE`` (default ``~/.cache/resnet_jax``) under a
name that hashes the sources, the command and the JAX version, so an edit or an upgrade rebuilds
and concurrent first uses do not clash (each writes a temporary file and renames it into place).
``unavailable_reason`` builds (once per machine), loads and registers the library's targets (once
per process) and says why not where that fails; the modules that use a library fall back to XLA's
own lowering then.

Two libraries: ``onednn``'s convolution gradients (they need oneDNN), and ``KERNELS``, the
project's own kernels, which need only a compiler with OpenMP: BatchNorm's per-channel sums
(``channel_sums.cc``, used by ``batch_norm``) and the ImageNet stem's max pool (``max_pool.cc``,
used by ``stem``). ``kernels_enabled`` decides, from the ``cpu_kernels`` config field, whether
float32 programs lowered for the CPU call the latter.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import logging
import os
import pathlib
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
from jax import lax

from resnet_jax.errors import UserError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Library:
  """A C++ source of this package and how to compile it.

  Attributes:
    name: the cached file's stem.
    sources: the C++ files, in this package.
    targets: the FFI handler symbols they export, registered under the same names.
    flags: extra compiler and linker arguments (include and library paths, ``-l...``).
    versions: what else it is built against (a TensorFlow op: TensorFlow's version), hashed into
      its file's name so that an upgrade rebuilds it.
  """

  name: str
  sources: tuple[str, ...]
  targets: tuple[str, ...]
  flags: tuple[str, ...] = ()
  versions: tuple[str, ...] = ()

  @property
  def source_paths(self) -> list[pathlib.Path]:
    return [pathlib.Path(__file__).with_name(source) for source in self.sources]


def compile_command(library: Library, output: pathlib.Path) -> list[str]:
  # -O3: GCC vectorises the channel loops at -O3 only; -w: JAX's FFI headers warn under GCC.
  command = [os.environ.get('CXX', 'c++'), '-O3', '-std=c++17', '-shared', '-fPIC', '-w']
  command += ['-I', jax.ffi.include_dir(), *map(str, library.source_paths), '-o', str(output)]
  return command + list(library.flags)


def library_path(library: Library) -> pathlib.Path:
  """Where the compiled library is (or will be) kept for these sources, command and JAX."""
  cache = pathlib.Path(os.environ.get('RESNET_JAX_CACHE', '~/.cache/resnet_jax')).expanduser()
  key = hashlib.sha256()
  for source in library.source_paths:
    key.update(source.read_bytes())
  key.update(' '.join(compile_command(library, pathlib.Path('out'))).encode())
  key.update(' '.join((jax.__version__, *library.versions)).encode())
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
      raise OSError(f'compiling {" ".join(library.sources)} failed: {lines[0].strip()}')
    os.replace(partial, path)


def built(library: Library) -> pathlib.Path:
  """The compiled library's path, built there first if this machine has not yet (``OSError``
  or ``subprocess.TimeoutExpired`` where that fails)."""
  path = library_path(library)
  if not path.exists():
    _build(library, path)
  return path


@functools.cache
def unavailable_reason(library: Library) -> str:
  """Builds ``library`` (once per machine) and registers its custom calls (once per process);
  '' when that worked, else what went wrong."""
  try:
    loaded = ctypes.cdll.LoadLibrary(str(built(library)))
  except (OSError, subprocess.TimeoutExpired) as e:
    return str(e)
  for target in library.targets:
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(loaded, target)), platform='cpu')
  return ''


KERNELS = Library(
  'cpu_kernels',
  ('channel_sums.cc', 'max_pool.cc'),
  (
    'ResnetJaxChannelMoments',
    'ResnetJaxChannelGradientSums',
    'ResnetJaxMaxPoolForward',
    'ResnetJaxMaxPoolBackward',
  ),
  ('-fopenmp',),
)
KERNELS_NAME = "resnet_jax's CPU kernels (BatchNorm's sums, the stem's max pool)"
INSTALL_HINT = (
  'install a C++ compiler with OpenMP (Debian/Ubuntu: apt-get install g++), '
  'or set --config.cpu_kernels=xla'
)


def choose(
  field: str, mode: str, required: str, off: str, name: str, reason, hint, instead
) -> bool:
  """Whether a built kernel (``name``, plural, for messages) runs under ``--config.{field}=mode``:
  'auto' where ``reason()`` is '' (else one log line saying why, that ``instead`` runs, and
  ``hint``), ``required`` always (a ``UserError`` saying what is missing where it cannot build),
  ``off`` never."""
  modes = ('auto', required, off)
  if mode not in modes:
    raise UserError(f'--config.{field}={mode!r}: must be one of {", ".join(modes)}.')
  if mode == off:
    return False
  if why := reason():
    if mode == required:
      raise UserError(f'--config.{field}={mode!r} but {name} are unavailable ({why}): {hint}.')
    _note_fallback(name, why, hint, instead)
    return False
  return True


def enabled(library: Library, name: str, field: str, mode: str, required: str, hint: str) -> bool:
  """Whether programs lowered for the CPU call ``library`` under ``--config.{field}=mode``
  (``choose``; 'auto' only on a CPU backend, 'xla' never)."""
  if mode == 'auto' and jax.default_backend() != 'cpu':
    return False
  reason = functools.partial(unavailable_reason, library)
  return choose(field, mode, required, 'xla', name, reason, hint, "XLA's lowering")


@functools.cache
def _note_fallback(name: str, reason: str, hint: str, instead: str):
  log.info('%s unavailable (%s); using %s: %s', name, reason, instead, hint)


def kernels_enabled(mode: str) -> bool:
  """Whether float32 programs lowered for the CPU call ``KERNELS`` under ``cpu_kernels=mode``
  ('auto', 'native' or 'xla'; ``enabled``)."""
  return enabled(KERNELS, KERNELS_NAME, 'cpu_kernels', mode, 'native', INSTALL_HINT)


def kernels_for(x, mode: str) -> bool:
  """Whether ``x``'s layer calls ``KERNELS`` (float32 only) under ``cpu_kernels=mode``."""
  return x.dtype == jnp.float32 and kernels_enabled(mode)


def call(target: str, result: jax.ShapeDtypeStruct, *operands):
  """``KERNELS``'s custom call ``target`` on ``operands``. Under jax.vmap one call per example."""
  if reason := unavailable_reason(KERNELS):  # registers the targets (once per process)
    raise UserError(f'{KERNELS_NAME} are unavailable ({reason}): {INSTALL_HINT}.')
  return jax.ffi.ffi_call(target, result, vmap_method='sequential')(*operands)


def on_cpu(use_native: bool, native_fn, xla_fn):
  """``native_fn()`` where the program is lowered for the CPU and ``use_native`` allows it, else
  ``xla_fn()``."""
  if not use_native:
    return xla_fn()
  return lax.platform_dependent(cpu=native_fn, default=xla_fn)
