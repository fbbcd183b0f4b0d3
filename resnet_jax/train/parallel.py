"""Data parallelism: one per-device step, run under ``jit(shard_map)`` (default) or ``pmap``.

Per-device step functions are written once with named-axis collectives over ``AXIS``. Under
shard_map the train state is a global jax.Array replicated over a 1-D mesh of every device of
every process, and batches are global arrays sharded along it (so orbax saves and restores with no
replicate/unreplicate, on any topology). Under pmap the state carries a leading local-device axis
and batches are reshaped per local device; ``as_global`` turns it back into the global form.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = 'data'


def make_mesh() -> Mesh:
  """A 1-D mesh over all devices of all processes, process-major (process p owns a contiguous
  block, matching the rows of the global batch it reads)."""
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  return Mesh(np.array(devices), (AXIS,))


class DataParallel:
  """Wraps per-device step functions and moves state and batches onto the devices.

  Args:
    mesh: from ``make_mesh``.
    kind: 'shard_map' or 'pmap'.
  """

  def __init__(self, mesh: Mesh, kind: str = 'shard_map'):
    if kind not in ('shard_map', 'pmap'):
      raise ValueError(f"parallelism must be 'shard_map' or 'pmap', got {kind!r}.")
    self.mesh, self.kind = mesh, kind
    self.replicated = NamedSharding(mesh, PartitionSpec())
    self.sharded = NamedSharding(mesh, PartitionSpec(AXIS))
    self.num_local = jax.local_device_count()

  def wrap(self, step_fn: Callable, *, donate_state: bool = True) -> Callable:
    """step_fn(state, batch, *static) -> (state or metrics...), all outputs replicated."""
    donate = (0,) if donate_state else ()
    if self.kind == 'pmap':
      return jax.pmap(step_fn, axis_name=AXIS, donate_argnums=donate)
    sharded = jax.shard_map(
      step_fn,
      mesh=self.mesh,
      in_specs=(PartitionSpec(), PartitionSpec(AXIS)),
      out_specs=PartitionSpec(),
      check_vma=False,
    )
    return jax.jit(sharded, donate_argnums=donate)

  def put_state(self, tree):
    """A host (or global) pytree -> the form the wrapped steps take."""
    if self.kind == 'pmap':
      host = jax.device_get(tree)
      return jax.tree.map(lambda x: np.broadcast_to(x, (self.num_local, *np.shape(x))), host)
    return jax.device_put(tree, self.replicated)

  def as_global(self, tree):
    """State as global arrays replicated over the mesh (for checkpoints and evaluation)."""
    if self.kind == 'pmap':
      tree = jax.tree.map(lambda x: np.asarray(x[0]), tree)
    return jax.device_put(tree, self.replicated)

  def for_checkpoint(self, tree):
    """State as orbax writes it. Across processes, replicated over the mesh: orbax has each
    replica write a slice, so the hosts share the writing. Within one process every replica is
    in the same memory, and that slicing compiles a program per tensor shape and device (a first
    checkpoint of GoogLeNet on 4 CPU devices took 11 s, one device's copy 1.5 s)."""
    tree = self.as_global(tree)
    if jax.process_count() > 1:
      return tree
    return jax.device_put(tree, jax.local_devices()[0])

  def host(self, tree):
    """Replicated outputs (metrics, state) as numpy on this host."""
    if self.kind == 'pmap':
      tree = jax.tree.map(lambda x: x[0], tree)
    return jax.device_get(tree)

  def put_batch(self, batch: dict[str, np.ndarray]):
    """This process's rows of a global batch -> what the wrapped steps take."""
    if self.kind == 'pmap':
      return {k: v.reshape(self.num_local, -1, *v.shape[1:]) for k, v in batch.items()}
    return {k: jax.make_array_from_process_local_data(self.sharded, v) for k, v in batch.items()}

  def batches(self, local_batches: Iterable[dict[str, np.ndarray]]) -> Iterator:
    """Device batches, transferred one ahead of the consumer (device_put is asynchronous)."""
    pending = None
    for batch in local_batches:
      ready, pending = pending, self.put_batch(batch)
      if ready is not None:
        yield ready
    if pending is not None:
      yield pending


def check_batch(global_batch: int, num_devices: int, process_count: int):
  """Raises a clear error when the global batch cannot be split evenly."""
  if global_batch % num_devices or global_batch % process_count:
    raise ValueError(
      f'batch_size={global_batch} is not divisible by the {num_devices} devices '
      f'({process_count} processes); choose a multiple of {num_devices}.'
    )
