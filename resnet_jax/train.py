"""The training loop: set-up, resume, train steps, evaluation, checkpoints, preemption."""

from __future__ import annotations

import collections
import functools
import json
import logging
import signal
import socket
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from resnet_jax import (
  checkpoint,
  config_check,
  evaluate,
  input_pipeline,
  mean_image,
  metrics,
  models,
  optim,
  parallel,
  sources,
  steps,
  storage,
  workdir_lock,
)


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
    logging.warning(
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


def build_model(config, num_classes: int, *, train_bn_axis: bool = True):
  overrides = dict(
    zero_init_residual=config.zero_init_residual,
    stride_in_1x1=config.stride_in_1x1,
    bn_momentum=config.bn_momentum,
    bn_epsilon=config.bn_epsilon,
  )
  if config.shortcut:
    overrides['shortcut'] = config.shortcut
  if train_bn_axis and config.bn_group_size != 1:
    overrides['bn_axis_name'] = parallel.AXIS
    if config.bn_group_size > 1:
      n = jax.device_count()
      if n % config.bn_group_size:
        raise ValueError(f'bn_group_size={config.bn_group_size} does not divide {n} devices.')
      groups = np.arange(n).reshape(-1, config.bn_group_size).tolist()
      overrides['bn_axis_index_groups'] = groups
  dtype = jnp.float32
  if config.half_precision:
    dtype = {'bfloat16': jnp.bfloat16, 'float16': jnp.float16}[config.half_dtype]
  return models.get_model(config.model, num_classes=num_classes, dtype=dtype, **overrides)


def fresh_state(config, model, tx, dp) -> steps.TrainState:
  """A newly initialised TrainState (seeded by config.seed), replicated over the mesh."""
  init = functools.partial(
    steps.create_train_state,
    model,
    tx,
    (config.image_size, config.image_size, 3),
    fp16_loss_scale=config.half_precision and config.half_dtype == 'float16',
  )
  return jax.jit(init, out_shardings=dp.replicated)(jax.random.key(config.seed))


class Run:
  """Everything derived from a config: data sources, model, optimiser, mesh, checkpoints."""

  def __init__(self, config, workdir: str, *, reader: bool = False):
    self.config, self.workdir = config, workdir
    self.mesh = parallel.make_mesh()
    self.dp = parallel.DataParallel(self.mesh, config.parallelism)
    input_pipeline.check_batch(config.batch_size, jax.device_count(), jax.process_count())
    if config.eval_batch_size:
      input_pipeline.check_batch(config.eval_batch_size, jax.device_count(), jax.process_count())
    self.train_source = sources.get_source(config, config.train_split)
    self.eval_source = sources.get_source(config, config.eval_split)
    self.num_classes = config.num_classes or self.train_source.num_classes
    self.mean_image = None  # pixel_mean normalisation: loaded (or computed) once, on first use
    self.layout = input_pipeline.Layout.current(config.batch_size)
    self.steps_per_epoch = input_pipeline.train_steps_per_epoch(self.train_source, self.layout)
    self.total_steps = optim.total_steps(config, self.steps_per_epoch)
    self.base_schedule = optim.schedule_fn(config, self.steps_per_epoch, self.total_steps)
    self.model = build_model(config, self.num_classes)
    eval_model = build_model(config, self.num_classes, train_bn_axis=False)
    self.tx = optim.create_optimizer(config)
    self.train_fn = self.dp.wrap(
      functools.partial(
        steps.train_step,
        model=self.model,
        tx=self.tx,
        config=config,
        base_schedule=self.base_schedule,
        num_classes=self.num_classes,
      )
    )
    self.eval_fn = self.dp.wrap(
      functools.partial(evaluate.eval_step, model=eval_model, config=config), donate_state=False
    )
    self.checkpointer = checkpoint.Checkpointer(
      storage.path(workdir) / 'checkpoints',
      keep=config.keep_checkpoints,
      keep_best=config.keep_best,
      async_save=config.async_checkpoints,
      reader=reader,
    )
    self.meta = {'model': config.model, 'num_classes': self.num_classes}

  def initial_state(self) -> steps.TrainState:
    """A fresh state (seeded), or the latest checkpoint of the workdir, or init_from weights."""
    state = fresh_state(self.config, self.model, self.tx, self.dp)
    restored = self.checkpointer.restore(state, self.meta)
    if restored is not None:
      logging.warning('Resuming from step %d of %s', int(restored[0].step), self.workdir)
      return restored[0]
    if self.config.init_from:
      state = self._init_from(state)
    return state

  def _init_from(self, state):
    abstract = {'params': state.params, 'batch_stats': state.batch_stats}
    loaded = checkpoint.load_variables(
      self.config.init_from, abstract, self.dp.replicated, self.config.init_from_skip
    )
    merged = jax.tree.map(
      lambda new, old: old if new is None else new, loaded, abstract, is_leaf=lambda x: x is None
    )
    return state.replace(params=merged['params'], batch_stats=merged['batch_stats'])

  def evaluate(self, state) -> dict:
    """Scores the eval split; ``state`` in the form the wrapped steps take (put_state)."""
    return evaluate.run_evaluation(
      self.dp, state, self.eval_fn, self.config, self.eval_source, self.pixel_mean()
    )

  def pixel_mean(self):
    """The training split's mean image (None unless normalization is 'pixel_mean')."""
    if self.config.normalization == 'pixel_mean' and self.mean_image is None:
      self.mean_image = mean_image.load_or_compute(self.config, self.train_source)
    return self.mean_image


def _write_config(config, workdir: str, start_step: int):
  """``config.json`` (the latest start) and ``config.<start_step>.json`` (kept for every start)."""
  if jax.process_index() == 0:
    text = json.dumps(config.to_dict(), indent=2, default=str)
    root = storage.path(workdir)
    storage.write_text_atomic(root / f'config.{start_step}.json', text)
    storage.write_text_atomic(root / 'config.json', text)
    storage.write_text_atomic(root / f'environment.{start_step}.json', json.dumps(_environment()))


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
  run = Run(config, workdir)
  run.pixel_mean()  # reads every training image it averages: bad data shows before any write
  state = run.dp.put_state(run.initial_state())
  start_step = int(run.dp.host(state.step))
  _write_config(config, workdir, start_step)
  writer = metrics.MetricWriter(workdir, enabled=jax.process_index() == 0)
  eval_every = config.eval_every if config.eval_every > 0 else run.steps_per_epoch
  log_every = max(1, config.log_every)
  local = input_pipeline.train_dataset(
    config, run.train_source, run.layout, start_step, run.pixel_mean()
  )
  batches = run.dp.batches(input_pipeline.numpy_batches(local, run.train_source))
  progress = metrics.Progress(run.total_steps, config.batch_size, start_step)
  preemption = Preemption()
  preemption.finished_step = start_step
  # JAX dispatches asynchronously: without a bound the loop runs ahead of the devices by up to
  # log_every steps (holding that many batches on them) and acts on SIGTERM that late.
  in_flight = collections.deque()
  pending, last_eval = [], {}
  logging.warning(
    '%s on %s: %d steps (%d per epoch), %d devices in %d processes, from step %d',
    config.model,
    config.dataset,
    run.total_steps,
    run.steps_per_epoch,
    jax.device_count(),
    jax.process_count(),
    start_step,
  )
  if start_step >= run.total_steps:
    print(
      f'{workdir} already holds the final step {start_step}; raise num_train_steps or '
      f'num_epochs to train further, or use resnet_jax.evaluate.',
      flush=True,
    )
  try:
    for step in range(start_step + 1, run.total_steps + 1):
      state, step_metrics = run.train_fn(state, next(batches))
      pending.append(step_metrics)
      in_flight.append((step, step_metrics['loss']))
      while len(in_flight) > config.steps_in_flight:
        done_step, done = in_flight.popleft()
        jax.block_until_ready(done)
        preemption.finished_step = done_step
      if step % log_every == 0 or step == run.total_steps:
        state = _log_train(run, writer, progress, state, pending, step)
        pending = []
      if step % eval_every == 0 or step == run.total_steps:
        last_eval = _evaluate(run, writer, state, step)
        if step % eval_every == 0:  # a run's extra final eval must not move the schedule
          state = _update_plateau(run, state, last_eval)
      preempted = preemption.reached(step)
      if step % config.checkpoint_every == 0 or step == run.total_steps or preempted:
        metric = {'top1_err': last_eval['top1_err']} if last_eval.get('step') == step else None
        run.checkpointer.save(step, run.dp.canonical(state), run.meta, metric)
      if preempted:
        logging.warning('Saved step %d after SIGTERM; exiting.', step)
        break
  finally:
    run.checkpointer.wait()
    run.checkpointer.close()
    writer.close()
    preemption.restore()
  return last_eval


def _update_plateau(run, state, eval_record):
  schedule = optim.plateau_update(
    run.config, run.dp.host(state.schedule), eval_record[run.config.plateau_metric]
  )
  return state.replace(schedule=run.dp.put_state(schedule))


def _log_train(run, writer, progress, state, pending, step):
  """Writes the mean of the window's train metrics; ends warmup-until-error when due."""
  window = run.dp.host(pending)
  record = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
  record['learning_rate'] = float(window[-1]['learning_rate'])
  images_per_sec, seconds_per_step = progress.rate(step)
  record.update(
    step=step, epoch=step / run.steps_per_epoch, split='train', images_per_sec=images_per_sec
  )
  writer.write(record)
  if jax.process_index() == 0:
    print(progress.line(record, seconds_per_step), flush=True)
  if run.config.warmup_until_train_error > 0 and step % run.config.log_every == 0:
    schedule = run.dp.host(state.schedule)
    if not schedule['warmup_done']:
      new = optim.warmup_update(run.config, schedule, record['top1_err'])
      state = state.replace(schedule=run.dp.put_state(new))
  return state


def _evaluate(run, writer, state, step) -> dict:
  result = run.evaluate(state)
  images_per_sec = result['num_examples'] / max(result['eval_time_s'], 1e-9)
  record = dict(
    step=step,
    epoch=step / run.steps_per_epoch,
    split='eval',
    images_per_sec=images_per_sec,
    learning_rate=float(
      optim.learning_rate(run.config, run.base_schedule, step, run.dp.host(state.schedule))
    ),
    **result,
  )
  writer.write(record)
  if jax.process_index() == 0:
    print(
      f'eval step {step}: top1_err {result["top1_err"]:.4f} top5_err {result["top5_err"]:.4f} '
      f'loss {result["loss"]:.4f} over {result["num_examples"]} examples',
      flush=True,
    )
  return record


def evaluate_workdir(config, workdir: str, step: int | None = None) -> dict:
  """Restores a run (latest or ``step``) and scores the eval split with ``config.eval_mode``."""
  config_check.check(config, num_devices=jax.device_count(), num_processes=jax.process_count())
  checkpoints = storage.path(workdir) / 'checkpoints'
  if not checkpoints.is_dir() and not config.init_from:  # never create what we were asked to read
    raise checkpoint.CheckpointError(
      f'No checkpoints in {checkpoints} to evaluate: check --workdir (or pass '
      f'--config.init_from=WEIGHTS to evaluate converted weights).'
    )
  run = Run(config, workdir, reader=True)  # the run may be training now
  if run.checkpointer.latest_step() is None and not config.init_from:
    run.checkpointer.close()
    raise checkpoint.CheckpointError(f'No checkpoint in {checkpoints} to evaluate.')
  state = run.initial_state()  # the latest checkpoint
  if step is not None:
    state, _ = run.checkpointer.restore(state, run.meta, step)
  result = run.evaluate(run.dp.put_state(state))
  run.checkpointer.close()
  return {'step': int(jax.device_get(state.step)), **result}


def flat_params(state) -> dict:
  """Parameters as a flat {path: numpy} dict (for comparisons in tests and tools)."""
  return traverse_util.flatten_dict(jax.device_get(state.params), sep='/')
