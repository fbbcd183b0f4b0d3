"""Run records: ``metrics.jsonl`` (one JSON object a line), TensorBoard scalars, progress lines.

Only process 0 writes; the other processes get a writer that does nothing.
"""

from __future__ import annotations

import json
import logging
import os
import time


class MetricWriter:
  """Appends records to ``workdir/metrics.jsonl`` and TensorBoard event files."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    from tensorboardX import SummaryWriter  # no TensorBoard server needed to write events

    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = {
      split: SummaryWriter(os.path.join(workdir, 'tensorboard', split))
      for split in ('train', 'eval')
    }

  def write(self, record: dict):
    """``record`` has 'step' and 'split' ('train' | 'eval'); other numbers become scalars."""
    if not self.enabled:
      return
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    tb = self._tb[record['split']]
    for key, value in record.items():
      if key not in ('step', 'split') and isinstance(value, int | float):
        tb.add_scalar(key, value, global_step=record['step'])
    tb.flush()


def read(workdir: str) -> list[dict]:
  """All records of a run (for plots and tests)."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]


class Progress:
  """Throughput and ETA between calls of ``line``."""

  def __init__(self, total_steps: int, global_batch: int, start_step: int):
    self.total, self.batch = total_steps, global_batch
    self.last_step, self.last_time = start_step, time.time()

  def rate(self, step: int) -> tuple[float, float]:
    """(images/s since the last call, seconds per step); resets the window."""
    now = time.time()
    steps = max(step - self.last_step, 1)
    seconds_per_step = (now - self.last_time) / steps
    self.last_step, self.last_time = step, now
    return self.batch / max(seconds_per_step, 1e-9), seconds_per_step

  def line(self, record: dict, seconds_per_step: float) -> str:
    eta = (self.total - record['step']) * seconds_per_step
    hours, rest = divmod(int(eta), 3600)
    text = (
      f'step {record["step"]}/{self.total} epoch {record["epoch"]:.2f} loss {record["loss"]:.4f} '
      f'top1_err {record["top1_err"]:.4f} lr {record["learning_rate"]:.4g} '
      f'{record["images_per_sec"]:.0f} img/s ETA {hours}:{rest // 60:02d}:{rest % 60:02d}'
    )
    logging.info(text)
    return text
