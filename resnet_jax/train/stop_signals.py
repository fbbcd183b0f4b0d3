"""SIGTERM (preemption, SLURM's time limit) and SIGINT (Ctrl-C) during training: save, then exit.

Either signal makes the loop save a checkpoint at the next step and stop; a second SIGINT ends
the process at once (exit code 130), without that checkpoint. One process: Python handlers set a
flag. Several processes: all must stop at the same step or the collective save deadlocks, so
JAX's preemption sync point decides; its service catches SIGTERM, and a SIGINT is passed on to
it as a SIGTERM to this process.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

import jax

from resnet_jax.cli import INTERRUPTED_EXIT_CODE

LOG = logging.getLogger(__name__)


class StopSignals:
  """Installed for the training loop (``restore`` puts the previous handlers back)."""

  def __init__(self):
    self.received = ''  # 'SIGTERM' or 'SIGINT' once one came
    self.loop_step = self.finished_step = 0  # dispatched / known finished on the devices
    self.multi = jax.process_count() > 1
    self._previous = {signal.SIGINT: signal.signal(signal.SIGINT, self._interrupt)}
    if not self.multi:
      self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._terminate)

  def _terminate(self, signum, frame):
    del signum, frame
    self._note('SIGTERM')

  def _interrupt(self, signum, frame):
    del signum, frame
    if self.received == 'SIGINT':
      print(
        f'interrupted: a second Ctrl-C; exiting at step {self.loop_step} without a checkpoint.',
        file=sys.stderr,
        flush=True,
      )
      os._exit(INTERRUPTED_EXIT_CODE)
    self._note('SIGINT')
    if self.multi:
      os.kill(os.getpid(), signal.SIGTERM)  # to JAX's preemption service: every process agrees

  def _note(self, name: str):
    self.received = self.received or name
    LOG.info(
      '%s at step %d (devices finished step %d): saving a checkpoint and exiting%s.',
      name,
      self.loop_step,
      self.finished_step,
      ' (Ctrl-C again to quit at once)' if name == 'SIGINT' else '',
    )

  def reached(self, step: int) -> bool:
    """Whether the loop must save and stop after ``step``."""
    self.loop_step = step
    if self.multi:
      from jax.experimental import multihost_utils

      return multihost_utils.reached_preemption_sync_point(step)
    return bool(self.received)

  def restore(self):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
