"""Process start-up: XLA's CPU options; jax.distributed on TPU pods, SLURM, ``launch.sh local``."""

from __future__ import annotations

import importlib.util
import logging
import os

import jax

from resnet_jax.errors import UserError

# XLA:CPU gives convolutions to YNNPACK by default since jax 0.10; its own (Eigen) convolutions
# train ResNets faster on x86 (docs/performance_log.md, "XLA:CPU's convolution library"). Only
# convolutions leave YNNPACK: its reductions are kept, as BatchNorm's statistics need their
# accuracy.
CPU_XLA_FLAGS = ('--xla_cpu_experimental_ynn_fusion_type=-individual_convolution',)


def set_cpu_xla_flags():
  """Adds CPU_XLA_FLAGS to XLA_FLAGS on CPU-only installations, before the backend starts.

  A flag the user set keeps the user's value. Installations with a GPU or TPU plugin are left
  alone: a plugin built from another XLA revision aborts on a flag it does not know.
  """
  if any(importlib.util.find_spec(name) for name in ('jax_plugins', 'libtpu')):
    return
  flags = os.environ.get('XLA_FLAGS', '')
  for flag in CPU_XLA_FLAGS:
    if flag.split('=')[0] + '=' not in flags:
      flags = f'{flags} {flag}'
  os.environ['XLA_FLAGS'] = flags.strip()


def initialize(config=None):
  """Sets the CPU flags above and joins the other processes of the job, when there are any.

  ``launch.sh local`` passes the coordinator through JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES
  and JAX_PROCESS_ID; TPU pod slices and SLURM jobs are detected by ``jax.distributed`` itself.
  ``config`` (a run's) sets how long a silent process counts as alive
  (``distributed_heartbeat_seconds``: then the others fail instead of waiting) and how long the
  processes wait for each other at exit (``distributed_shutdown_seconds``).
  """
  set_cpu_xla_flags()
  env = os.environ
  timeouts = {}
  if config is not None:
    from resnet_jax import config_check

    for name in ('distributed_heartbeat_seconds', 'distributed_shutdown_seconds'):
      config_check.RULES[name](name, config[name])
    timeouts = dict(
      heartbeat_timeout_seconds=int(config.distributed_heartbeat_seconds),
      shutdown_timeout_seconds=int(config.distributed_shutdown_seconds),
    )
  if 'JAX_COORDINATOR_ADDRESS' in env:
    # CPU collectives across processes need gloo (launch.sh local); other backends ignore it.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(
      coordinator_address=env['JAX_COORDINATOR_ADDRESS'],
      num_processes=int(env['JAX_NUM_PROCESSES']),
      process_id=int(env['JAX_PROCESS_ID']),
      **timeouts,
    )
  elif int(env.get('SLURM_NTASKS', '1')) > 1 or env.get('TPU_WORKER_HOSTNAMES', '').count(','):
    jax.distributed.initialize(**timeouts)


class PeerLostError(UserError):
  """Another process of the job died: this one ends with one line instead of a long wait."""

  exit_code = 1  # the job failed; nothing the user typed was wrong


def lost_peer(error: BaseException | None) -> bool:
  """Whether ``error`` says another process of the job is gone (a collective or the
  coordination service could not reach it), rather than something wrong in this one."""
  if error is None or jax.process_count() == 1:
    return False
  text = str(error)  # JaxRuntimeError, or a ValueError from a host-side collective
  return any(mark in text for mark in PEER_FAILURE_MARKS)


# What JAX's collectives and coordination service say when a peer process died.
PEER_FAILURE_MARKS = (
  'Gloo',
  'Connection reset',
  'connection refused',
  'UNAVAILABLE',
  'DEADLINE_EXCEEDED',
  'heartbeat',
  'coordination service',
)


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
