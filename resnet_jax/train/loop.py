"""The training loop: resume, train steps, evaluation, checkpoints, preemption, metrics."""

from __future__ import annotations

import collections
import json
import logging
import socket
import time

import jax
import numpy as np

from resnet_jax import config_check, console, distributed, storage
from resnet_jax.data import input_pipeline
from resnet_jax.data.source import numpy_batches
from resnet_jax.train import divergence, metrics, workdir_lock
from resnet_jax.train.experiment import Experiment
from resnet_jax.train.stop_signals import INTERRUPTED_EXIT_CODE, StopSignals

LOG = logging.getLogger(__name__)


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
  config_check.check_here(config)
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
  experiment.check_checkpoint_space(state)
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
  writer = metrics.MetricWriter(workdir, jax.process_index() == 0, resume_step=start_step)
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
  stop, ended_by = StopSignals(), None
  try:
    return _steps(experiment, writer, stop, state, start_step)
  except BaseException as e:
    ended_by = e
    if distributed.lost_peer(e):
      latest = experiment.checkpointer.latest_step()
      raise distributed.PeerLostError(
        f'another process of this job is gone ({storage.describe(e)}), and this one cannot go '
        f'on alone. The last checkpoint is {"none" if latest is None else f"step {latest}"} in '
        f'{experiment.checkpointer.directory}: run the same command to resume from it.'
      ) from e
    raise
  finally:
    stop.restore()
    if not distributed.lost_peer(ended_by):  # closing waits for the others: not for a dead one
      _close(experiment, writer, ended_by)
    if ended_by is None and stop.received == 'SIGINT':
      raise SystemExit(INTERRUPTED_EXIT_CODE)  # after the save; the lock is released next


def _steps(experiment, writer, stop, state, start_step: int) -> dict:
  """Trains from ``start_step`` to the end (or a stop signal); returns the last eval record.

  Raises:
    divergence.TrainingDiverged: at a non-finite step (``on_nonfinite``).
  """
  config = experiment.config
  eval_every = config.eval_every if config.eval_every > 0 else experiment.steps_per_epoch
  log_every = max(1, config.log_every)
  local = input_pipeline.train_dataset(
    config, experiment.train_source, experiment.layout, start_step, experiment.pixel_mean()
  )
  batches = experiment.data_parallel.batches(numpy_batches(local, experiment.train_source))
  progress = metrics.Progress(experiment.total_steps, config.batch_size, start_step)
  stop.finished_step = start_step
  watch = divergence.NonFiniteWatch(
    config,
    writer,
    experiment.steps_per_epoch,
    experiment.checkpointer.latest_step,
    experiment.checkpointer.directory,
  )
  # JAX dispatches asynchronously: without a bound the loop runs ahead of the devices by up to
  # log_every steps (holding that many batches on them) and acts on a signal that late.
  in_flight = collections.deque()

  def settle(limit: int):
    """Waits for dispatched steps until at most ``limit`` remain, checking each for NaNs."""
    while len(in_flight) > limit:
      done_step, done = in_flight.popleft()
      flag = experiment.data_parallel.host(done['nonfinite'])  # waits for the step
      watch.check(done_step, flag, lambda done=done: experiment.data_parallel.host(done))
      stop.finished_step = done_step

  pending, last_eval = [], {}
  for step in range(start_step + 1, experiment.total_steps + 1):
    state, step_metrics = experiment.train_fn(state, next(batches))
    pending.append(step_metrics)
    in_flight.append((step, step_metrics))
    settle(config.steps_in_flight)
    if step % log_every == 0 or step == experiment.total_steps:
      _log_train(experiment, writer, progress, pending, step)
      pending = []
    if step % eval_every == 0 or step == experiment.total_steps:
      settle(0)  # an evaluation (and a save) only of a state all of whose steps were checked
      last_eval = _evaluate(experiment, writer, state, step)
      if step % eval_every == 0:  # a run's extra final eval must not move the schedule
        state = experiment.after_evaluation(state, last_eval)
    stopping = stop.reached(step)
    if step % config.checkpoint_every == 0 or step == experiment.total_steps or stopping:
      settle(0)
      metric = None
      if last_eval.get('step') == step:  # every error, so a resume may rank by another
        metric = {k: last_eval[k] for k in ('top1_err', 'ema_top1_err') if k in last_eval}
      experiment.save(step, state, metric)
    if stopping:
      LOG.info('Saved step %d after %s; exiting.', step, stop.received or 'SIGTERM')
      break
  return last_eval


def _close(experiment, writer, ended_by: BaseException | None):
  """Finishes the pending save and closes the run's files. When an error already ends the run
  (a full disk, say), a failure here is one more log line, not a second traceback over it, and a
  half-written checkpoint is removed; otherwise it is raised: the last save did not complete."""
  for action in (experiment.checkpointer.wait, experiment.checkpointer.close, writer.close):
    try:
      action()
    except Exception as e:
      if ended_by is None:
        raise
      LOG.warning('While stopping: %s', storage.describe(e))
  if ended_by is not None:
    experiment.checkpointer.remove_partial_saves()


def _log_train(experiment, writer, progress, pending, step):
  """Writes the mean of the window's train metrics and prints the progress line.

  Steps whose update was skipped for a non-finite loss are left out of the means and counted.
  """
  window = experiment.data_parallel.host(pending)
  finite = [m for m in window if not m['nonfinite']] or window
  record = {k: float(np.mean([m[k] for m in finite])) for k in finite[0] if k != 'nonfinite'}
  record['learning_rate'] = float(window[-1]['learning_rate'])
  images_per_sec, seconds_per_step = progress.rate(step)
  record.update(
    step=step, epoch=step / experiment.steps_per_epoch, split='train', images_per_sec=images_per_sec
  )
  if len(finite) < len(window):
    record['nonfinite_steps'] = len(window) - len(finite)
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
      'eval step %d: top1_err %.4f top5_err %.4f loss %.4f over %d examples%s',
      step,
      result['top1_err'],
      result['top5_err'],
      result['loss'],
      result['num_examples'],
      f'; EMA top1_err {result["ema_top1_err"]:.4f}' if 'ema_top1_err' in result else '',
    )
    for name, _ in experiment.eval_sets:
      LOG.info(
        'eval step %d on %s: top1_err %.4f top5_err %.4f over %d examples',
        step,
        name,
        result[f'{name}/top1_err'],
        result[f'{name}/top5_err'],
        result[f'{name}/num_examples'],
      )
    shots = [k for k in result if k.startswith('fewshot_') and k.endswith('shot')]
    if shots:
      LOG.info('few-shot probe: %s', ', '.join(f'{k[8:]} {result[k]:.4f}' for k in shots))
  return record
