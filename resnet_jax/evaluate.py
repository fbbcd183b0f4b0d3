"""Scores a run's checkpoint (or ``init_from`` weights) with a test protocol of the paper (centre,
10-crop, multi-scale), or with the few-shot linear probe (``--fewshot``, ``train/fewshot.py``).

  python -m resnet_jax.evaluate --config=configs/r50.py --workdir=DIR --config.eval_mode=10crop
  python -m resnet_jax.evaluate --config=configs/digits.py --workdir=/tmp/digits --fewshot

Prints one JSON line and appends it to ``WORKDIR/eval_<mode>.jsonl`` (``fewshot.jsonl``). The run
may be training meanwhile: checkpoints are opened as a reader.
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
flags.DEFINE_string('workdir', None, 'Workdir of the run to evaluate.')
flags.DEFINE_integer('checkpoint_step', None, 'Step to restore; default the latest.')
flags.DEFINE_bool(
  'fewshot', False, 'The few-shot linear probe (fewshot_* fields) instead of the eval protocol.'
)
flags.mark_flags_as_required(['config', 'workdir'])


def evaluate_workdir(
  config, workdir: str, step: int | None = None, fewshot=False, given=()
) -> dict:
  """Restores a run (latest or ``step``; or ``init_from`` weights) and scores the eval split with
  ``config.eval_mode``, or with the few-shot probe. ``given``: the fields the command line set."""
  from resnet_jax.train import checkpoint
  from resnet_jax.train.experiment import Experiment

  config_check.check_here(config, given=given)
  checkpoints = storage.path(workdir) / 'checkpoints'
  if not checkpoints.is_dir() and not config.init_from:  # never create what we were asked to read
    raise checkpoint.CheckpointError(
      f'No checkpoints in {checkpoints} to evaluate: check --workdir (or pass '
      f'--config.init_from=WEIGHTS to evaluate converted weights).'
    )
  experiment = Experiment(config, workdir, reader=True)  # the run may be training now
  try:
    if experiment.checkpointer.latest_step() is None and not config.init_from:
      raise checkpoint.CheckpointError(f'No checkpoint in {checkpoints} to evaluate.')
    state = experiment.initial_state(step)  # the latest checkpoint, or ``step``
    result = experiment.fewshot(state) if fewshot else experiment.evaluate(state)
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
  result = evaluate_workdir(
    config, FLAGS.workdir, FLAGS.checkpoint_step, FLAGS.fewshot, cli.config_fields_given()
  )
  mode = 'fewshot' if FLAGS.fewshot else config.eval_mode
  line = json.dumps({'eval_mode': mode, **result})
  print(line)
  if jax.process_index() == 0:
    storage.path(FLAGS.workdir).mkdir(parents=True, exist_ok=True)
    name = 'fewshot.jsonl' if FLAGS.fewshot else f'eval_{mode}.jsonl'
    storage.AppendOnlyText(storage.path(FLAGS.workdir) / name).append(line + '\n')


if __name__ == '__main__':
  cli.run(main)
