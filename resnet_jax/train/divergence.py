"""Non-finite training steps, as the host learns of them: skip them or stop the run.

The train step never applies an update whose loss or gradients are not finite (``steps``), so
the state, and every checkpoint of it, stays finite; it reports such a step in its ``nonfinite``
metric. The loop reads that flag of each step as the step finishes (it waits on each step anyway,
``steps_in_flight`` behind), and before every save and evaluation it reads the flags of every
step dispatched so far, so a run that stops saves nothing after its last finite step.
Each event is a ``metrics.jsonl`` record with ``split: 'nonfinite'`` (``action``: 'skipped' or
'stopped'), which ``resnet_jax.report`` shows.
"""

from __future__ import annotations

import logging

from resnet_jax.errors import UserError

LOG = logging.getLogger(__name__)

SPLIT = 'nonfinite'
# A train step's 'nonfinite' metric: 0 = applied, else why it was not.
NONFINITE_GRADIENTS, NONFINITE_LOSS = 1.0, 2.0
DIVERGED_EXIT_CODE = 3  # not 2: the command was right, the training diverged


class TrainingDiverged(UserError):
  """A run stopped at a non-finite step; the message names it and the last checkpoint."""

  exit_code = DIVERGED_EXIT_CODE


class NonFiniteWatch:
  """Checks each finished step's ``nonfinite`` flag; records, skips or stops.

  Args:
    config: the run's config (``on_nonfinite``, ``nonfinite_skip_limit``).
    writer: the run's ``metrics.MetricWriter``.
    steps_per_epoch: for the records' ``epoch``.
    last_checkpoint: () -> the newest saved step or None (read when the run stops).
    checkpoint_dir: named in the stop line.
  """

  def __init__(self, config, writer, steps_per_epoch, last_checkpoint, checkpoint_dir):
    self.config, self.writer = config, writer
    self.steps_per_epoch = steps_per_epoch
    self.last_checkpoint, self.checkpoint_dir = last_checkpoint, checkpoint_dir
    self.in_a_row = 0

  def check(self, step: int, flag: float, details):
    """``flag``: the step's ``nonfinite`` metric on the host; ``details()`` -> its host metrics
    (fetched only for a flagged step). Raises TrainingDiverged when the run must stop."""
    if not flag:
      self.in_a_row = 0
      return
    self.in_a_row += 1
    metrics = details()
    loss, lr = float(metrics['loss']), float(metrics['learning_rate'])
    skip = self.config.on_nonfinite == 'skip' and self.in_a_row < self.config.nonfinite_skip_limit
    self.writer.write(
      {
        'step': step,
        'epoch': step / self.steps_per_epoch,
        'split': SPLIT,
        'action': 'skipped' if skip else 'stopped',
        'loss': loss,
        'learning_rate': lr,
      }
    )
    what = f'step {step} (learning rate {lr:.4g}): ' + (
      f'the loss, {loss},' if flag >= NONFINITE_LOSS else f'the gradient of the loss {loss:.4g}'
    )
    if skip:
      LOG.warning(
        '%s is not finite: the update was skipped (%d in a row; %d in a row stop the run).',
        what,
        self.in_a_row,
        self.config.nonfinite_skip_limit,
      )
      return
    saved = self.last_checkpoint()
    applied = step - self.in_a_row  # the last step whose update was applied
    kept = f'step {saved} in {self.checkpoint_dir}' if saved is not None else 'none yet'
    if saved is not None and saved > applied:  # saved while skipping: true, but say what it holds
      kept += f' (saved during the skipped steps: its weights are those of step {applied})'
    if self.config.on_nonfinite == 'skip':
      what = f'{self.in_a_row} steps in a row, the last {what}'
    raise TrainingDiverged(
      f'training diverged: {what} is not finite. The run stopped; no update after step '
      f'{applied} was applied. Last checkpoint: {kept}. Lower '
      f'--config.learning_rate (or allow a few such steps with --config.on_nonfinite=skip), then '
      f'run the same command to resume from that checkpoint.'
    )
