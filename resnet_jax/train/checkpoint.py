"""Orbax checkpoints: periodic async saves, keep latest N + best by eval error, auto-resume.

Layout: ``workdir/checkpoints/<step>/{state,meta}``. Orbax writes each step into a temporary
directory and renames it when complete, so a process killed mid-save (even by SIGKILL) leaves the
previous checkpoint as the latest restorable one. States are saved as global arrays and restored
onto whatever mesh the restoring run has (8 devices -> 4 devices, 2 hosts -> 1 host).

A latest checkpoint that cannot be read (a truncated file, a lost object) does not stop a run:
restore falls back to the newest step that reads, and the damaged step is moved aside to
``workdir/checkpoints_damaged/<step>`` for inspection (it would otherwise collide with the step
the resumed run saves next).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from resnet_jax import storage
from resnet_jax.errors import UserError
from resnet_jax.models import block_layout, norms

LOG = logging.getLogger(__name__)

DAMAGED_DIR = 'checkpoints_damaged'
# What checkpoints saved before a metadata field existed hold for it (their optimiser was SGD).
META_BEFORE_FIELDS = {'optimizer': 'sgd', 'freeze': ''}
_TMP_SUFFIX = '.orbax-checkpoint-tmp'  # where orbax writes a step until it is complete


class CheckpointError(UserError):
  """A checkpoint could not be restored; the message names the directory and the mismatch."""


# GoogLeNet's auxiliary classifiers: trained from scratch when the weights lack them (or have
# another class count), as a classifier head is.
AUXILIARY_HEADS = ('aux1/', 'aux2/')

# A reader (evaluate beside a running trainer) may see the newest step deleted by the trainer's
# retention as it reads it; it then reads the new newest, this many times at most.
VANISHED_RETRIES = 20


class DamagedCheckpointError(CheckpointError):
  """One step's files cannot be read back."""

  def __init__(self, path, reason: str):
    super().__init__(f'Checkpoint {path} cannot be restored: {reason}')
    self.reason = reason


def _ranking_error(metric: str):
  """The error that ranks checkpoints for keep_best: ``metric`` of the evaluation stored with
  each step (a NaN, or a step saved without that metric, ranks last)."""

  def error(metrics: dict) -> float:
    value = float(metrics.get(metric, math.inf))
    return value if math.isfinite(value) else math.inf

  return error


class _WithoutMetricWarning(logging.Filter):
  """orbax warns at every save without an evaluation when best_fn is set; most saves have none
  (eval_every and checkpoint_every rarely meet), and such steps are simply not ranked."""

  def filter(self, record: logging.LogRecord) -> bool:
    return 'did not provide metrics' not in record.getMessage()


logging.getLogger('absl').addFilter(_WithoutMetricWarning())


def _while_listed(list_steps, directory):
  """``list_steps()`` (orbax listing a run's steps: a CheckpointManager made or reloaded), again
  when a running trainer's retention deleted a step between orbax listing it and reading its
  time (a ``FileNotFoundError`` for that step): a listing out of date, not damage."""
  for _ in range(VANISHED_RETRIES):
    try:
      return list_steps()
    except FileNotFoundError as e:
      LOG.info('A checkpoint step was deleted while it was listed (%s): listing again.', e)
  raise CheckpointError(
    f'The checkpoints in {directory} were deleted as fast as they were listed '
    f'({VANISHED_RETRIES} tries): the run writing this workdir saves often and keeps few. '
    f'Read them after it ends, or give it a larger --config.keep_checkpoints.'
  )


def _first_line(error: Exception) -> str:
  lines = str(error).strip().splitlines()
  return f'{type(error).__name__}: {lines[0] if lines else ""}'[:300]


class Checkpointer:
  """Saves and restores a run's TrainState plus JSON metadata.

  Args:
    directory: ``workdir/checkpoints`` (local or cloud).
    keep: latest checkpoints kept.
    keep_best: additionally kept, lowest ``best_metric`` of the evaluation passed to ``save``.
    best_metric: 'top1_err' or 'ema_top1_err' (the averaged weights').
    async_save: write in a background thread while training continues.
    reader: only restores (e.g. evaluate while the run trains): leaves temporary dirs alone.
  """

  def __init__(
    self,
    directory: str,
    *,
    keep: int = 3,
    keep_best: int = 1,
    best_metric: str = 'top1_err',
    async_save=True,
    reader=False,
  ):
    self.directory = storage.path(directory)
    preservation = [policies.preservation_policy.LatestN(n=keep)]
    if keep_best > 0:
      preservation.append(
        policies.preservation_policy.BestN(
          get_metric_fn=_ranking_error(best_metric),
          reverse=True,  # descending, keep the tail: the lowest errors
          n=keep_best,
          keep_checkpoints_without_metrics=False,
        )
      )
    options = ocp.CheckpointManagerOptions(
      enable_async_checkpointing=async_save,
      preservation_policy=policies.preservation_policy.AnyPreservationPolicy(preservation),
      # orbax writes a step's metrics (WORKDIR/checkpoints/<step>/metrics) only when best_fn is
      # set, and reads them back on start-up: without it a resumed run forgets which step was
      # best and deletes it. The preservation policy above decides what is kept.
      best_fn=_ranking_error(best_metric) if keep_best > 0 else None,
      best_mode='min',
      # A reader (evaluate beside a training run) must not delete the trainer's save in progress.
      cleanup_tmp_directories=not reader,
      create=False,  # created by the first save: a run refused at start-up leaves no trace
    )
    self.manager = _while_listed(
      lambda: ocp.CheckpointManager(self.directory, options=options, item_names=('state', 'meta')),
      self.directory,
    )

  def _reload(self):
    _while_listed(self.manager.reload, self.directory)

  def check_space(self, state, what: str):
    """Raises CheckpointError, before anything is written, when the local disk cannot hold one
    more checkpoint of ``state`` (global arrays; a save that runs out of room half-way fails in
    orbax's background threads). Process 0 decides for all, so every process stops alike."""
    if storage.is_cloud(self.directory):
      return
    needed = int(sum(x.nbytes for x in jax.tree.leaves(state)) * 1.1) + (256 << 10)
    self.manager.wait_until_finished()  # a save still being written has not taken its room yet
    free = storage.free_bytes(self.directory)
    if jax.process_count() > 1:  # in MiB: JAX's arrays are 32-bit unless x64 is on
      free_mib = np.int32(min(free >> 20, np.iinfo(np.int32).max))
      free = int(multihost_utils.broadcast_one_to_all(free_mib)) << 20
    if free < needed:
      latest = self.manager.latest_step()
      raise CheckpointError(
        f'No room for {what} in {self.directory}: it needs about {needed / 2**20:.1f} MB and '
        f'{free / 2**20:.1f} MB are free. Nothing was written; the last checkpoint is '
        f'{"none" if latest is None else f"step {latest}"}. Free some space, or move the workdir '
        f'to a larger disk, then run the same command to resume.'
      )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, meta: dict[str, Any], metrics: dict | None = None):
    self.check_space(state, f'checkpoint step {step}')
    self.manager.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
      metrics=metrics,
      force=True,
    )

  def restore(
    self, abstract_state, expected_meta: dict[str, Any], step: int | None = None, upgrade=None
  ):
    """Restores ``step``, or else the newest readable step, onto ``abstract_state``'s shardings.

    ``upgrade(saved, abstract_state)``, if given, converts a state saved in another layout
    (``saved``: the nested dicts and arrays on disk) to the current one, or returns None when it
    does not recognise the layout.

    Returns:
      (state, meta), or None when there is no checkpoint.

    Raises:
      CheckpointError: when the checkpoint was made for another model/dataset, when the asked
        ``step`` is unreadable, or when no step is readable (naming each step and its failure).
    """
    if step is not None:
      try:
        return self._restore_step(step, abstract_state, expected_meta, upgrade)
      except DamagedCheckpointError:
        if self._step_exists(step):
          raise
        raise CheckpointError(
          f'Checkpoint step {step} in {self.directory} was deleted while it was read: the run '
          f'writing this workdir keeps only its newest (keep_checkpoints) and best steps. Omit '
          f'--checkpoint_step to read the newest, or choose a step that run keeps.'
        ) from None
    failures = {}
    for _ in range(VANISHED_RETRIES):
      vanished = None
      for candidate in sorted(self.manager.all_steps(), reverse=True):
        if candidate in failures:
          continue
        try:
          restored = self._restore_step(candidate, abstract_state, expected_meta, upgrade)
        except DamagedCheckpointError as e:
          if not self._step_exists(candidate):  # not damage: a running trainer's retention
            vanished = candidate
            break
          LOG.warning('Skipping damaged checkpoint step %d: %s', candidate, e.reason)
          failures[candidate] = e.reason
          continue
        self._move_aside(sorted(failures))
        return restored
      if vanished is None:
        break
      LOG.info(
        'Checkpoint step %d was deleted while it was read (the run writing this workdir keeps '
        'only its newest steps): reading the newest step again.',
        vanished,
      )
      self._reload()
    else:
      raise CheckpointError(
        f'The checkpoints in {self.directory} were deleted as fast as they were read '
        f'({VANISHED_RETRIES} tries): the run writing this workdir saves often and keeps few. '
        f'Evaluate after it ends, or give it a larger --config.keep_checkpoints.'
      )
    if failures:
      listing = '; '.join(f'step {s}: {reason}' for s, reason in failures.items())
      raise CheckpointError(
        f'No checkpoint in {self.directory} can be restored ({listing}). Nothing was changed; '
        f'use a new workdir, or inspect the steps named.'
      )
    return None

  def _step_exists(self, step: int) -> bool:
    self._reload()
    return step in self.manager.all_steps() and (self.directory / str(step)).exists()

  def _move_aside(self, damaged_steps: list[int]):
    """Keeps damaged steps for inspection, out of the way of the steps this run will save."""
    if not damaged_steps:
      return
    if jax.process_index() == 0:
      aside = self.directory.parent / DAMAGED_DIR
      aside.mkdir(parents=True, exist_ok=True)
      for step in damaged_steps:
        target = aside / str(step)
        if target.exists():
          target.rmtree()
        (self.directory / str(step)).rename(target)
        LOG.warning('Moved damaged checkpoint step %d to %s', step, target)
    multihost_utils.sync_global_devices('checkpoint_move_aside')
    self._reload()

  def _restore_step(self, step: int, abstract_state, expected_meta: dict[str, Any], upgrade=None):
    path = self.directory / str(step)
    try:
      meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
      meta = meta['meta']
    except Exception as e:
      raise DamagedCheckpointError(path, f'metadata unreadable ({_first_line(e)})') from e
    meta = {**META_BEFORE_FIELDS, **meta}
    mismatched = {k: (meta.get(k), v) for k, v in expected_meta.items() if meta.get(k) != v}
    if mismatched:
      details = ', '.join(f'{k}: saved {a!r}, this run {b!r}' for k, (a, b) in mismatched.items())
      hint = 'Use a new workdir'
      if 'model' not in mismatched:  # same architecture: its weights can seed a new run
        hint += f', or --config.init_from={self.directory.parent} to start from its weights'
      raise CheckpointError(
        f'Checkpoint {path} was made by an incompatible run ({details}). {hint}.'
      )
    try:
      restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
      )
    except Exception as e:
      upgraded = upgrade and self._upgraded(step, abstract_state, upgrade)
      if upgraded is None:
        raise DamagedCheckpointError(
          path, f'state unreadable or not of this model/optimiser ({_first_line(e)})'
        ) from e
      return upgraded, meta
    return restored['state'], meta

  def _upgraded(self, step: int, abstract_state, upgrade):
    """The step restored in its saved layout and converted by ``upgrade``, or None."""
    try:
      sharding = jax.tree.leaves(abstract_state)[0].sharding
      target = _target_like(self.manager.item_metadata(step)['state'], sharding)
      saved = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
      )['state']
      state = upgrade(saved, abstract_state)
    except Exception as e:  # unreadable in any layout: the caller reports it as damaged
      LOG.warning(
        'Checkpoint step %d: not readable in another layout either (%s)', step, _first_line(e)
      )
      return None
    if state is not None:
      LOG.warning('Checkpoint step %d was saved in another layout; converted on restore', step)
    return state

  def remove_partial_saves(self):
    """Deletes the temporary directories of saves that did not complete (orbax would on the next
    start, but a run that stopped on an error should not leave them behind)."""
    if jax.process_index() != 0 or not self.directory.exists():
      return
    for partial in self.directory.glob(f'*{_TMP_SUFFIX}*'):
      try:
        partial.rmtree()
        LOG.info('Removed the incomplete save %s', partial)
      except OSError as e:
        LOG.warning('Could not remove the incomplete save %s: %s', partial, storage.describe(e))

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def _target_like(tree_metadata, sharding):
  """A restore target with the saved shapes and dtypes on this run's sharding.

  orbax refuses a target-less restore onto another topology than the one that saved (and takes
  a target without a sharding as target-less): ``sharding`` None means this process's first
  device, so that a run trained on 8 devices exports or converts on a machine with one.
  """
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(
    lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree_metadata
  )


def save_variables(directory: str, variables: dict):
  """Writes {'params', 'batch_stats'} (e.g. converted torchvision weights) as a checkpoint."""
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(storage.path(directory), variables, force=True)
  checkpointer.wait_until_finished()


def load_variables(
  path: str,
  abstract_variables,
  sharding,
  allow_fresh: str = '',
  relayout=None,
  use_ema=False,
  saved: dict | None = None,
) -> dict:
  """{'params', 'batch_stats'} from a converted checkpoint or from another run's workdir (its
  moving average of them with ``use_ema``).

  Every tensor of ``abstract_variables`` must load, except those under the comma-separated
  ``allow_fresh`` prefixes (e.g. 'fc,layer4'; '' allows only a classifier head 'fc' whose class
  count differs, and GoogLeNet's auxiliary classifiers, ``AUXILIARY_HEADS``): those come back as
  None and keep the caller's initialisation. Everything is restored onto ``sharding`` (this run's
  mesh), whatever topology saved it. ``relayout(saved, abstract_variables)``, if given, first
  converts the saved tree to this model's layout (e.g. per-block <-> scanned blocks;
  ``relayout_like``). ``saved``: the variables already read from
  ``path``.

  Raises:
    CheckpointError: when the weights cannot be read, or tensors outside ``allow_fresh`` are
      missing or mis-shaped (listing them).
  """
  if saved is None:
    saved = read_variables(storage.path(path), sharding, use_ema)
  if relayout is not None:
    saved = relayout(saved, abstract_variables)
  flat_saved = dict(jax.tree_util.tree_flatten_with_path(saved)[0])
  prefixes = [p.strip() for p in allow_fresh.split(',') if p.strip()]
  out, fresh, refused = [], [], []
  leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_variables)
  for key, leaf in leaves:
    value = flat_saved.get(key)
    if value is not None and value.shape == leaf.shape:
      out.append(jax.device_put(value, sharding))
      continue
    name = '/'.join(str(getattr(k, 'key', k)) for k in key[1:])  # without the collection
    problem = 'missing' if value is None else f'{value.shape} vs {leaf.shape}'
    allowed = [p for p in prefixes if name == p or name.startswith(f'{p}/')]
    head = value is not None and name.startswith('fc/')  # of another class count
    if allowed or (not prefixes and (head or name.startswith(AUXILIARY_HEADS))):
      fresh.append(name)
    else:
      refused.append(f'{name} ({problem})')
    out.append(None)
  if refused:
    listing = ', '.join(refused[:6]) + (f' and {len(refused) - 6} more' if len(refused) > 6 else '')
    raise CheckpointError(
      f'init_from {path}: {len(refused)} of {len(leaves)} tensors do not fit this model: '
      f'{listing}. Is it the same architecture? To start from it anyway, name what may stay '
      f'freshly initialised: --config.init_from_skip=PREFIX[,PREFIX...].'
    )
  if fresh:
    LOG.warning('init_from %s: fresh initialisation kept for %s', path, sorted(set(fresh)))
  return jax.tree_util.tree_unflatten(treedef, out)


def relayout_like(saved: dict, like: dict) -> dict:
  """Another net's variables in ``like``'s block layout and norm collections (a trained
  BatchNorm's scale and bias into a frozen one's statistics, and back)."""
  return norms.collections_like(block_layout.relayout_like(saved, like), like)


def _read_latest_state(run_checkpoints, sharding) -> tuple[int, dict]:
  """(step, saved state) of a run's newest checkpoint, as saved. A step that a running trainer's
  retention deletes while it is read is not damage: the new newest is read instead."""
  handlers = {'state': ocp.StandardCheckpointHandler(), 'meta': ocp.JsonCheckpointHandler()}
  manager = _while_listed(
    lambda: ocp.CheckpointManager(run_checkpoints, item_handlers=handlers), run_checkpoints
  )
  try:
    for _ in range(VANISHED_RETRIES):
      step = manager.latest_step()
      if step is None:
        raise CheckpointError(f'No checkpoint in {run_checkpoints}.')
      try:
        target = _target_like(manager.item_metadata(step)['state'], sharding)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(target))
        return step, manager.restore(step, args=args)['state']
      except Exception:
        _while_listed(manager.reload, run_checkpoints)
        if step in manager.all_steps() and (run_checkpoints / str(step)).exists():
          raise  # there and unreadable: reported as such by the caller
        LOG.info('Checkpoint step %d was deleted while it was read: reading the newest.', step)
    raise CheckpointError(
      f'The checkpoints in {run_checkpoints} were deleted as fast as they were read: the run '
      f'writing them saves often and keeps few. Read them after it ends.'
    )
  finally:
    manager.close()


def read_variables(path, sharding=None, use_ema: bool = False) -> dict:
  """The {'params', 'batch_stats'} of a run's latest checkpoint or of a converted one, on
  ``sharding`` (None: the default device); with ``use_ema`` the run's moving average of them."""
  run_checkpoints = path / 'checkpoints'
  if use_ema and not run_checkpoints.is_dir():
    raise CheckpointError(
      f'init_from_ema: {path} is not a run workdir; only a run trained with ema_decay > 0 has '
      f'averaged weights.'
    )
  try:
    if run_checkpoints.is_dir():
      step, state = _read_latest_state(run_checkpoints, sharding)
      if use_ema:
        if not state.get('ema'):
          raise CheckpointError(
            f'init_from_ema: step {step} of {run_checkpoints} has no averaged weights (its run '
            f'had ema_decay 0); drop --config.init_from_ema to start from its weights.'
          )
        state = state['ema']
      return {k: state[k] for k in ('params', 'batch_stats')}
    if not path.exists():
      raise CheckpointError(
        f'init_from {path}: no such directory (give a run workdir or a resnet_jax.convert output).'
      )
    checkpointer = ocp.StandardCheckpointer()
    target = _target_like(checkpointer.metadata(path).item_metadata, sharding)
    return checkpointer.restore(path, target)
  except CheckpointError:
    raise
  except Exception as e:
    raise CheckpointError(
      f'Cannot read weights from {path} ({_first_line(e)}): give a run workdir or a '
      f'resnet_jax.convert output.'
    ) from e
