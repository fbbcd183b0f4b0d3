"""The console: every progress and status line of a run goes through the ``resnet_jax`` logger.

Modules log to ``logging.getLogger(__name__)``: ``info`` for progress and status, ``warning`` for
what the user should look at. ``setup`` gives the ``resnet_jax`` logger one handler on stdout,
apart from absl's log, which ``cli`` keeps at WARNING so that the INFO lines orbax and JAX write
at every save and restore stay quiet. Errors that end a command are the single ``error:`` line
of ``cli`` on stderr; a command's result (a JSON line, a table) is printed by the command itself.
"""

from __future__ import annotations

import logging
import sys

LOGGER_NAME = 'resnet_jax'


class _Formatter(logging.Formatter):
  """``2026-11-25 08:14:53 message``; warnings say so after the time."""

  def format(self, record: logging.LogRecord) -> str:
    level = ' WARNING' if record.levelno >= logging.WARNING else ''
    return f'{self.formatTime(record, "%Y-%m-%d %H:%M:%S")}{level} {record.getMessage()}'


def setup(stream=None) -> logging.Logger:
  """Attaches the stdout handler once (idempotent); returns the ``resnet_jax`` logger."""
  logger = logging.getLogger(LOGGER_NAME)
  if not any(getattr(h, '_resnet_jax_console', False) for h in logger.handlers):
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(_Formatter())
    handler._resnet_jax_console = True
    logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  logger.propagate = False  # absl's root handler would print every line a second time
  return logger
