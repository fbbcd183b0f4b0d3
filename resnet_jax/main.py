"""Trains and evaluates a ResNet.

  python -m resnet_jax.main --config=configs/r50.py --workdir=DIR [--config.FIELD=VALUE ...]

Multi-process: on TPU pods and under SLURM ``jax.distributed.initialize()`` finds its peers by
itself; ``launch.sh local N`` sets JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID.
"""

import logging
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax
from absl import flags
from ml_collections import config_flags

from resnet_jax import cli, config_check, console, distributed
from resnet_jax.errors import UserError

LOG = logging.getLogger('resnet_jax.main')  # __name__ is '__main__' under python -m

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and the config.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise UserError(f'Unexpected arguments {argv[1:]}: every option is a flag, --name=value.')
  console.setup()
  distributed.initialize(FLAGS.config)
  # Before the heavy imports (TensorFlow, orbax): a bad value is reported in a second.
  config_check.check_here(FLAGS.config, given=cli.config_fields_given())
  from resnet_jax.train import loop

  distributed.use_compilation_cache(FLAGS.config.compilation_cache_dir)
  distributed.hide_accelerators_from_tensorflow()
  LOG.info(
    'process %d/%d, %d local / %d global devices (%s)',
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    jax.default_backend(),
  )
  loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  cli.run(main)
