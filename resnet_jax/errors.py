"""The project's error for what a user can fix, and how the command-line tools report it.

A ``UserError`` (a bad config value, a missing dataset, a refused checkpoint, a locked workdir)
ends a command with one line, ``error: <what is wrong and what to do>``, and exit code 2.
Anything else is a bug and keeps its traceback. ``RESNET_JAX_TRACEBACK=1`` shows the traceback
of user errors too, for debugging.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

TRACEBACK_ENV = 'RESNET_JAX_TRACEBACK'
USAGE_EXIT_CODE = 2


class UserError(Exception):
  """Something the user can fix; the message says what and how."""


def report_user_errors(main: Callable) -> Callable:
  """Wraps an absl ``main(argv)`` so that a UserError ends the program in one line."""

  def wrapped(argv):
    try:
      return main(argv)
    except UserError as e:
      if os.environ.get(TRACEBACK_ENV, '') not in ('', '0'):
        raise
      message = ' '.join(str(e).split())  # one line, whatever the message's own layout
      print(f'error: {message}', file=sys.stderr, flush=True)
      sys.stdout.flush()
      os._exit(USAGE_EXIT_CODE)  # no atexit hooks: async writers must not touch the workdir

  return wrapped
