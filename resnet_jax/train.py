"""The training loop: resume, train steps, evaluation, checkpoints, preemption, metrics."""

from __future__ import annotations

import collections
import json
import logging
import signal
import socket
import time

import jax
import numpy as np

from resnet_jax import (
  config_check,
  console,
  input_pipeline,
  metrics,
  sources,
  storage,
  workdir_lock,
)
from resnet_jax.experiment import Experiment

LOG = logging.getLogger(__name__)


class Preemption:
  """SIGTERM (preemption, SLURM's time limit) -> save a checkpoint and exit at the next step.

  One process: a Python handler sets a flag. Several processes: all must stop at the same step or
  the save deadlocks, so JAX's preemption sync point decides (its service catches the signal).
  """

  def __init__(self):
    self.requested = False
    self.loop_step = self.finished_step = 0  # dispatched / known finished on the devices
    self.multi = jax.process_count() > 1
    if not self.multi:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    LOG.info(
      'SIGTERM at step %d (devices finished step %d): saving a checkpoint and exiting.',
      self.loop_step,
      self.finished_step,
    )
    self.requested = True

  def reached(self, step: int) -> bool:
    self.loop_step = step
    if self.multi:
      from jax.experimental import multihost_utils

      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def restore(self):
    if not self.multi:
      signal.signal(signal.SIGTERM, self._previous)


def _write_config(config, workdir: str, start_step: int):
  """``config.json`` (the latest start) and ``config.<start_step>.json`` (kept for every start)."""
  if jax.process_index() == 0:
    text = json.dumps(config.to_dict(), indent=2, default=str)
    root = storage.path(workdir)
    storage.write_text_atomic(root / f'config.{start_step}.json', text)
    storage.write_text_atomic(root / 'config.json', text)
    storage.write_text_atomic(root / f'environment.{start_step}.json', json.dumps(_environment()))


def _changes_since_last_start(config, workdir: str) -> list[str]:
  """'field: old -> new' for each config field that differs from the workdir's last start."""
  saved = storage.path(workdir) / 'config.json'
  if not saved.exists():
    return []
  old = json.loads(saved.read_text())
  new = json.loads(json.dumps(config.to_dict(), default=str))  # as _write_config stores it
  return [
    f'{name}: {old.get(name)!r} -> {value!r}'
    for name, value in new.items()
    if old.get(name) != value
  ]


def _environment() -> dict:
  """What this start of the run ran on (read by resnet_jax.report)."""
  device = jax.devices()[0]
  return {
    'backend': jax.default_backend(),
    'device_kind': device.device_kind,
    'devices': jax.device_count(),
    'processes': jax.process_count(),
    'jax': jax.__version__,
    'host': socket.gethostname(),
    'started': time.time(),
  }


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (resuming from ``workdir`` if it has checkpoints) and returns the last eval record.

  The workdir is locked for this run first; nothing in it is written until the run is known to
  start (data found, checkpoint restored or refused).
  """
  console.setup()
  config_check.check(config, num_devices=jax.device_count(), num_processes=jax.process_count())
  lock = workdir_lock.acquire_everywhere(
    workdir,
    stale_seconds=config.lock_stale_seconds,
    heartbeat_seconds=config.lock_heartbeat_seconds,
  )
  try:
    return _train(config, workdir)
  finally:
    if lock is not None:
      lock.release()


def _train(config, workdir: str) -> dict:
  experiment = Experiment(config, workdir)
  experiment.pixel_mean()  # reads every training image it averages: bad data shows before any write
  state = experiment.initial_state()
  start_step = int(experiment.data_parallel.host(state.step))
  # Deliberate (more epochs, another batch size) or not, a resumed run that changed its config
  # continues its step count under the new values: say so before config.json is replaced.
  if (
    start_step
    and jax.process_index() == 0
    and (changes := _changes_since_last_start(config, workdir))
  ):
    LOG.warning(
      'Resuming step %d with %d config field(s) changed since the last start (each start keeps '
      'its config as config.<step>.json): %s',
      start_step,
      len(changes),
      '; '.join(changes),
    )
  _write_config(config, workdir, start_step)
  writer = metrics.MetricWriter(workdir, enabled=jax.process_index() == 0)
  eval_every = config.eval_every if config.eval_every > 0 else experiment.steps_per_epoch
  log_every = max(1, config.log_every)
  local = input_pipeline.train_dataset(
    config, experiment.train_source, experiment.layout, start_step, experiment.pixel_mean()
  )
  batches = experiment.data_parallel.batches(sources.numpy_batches(local, experiment.train_source))
  progress = metrics.Progress(experiment.total_steps, config.batch_size, start_step)
  preemption = Preemption()
  preemption.finished_step = start_step
  # JAX dispatches asynchronously: without a bound the loop runs ahead of the devices by up to
  # log_every steps (holding that many batches on them) and acts on SIGTERM that late.
  in_flight = collections.deque()
  pending, last_eval = [], {}
  LOG.info(
    '%s on %s: %d steps (%d per epoch), %d devices in %d processes, from step %d',
    config.model,
    config.dataset,
    experiment.total_steps,
    experiment.steps_per_epoch,
    jax.device_count(),
    jax.process_count(),
    start_step,
  )
  if start_step >= experiment.total_steps:
    LOG.info(
      '%s already holds the final step %d; raise num_train_steps or num_epochs to train '
      'further, or use resnet_jax.evaluate.',
      workdir,
      start_step,
    )
  try:
    for step in range(start_step + 1, experiment.total_steps + 1):
      state, step_metrics = experiment.train_fn(state, next(batches))
      pending.append(step_metrics)
      in_flight.append((step, step_metrics['loss']))
      while len(in_flight) > config.steps_in_flight:
        done_step, done = in_flight.popleft()
        jax.block_until_ready(done)
        preemption.finished_step = done_step
      if step % log_every == 0 or step == experiment.total_steps:
        _log_train(experiment, writer, progress, pending, step)
        pending = []
      if step % eval_every == 0 or step == experiment.total_steps:
        last_eval = _evaluate(experiment, writer, state, step)
        if step % eval_every == 0:  # a run's extra final eval must not move the schedule
          state = experiment.after_evaluation(state, last_eval)
      preempted = preemption.reached(step)
      if step % config.checkpoint_every == 0 or step == experiment.total_steps or preempted:
        metric = {'top1_err': last_eval['top1_err']} if last_eval.get('step') == step else None
        experiment.save(step, state, metric)
      if preempted:
        LOG.info('Saved step %d after SIGTERM; exiting.', step)
        break
  finally:
    experiment.checkpointer.wait()
    experiment.checkpointer.close()
    writer.close()
    preemption.restore()
  return last_eval


def _log_train(experiment, writer, progress, pending, step):
  """Writes the mean of the window's train metrics and prints the progress line."""
  window = experiment.data_parallel.host(pending)
  record = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
  record['learning_rate'] = float(window[-1]['learning_rate'])
  images_per_sec, seconds_per_step = progress.rate(step)
  record.update(
    step=step, epoch=step / experiment.steps_per_epoch, split='train', images_per_sec=images_per_sec
  )
  writer.write(record)
  if jax.process_index() == 0:
    LOG.info(progress.line(record, seconds_per_step))


def _evaluate(experiment, writer, state, step) -> dict:
  result = experiment.evaluate(state)
  images_per_sec = result['num_examples'] / max(result['eval_time_s'], 1e-9)
  record = dict(
    step=step,
    epoch=step / experiment.steps_per_epoch,
    split='eval',
    images_per_sec=images_per_sec,
    learning_rate=experiment.learning_rate(state),
    **result,
  )
  writer.write(record)
  if jax.process_index() == 0:
    LOG.info(
      'eval step %d: top1_err %.4f top5_err %.4f loss %.4f over %d examples',
      step,
      result['top1_err'],
      result['top5_err'],
      result['loss'],
      result['num_examples'],
    )
  return record
