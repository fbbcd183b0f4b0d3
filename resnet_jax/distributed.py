"""Multi-process start-up: jax.distributed on TPU pods, SLURM, or ``launch.sh local``."""

from __future__ import annotations

import logging
import os

import jax


def initialize():
  """Joins the other processes of the job, when there are any.

  ``launch.sh local`` passes the coordinator through JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES
  and JAX_PROCESS_ID; TPU pod slices and SLURM jobs are detected by ``jax.distributed`` itself.
  """
  env = os.environ
  if 'JAX_COORDINATOR_ADDRESS' in env:
    # CPU collectives across processes need gloo (launch.sh local); other backends ignore it.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(
      coordinator_address=env['JAX_COORDINATOR_ADDRESS'],
      num_processes=int(env['JAX_NUM_PROCESSES']),
      process_id=int(env['JAX_PROCESS_ID']),
      heartbeat_timeout_seconds=int(env.get('JAX_HEARTBEAT_TIMEOUT_SECONDS', '60')),
    )
  elif int(env.get('SLURM_NTASKS', '1')) > 1 or env.get('TPU_WORKER_HOSTNAMES', '').count(','):
    jax.distributed.initialize()


def use_compilation_cache(directory: str):
  """Keeps compiled steps in ``directory`` (''= off) so that a restarted run skips compiling.

  Every executable taking a second or more to compile is stored (JAX's default threshold).
  """
  if directory:
    jax.config.update('jax_compilation_cache_dir', directory)


def hide_accelerators_from_tensorflow():
  """tf.data must not take GPU/TPU memory that JAX needs."""
  import tensorflow as tf

  for kind in ('GPU', 'TPU'):
    try:
      tf.config.set_visible_devices([], kind)
    except (RuntimeError, ValueError) as e:
      logging.debug('tf.config.set_visible_devices(%s): %s', kind, e)
