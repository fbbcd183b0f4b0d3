"""Orbax checkpoints: periodic async saves, keep latest N + best by eval error, auto-resume.

Layout: ``workdir/checkpoints/<step>/{state,meta}``. Orbax writes each step into a temporary
directory and renames it when complete, so a process killed mid-save (even by SIGKILL) leaves the
previous checkpoint as the latest restorable one. States are saved as global arrays and restored
onto whatever mesh the restoring run has (8 devices -> 4 devices, 2 hosts -> 1 host).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


class CheckpointError(RuntimeError):
  """A checkpoint could not be restored; the message names the directory and the mismatch."""


def _abstract(tree, sharding):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


class Checkpointer:
  """Saves and restores a run's TrainState plus JSON metadata.

  Args:
    directory: ``workdir/checkpoints``.
    keep: latest checkpoints kept.
    keep_best: additionally kept, lowest ``top1_err`` of the evaluation passed to ``save``.
    async_save: write in a background thread while training continues.
  """

  def __init__(self, directory: str, *, keep: int = 3, keep_best: int = 1, async_save=True):
    self.directory = os.path.abspath(directory)
    preservation = [policies.preservation_policy.LatestN(n=keep)]
    if keep_best > 0:
      preservation.append(
        policies.preservation_policy.BestN(
          get_metric_fn=lambda m: m['top1_err'],
          reverse=True,  # descending, keep the tail: the lowest errors
          n=keep_best,
          keep_checkpoints_without_metrics=False,
        )
      )
    options = ocp.CheckpointManagerOptions(
      enable_async_checkpointing=async_save,
      preservation_policy=policies.preservation_policy.AnyPreservationPolicy(preservation),
      cleanup_tmp_directories=True,
    )
    self.manager = ocp.CheckpointManager(
      self.directory, options=options, item_names=('state', 'meta')
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, meta: dict[str, Any], metrics: dict | None = None):
    self.manager.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
      metrics=metrics,
      force=True,
    )

  def restore(self, abstract_state, expected_meta: dict[str, Any], step: int | None = None):
    """Restores ``step`` (default: latest) onto the shardings of ``abstract_state``.

    Returns:
      (state, meta), or None when there is no checkpoint.

    Raises:
      CheckpointError: when the checkpoint is unreadable or made for another model/dataset.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    path = os.path.join(self.directory, str(step))
    try:
      meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
      meta = meta['meta']
    except Exception as e:
      raise CheckpointError(f'Checkpoint {path} is unreadable (meta): {e}') from e
    mismatched = {k: (meta.get(k), v) for k, v in expected_meta.items() if meta.get(k) != v}
    if mismatched:
      details = ', '.join(f'{k}: saved {a!r}, this run {b!r}' for k, (a, b) in mismatched.items())
      raise CheckpointError(
        f'Checkpoint {path} was made by an incompatible run ({details}). Use a new workdir, or '
        f'--config.init_from={os.path.dirname(self.directory)} to start from its weights.'
      )
    try:
      restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
      )
    except Exception as e:
      raise CheckpointError(
        f'Checkpoint {path} is corrupt or does not match this model/optimiser: {e}'
      ) from e
    return restored['state'], meta

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def save_variables(directory: str, variables: dict):
  """Writes {'params', 'batch_stats'} (e.g. converted torchvision weights) as a checkpoint."""
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.abspath(directory), variables, force=True)
  checkpointer.wait_until_finished()


def load_variables(path: str, abstract_variables, sharding) -> dict:
  """{'params', 'batch_stats'} from a converted checkpoint or from another run's workdir.

  Leaves whose shape differs from ``abstract_variables`` (a new classifier head) are kept from
  ``abstract_variables``'s initialisation by the caller: they come back as None here.
  """
  path = os.path.abspath(path)
  run_checkpoints = os.path.join(path, 'checkpoints')
  try:
    if os.path.isdir(run_checkpoints):
      manager = ocp.CheckpointManager(run_checkpoints, item_names=('state', 'meta'))
      step = manager.latest_step()
      if step is None:
        raise CheckpointError(f'No checkpoint in {run_checkpoints}.')
      state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
      saved = {k: state['state'][k] for k in ('params', 'batch_stats')}
    else:
      saved = ocp.StandardCheckpointer().restore(path)
  except CheckpointError:
    raise
  except Exception as e:
    raise CheckpointError(f'Cannot read weights from {path}: {e}') from e

  flat_saved = dict(jax.tree_util.tree_flatten_with_path(saved)[0])
  out, skipped = [], []
  leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_variables)
  for key, leaf in leaves:
    value = flat_saved.get(key)
    if value is None or value.shape != leaf.shape:
      skipped.append(jax.tree_util.keystr(key))
      out.append(None)
    else:
      out.append(jax.device_put(value, sharding))
  if len(skipped) == len(leaves):
    raise CheckpointError(f'No weights in {path} fit this model (is it the same architecture?).')
  if skipped:
    logging.warning('init_from %s: kept fresh initialisation for %s', path, skipped)
  return jax.tree_util.tree_unflatten(treedef, out)
