"""Run records: ``metrics.jsonl`` (one JSON object a line), TensorBoard scalars, progress lines.

Only process 0 writes; the other processes get a writer that does nothing. Both files may live on
cloud storage (``storage``): TensorBoard event files there are written through epath in parts.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import sys
import time

from resnet_jax import storage

LOG = logging.getLogger(__name__)


def _import_tensorboardx():
  """tensorboardX, imported without torch: it imports torch, when installed, only to accept torch
  tensors (never passed here), and that alone added ~2 s to every run's start-up."""
  hide = 'torch' not in sys.modules
  if hide:
    sys.modules['torch'] = None  # makes ``import torch`` raise ImportError
  try:
    return importlib.import_module('tensorboardX')
  finally:
    if hide:
      del sys.modules['torch']


tensorboardx = _import_tensorboardx()
record_writer = tensorboardx.record_writer

# A cloud object cannot grow: each flush re-uploads the current part of the event file, and a new
# part starts past this size (TensorBoard reads every *tfevents* file of a directory in order).
EVENT_PART_BYTES = 1 << 20


class _CloudEventFile:
  """tensorboardX's record writer interface over epath, for gs:// and s3:// logdirs."""

  def __init__(self, path: str):
    self.base, self.part = path, 0
    self.buffer = io.BytesIO()

  def write(self, data: bytes):
    self.buffer.write(data)

  def flush(self):
    name = self.base if self.part == 0 else f'{self.base}.part{self.part}'
    storage.path(name).write_bytes(self.buffer.getvalue())
    if self.buffer.tell() > EVENT_PART_BYTES:
      self.part, self.buffer = self.part + 1, io.BytesIO()

  def close(self):
    self.flush()


class _CloudEventFiles:
  def open(self, path):
    return _CloudEventFile(path)

  def directory_check(self, path):
    del path  # object stores have no directories to create


for _scheme in ('gs', 's3'):
  record_writer.register_writer_factory(_scheme, _CloudEventFiles())


SPLITS = ('train', 'eval')


class MetricWriter:
  """Appends records to ``workdir/metrics.jsonl`` and TensorBoard event files.

  ``resume_step``: the step a run restarts from. Records beyond it (written after that
  checkpoint by the run that stopped) are dropped first, since they will be written again, so
  the file holds one record per step and split; TensorBoard is told to purge its events likewise.
  """

  def __init__(self, workdir: str, enabled: bool = True, resume_step: int = 0):
    self.enabled = enabled
    if not enabled:
      return

    root = storage.path(workdir)
    _drop_records_beyond(root / 'metrics.jsonl', resume_step)
    self._jsonl = storage.AppendOnlyText(root / 'metrics.jsonl')
    self._tb = {
      split: tensorboardx.SummaryWriter(
        str(root / 'tensorboard' / split), purge_step=resume_step + 1 if resume_step else None
      )
      for split in SPLITS
    }

  def write(self, record: dict):
    """``record`` has 'step' and 'split' ('train' | 'eval' become TensorBoard scalars too; other
    splits, such as 'nonfinite' events, are in metrics.jsonl only)."""
    if not self.enabled:
      return
    self._jsonl.append(json.dumps({**record, 'time': time.time()}) + '\n')
    tb = self._tb.get(record['split'])
    if tb is None:
      return
    for key, value in record.items():
      if key not in ('step', 'split', 'time') and isinstance(value, int | float):
        tb.add_scalar(key, value, global_step=record['step'])
    tb.flush()

  def close(self):
    if self.enabled:
      for tb in self._tb.values():
        tb.close()


def _drop_records_beyond(target, step: int):
  """Rewrites ``target`` without the records past ``step`` (and without a line cut short by a
  killed writer); leaves it untouched when there are none."""
  if not target.exists():
    return
  kept, dropped = [], 0
  for line in target.read_text().splitlines():
    if not line.strip():
      continue
    try:
      beyond = json.loads(line)['step'] > step
    except (ValueError, KeyError, TypeError):
      beyond = True
    if beyond:
      dropped += 1
    else:
      kept.append(line + '\n')
  if dropped:
    storage.write_text_atomic(target, ''.join(kept))
    LOG.info(
      '%s: dropped %d record(s) past step %d, the step this run resumes from', target, dropped, step
    )


def require(workdir: str):
  """Ends a command that reads a run's records (plot, report) with one line when ``workdir``
  has none: no metrics.jsonl, or one with no record yet (a run stopped before its first log)."""
  from resnet_jax import cli

  file = storage.path(workdir) / 'metrics.jsonl'
  if not file.exists():
    cli.fail(f'{workdir}: no metrics.jsonl (not a resnet_jax workdir, or not started).')
  if not file.read_text().strip():
    cli.fail(
      f'{workdir}: metrics.jsonl has no records yet (the run stopped or is still before its '
      f'first logged step): nothing to show.'
    )


def read(workdir: str) -> list[dict]:
  """All records of a run (for plots and tests)."""
  text = (storage.path(workdir) / 'metrics.jsonl').read_text()
  return [json.loads(line) for line in text.splitlines() if line.strip()]


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
    return text
