"""How every command-line entry point starts and ends.

Flags are checked before any work: a ``--config.FIELD`` that the config does not have is named
with the closest real field, and a value of the wrong type is named with its field. A
``UserError`` (bad config, missing data, refused checkpoint, locked workdir) ends the command
with one line, ``error: <what is wrong — what to do>``, and exit code 2 (3 for a diverged run);
a full, read-only or forbidden disk and a device out of memory are such errors too, wherever they
are met. Ctrl-C outside the training loop ends it with one line and exit code 130; anything else
is a bug and keeps its traceback. ``RESNET_JAX_TRACEBACK=1`` shows the traceback of user errors too.
absl's log (orbax, JAX) stays at WARNING unless ``--verbosity`` is given.
"""

from __future__ import annotations

import difflib
import errno
import importlib.util
import logging
import os
import re
import sys
from collections.abc import Callable

from absl import app, flags
from absl import logging as absl_logging

from resnet_jax import console, storage
from resnet_jax.errors import UserError

TRACEBACK_ENV = 'RESNET_JAX_TRACEBACK'
USAGE_EXIT_CODE = 2
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, as a shell reports Ctrl-C


def fail(message: str, code: int = USAGE_EXIT_CODE, prefix: str = 'error'):
  """Ends the program with one line on stderr and exit code ``code`` (2 by default), running no
  exit hooks (an async checkpoint writer must not touch the workdir after the error)."""
  print(f'{prefix}: {" ".join(message.split())}', file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(code)


def refuse_unwritable_file(location: str, example: str):
  """For argparse commands (plot, report): ``storage.check_writable_file`` of ``--out`` as one
  line."""
  try:
    storage.check_writable_file(location, '--out', example)
  except UserError as e:
    fail(str(e))


def _load_config(spec: str):
  path, _, argument = spec.partition(':')
  if not os.path.isfile(path):
    fail(f'--config={spec}: no such config file (recipes are in configs/, e.g. configs/r50.py).')
  module_spec = importlib.util.spec_from_file_location('_resnet_jax_config', path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
    return module.get_config(argument) if argument else module.get_config()
  except Exception as e:  # a recipe's own check of its argument (e.g. an unknown run or depth)
    if os.environ.get(TRACEBACK_ENV, '') not in ('', '0'):
      raise
    fail(f'--config={spec}: {type(e).__name__}: {e}')


def check_config_overrides(argv: list[str]):
  """Names a misspelled ``--config.FIELD`` before absl's parser buries it in a traceback."""
  spec = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
  if spec is None:
    return
  fields = set(_load_config(spec))
  for arg in argv:
    match = re.match(r'--config\.([^=]+)', arg)
    if not match:
      continue
    name = match[1].split('.')[0]
    if name not in fields:
      close = difflib.get_close_matches(name, fields, n=1, cutoff=0.5)
      hint = f'did you mean --config.{close[0]}?' if close else 'see configs/default.py'
      fail(f'--config.{match[1]}: the config has no field {name!r} — {hint}')


def config_fields_given(argv: list[str] | None = None) -> frozenset[str]:
  """The config fields named by ``--config.FIELD=...`` on the command line: set, even where
  the value is the field's default (see ``config_check.check``)."""
  names = (re.match(r'--config\.(\w+)', a) for a in (sys.argv if argv is None else argv))
  return frozenset(m[1] for m in names if m)


HELP_FLAGS = ('--help', '-h', '-?', '--helpshort', '--helpfull', '--helpxml')


def _parse_flags(argv: list[str]) -> list[str]:
  check_config_overrides(argv)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(f'{e} (see --helpfull)')
  except SystemExit as e:  # absl prints the help asked for, then exits 1: asking is no error
    if any(a in HELP_FLAGS for a in argv[1:]):
      sys.exit(0)
    raise e from None


STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def storage_error(error: BaseException) -> OSError | None:
  """The full-disk / read-only / permission error in ``error``'s chain of causes, if any."""
  seen = set()
  while error is not None and id(error) not in seen:
    if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
      return error
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return None


def _reporting_user_errors(main: Callable) -> Callable:
  def wrapped(argv):
    if not flags.FLAGS['verbosity'].present:  # orbax and JAX log every save and restore at INFO
      absl_logging.set_verbosity(absl_logging.WARNING)
      # gcsfs logs each retry of an unreachable bucket with its traceback; the error line says why.
      logging.getLogger('gcsfs').setLevel(logging.CRITICAL)
    try:
      return main(argv)
    except UserError as e:
      if os.environ.get(TRACEBACK_ENV, '') not in ('', '0'):
        raise
      fail(str(e), getattr(e, 'exit_code', USAGE_EXIT_CODE))
    except Exception as e:  # a full, read-only or forbidden disk; a device out of memory
      if os.environ.get(TRACEBACK_ENV, '') not in ('', '0'):
        raise
      cause = storage_error(e)
      if cause is not None:
        fail(f'{storage.describe(cause)}. {storage.advice(cause, cause.filename or "")}')
      # jax.errors.JaxRuntimeError on any device; MemoryError for host (numpy) arrays.
      if isinstance(e, MemoryError) or 'RESOURCE_EXHAUSTED' in str(e):
        fail(
          f'out of memory ({str(e).strip().splitlines()[0][:200]}): lower --config.batch_size '
          f'(training) or --config.eval_batch_size (evaluation; multiscale feeds whole images, '
          f'up to the largest of multiscale_sizes).'
        )
      raise
    except KeyboardInterrupt:  # Ctrl-C outside the training loop, which saves a checkpoint first
      fail('Ctrl-C: stopped; nothing was saved.', INTERRUPTED_EXIT_CODE, 'interrupted')

  return wrapped


def run(main: Callable):
  """``app.run`` with the checks and the one-line reporting above, without TensorFlow's banner."""
  console.hold_back_tensorflow_banner()
  app.run(_reporting_user_errors(main), flags_parser=_parse_flags)
