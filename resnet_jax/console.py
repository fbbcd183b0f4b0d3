"""The console: every progress and status line of a run goes through the ``resnet_jax`` logger.

Modules log to ``logging.getLogger(__name__)``: ``info`` for progress and status, ``warning`` for
what the user should look at. ``setup`` gives the ``resnet_jax`` logger one handler on stdout,
apart from absl's log, which ``cli`` keeps at WARNING so that the INFO lines orbax and JAX write
at every save and restore stay quiet. Errors that end a command are the single ``error:`` line
of ``cli`` on stderr; a command's result (a JSON line, a table) is printed by the command itself.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import sys
import tempfile

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


# What TensorFlow's C++ side prints on stderr as it loads, whatever TF_CPP_MIN_LOG_LEVEL says.
TENSORFLOW_BANNER = (
  'All log messages before absl::InitializeLog() is called are written to STDERR',
  'oneDNN custom operations are on',
)


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
  """Imports ``tensorflow`` with stderr held in a file, then passes on every line of it but the
  banner above (an import error and its output still show in full)."""

  def find_spec(self, name, path=None, target=None):
    del path, target
    if name != 'tensorflow':
      return None
    sys.meta_path.remove(self)  # one import; and find_spec below must not find this finder
    spec = importlib.util.find_spec(name)
    if spec is not None and spec.loader is not None:
      load = spec.loader.exec_module
      spec.loader.exec_module = lambda module: _without_banner(load, module)
    return spec


def _without_banner(load, module):
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as held:
    os.dup2(held.fileno(), 2)
    try:
      load(module)
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      held.seek(0)
      for line in held.read().decode(errors='replace').splitlines(keepends=True):
        if not any(text in line for text in TENSORFLOW_BANNER):
          sys.stderr.write(line)
      sys.stderr.flush()


def hold_back_tensorflow_banner():
  """Commands call this first: TensorFlow's start-up lines are noise on every run."""
  if 'tensorflow' not in sys.modules and not any(
    isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path
  ):
    sys.meta_path.insert(0, _QuietTensorFlowImport())
