"""How every command-line entry point starts and ends.

Flags are checked before any work: a ``--config.FIELD`` that the config does not have is named
with the closest real field, and a value of the wrong type is named with its field. A
``UserError`` (bad config, missing data, refused checkpoint, locked workdir) ends the command
with one line, ``error: <what is wrong — what to do>``, and exit code 2; anything else is a bug
and keeps its traceback. ``RESNET_JAX_TRACEBACK=1`` shows the traceback of user errors too.
absl's log (orbax, JAX) stays at WARNING unless ``--verbosity`` is given.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import sys
from collections.abc import Callable

from absl import app, flags
from absl import logging as absl_logging

from resnet_jax.errors import UserError

TRACEBACK_ENV = 'RESNET_JAX_TRACEBACK'
USAGE_EXIT_CODE = 2


def fail(message: str):
  """Ends the program with one line on stderr and exit code 2, running no exit hooks (an
  async checkpoint writer must not touch the workdir after the error)."""
  print(f'error: {" ".join(message.split())}', file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(USAGE_EXIT_CODE)


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


def _parse_flags(argv: list[str]) -> list[str]:
  check_config_overrides(argv)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(f'{e} (see --helpfull)')


def _reporting_user_errors(main: Callable) -> Callable:
  def wrapped(argv):
    if not flags.FLAGS['verbosity'].present:  # orbax and JAX log every save and restore at INFO
      absl_logging.set_verbosity(absl_logging.WARNING)
    try:
      return main(argv)
    except UserError as e:
      if os.environ.get(TRACEBACK_ENV, '') not in ('', '0'):
        raise
      fail(str(e))

  return wrapped


def run(main: Callable):
  """``app.run`` with the checks and the one-line reporting above."""
  app.run(_reporting_user_errors(main), flags_parser=_parse_flags)
