"""Process start-up: XLA's CPU options; jax.distributed on TPU pods, SLURM, ``launch.sh local``."""

from __future__ import annotations

import importlib.util
import logging
import os

import jax

# XLA:CPU gives convolutions to YNNPACK by default since jax 0.10; its own (Eigen) convolutions
# train ResNets faster on x86 (PERFORMANCE.md, "XLA:CPU's convolution library"). Only convolutions
# leave YNNPACK: its reductions are kept, as BatchNorm's statistics need their accuracy.
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


def initialize():
  """Sets the CPU flags above and joins the other processes of the job, when there are any.

  ``launch.sh local`` passes the coordinator through JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES
  and JAX_PROCESS_ID; TPU pod slices and SLURM jobs are detected by ``jax.distributed`` itself.
  """
  set_cpu_xla_flags()
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
