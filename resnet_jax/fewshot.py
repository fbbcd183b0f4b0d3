"""The few-shot linear probe (big_vision's fewshot_lsr) of a run's checkpoint or of weights.

  python -m resnet_jax.fewshot --config=configs/digits.py --workdir=/tmp/digits
  python -m resnet_jax.fewshot --config=configs/r50.py --workdir=DIR \
    --config.init_from=torchvision:resnet50.IMAGENET1K_V2 --config.normalization=channel_mean_std

Ridge regression on the pre-logit features of ``fewshot_shots`` examples per class of the
training split (``fewshot_train_split``), ``fewshot_seeds`` draws each, scored on the evaluation
split (``fewshot_test_split``); ``train/fewshot.py``. Prints one JSON line (accuracies per shot
count and seed, and their means over seeds) and appends it to ``WORKDIR/fewshot.jsonl``.
"""

import json
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax
from absl import flags
from ml_collections import config_flags

from resnet_jax import cli, config_check, console, distributed, storage

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file of the run.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Workdir of the run (or, with init_from, for the result).')
flags.DEFINE_integer('checkpoint_step', None, 'Step to restore; default the latest.')
flags.mark_flags_as_required(['config', 'workdir'])


def fewshot_workdir(config, workdir: str, step: int | None = None) -> dict:
  """Restores a run (latest or ``step``; or ``init_from`` weights) and probes it."""
  from resnet_jax.train import checkpoint
  from resnet_jax.train.experiment import Experiment

  config_check.check(config, num_devices=jax.device_count(), num_processes=jax.process_count())
  checkpoints = storage.path(workdir) / 'checkpoints'
  if not checkpoints.is_dir() and not config.init_from:
    raise checkpoint.CheckpointError(
      f'No checkpoints in {checkpoints} to probe: check --workdir (or pass '
      f'--config.init_from=WEIGHTS to probe converted or released weights).'
    )
  experiment = Experiment(config, workdir, reader=True)
  try:
    state = experiment.initial_state(step)
    result = experiment.fewshot(state)
  finally:
    experiment.checkpointer.close()
  return {'step': int(experiment.data_parallel.host(state.step)), **result}


def main(argv):
  del argv
  console.setup()
  distributed.initialize(FLAGS.config)
  distributed.hide_accelerators_from_tensorflow()
  config = FLAGS.config
  distributed.use_compilation_cache(config.compilation_cache_dir)
  result = fewshot_workdir(config, FLAGS.workdir, FLAGS.checkpoint_step)
  line = json.dumps(result)
  print(line)
  if jax.process_index() == 0:
    storage.path(FLAGS.workdir).mkdir(parents=True, exist_ok=True)
    records = storage.path(FLAGS.workdir) / 'fewshot.jsonl'
    storage.AppendOnlyText(records).append(line + '\n')


if __name__ == '__main__':
  cli.run(main)
