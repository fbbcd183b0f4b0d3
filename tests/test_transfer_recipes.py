"""The transfer recipes: BiT-HyperRule's schedule equal to big_transfer's rule at every step, both
recipes valid configs, and a training split of another size class refused by the command."""

import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO

from configs.recipes import bit_hyperrule, timm_finetune
from resnet_jax import config_check
from resnet_jax.train import metrics, optim


def big_transfer_lr(step: int, dataset_size: int, base_lr: float = 0.003):
  """google-research/big_transfer's bit_hyperrule.get_lr, restated: None past the last step."""
  if dataset_size < 20_000:
    supports = [100, 200, 300, 400, 500]
  elif dataset_size < 500_000:
    supports = [500, 3000, 6000, 9000, 10_000]
  else:
    supports = [500, 6000, 12_000, 18_000, 20_000]
  if step < supports[0]:
    return base_lr * step / supports[0]
  if step >= supports[-1]:
    return None
  for s in supports[1:]:
    if s < step:
      base_lr /= 10
  return base_lr


@pytest.mark.slow
@pytest.mark.parametrize('examples', [3_680, 50_000, 1_281_167])
def test_hyperrule_schedule_is_big_transfers_at_every_step(examples):
  c = bit_hyperrule.get_config(str(examples))
  config_check.check(c, num_devices=8)
  # steps_per_epoch does not matter: every length is in steps.
  schedule = optim.schedule_fn(c, steps_per_epoch=7, total_steps=c.num_train_steps)
  steps = np.arange(c.num_train_steps)
  ours = optim.peak_learning_rate(c) * np.asarray([schedule(s) for s in steps])
  theirs = np.array([big_transfer_lr(int(s), examples) for s in steps])
  np.testing.assert_allclose(ours, theirs, rtol=3e-5)  # float32's ramp; a cut is a factor 10
  assert big_transfer_lr(c.num_train_steps, examples) is None  # and it ends where theirs does
  assert c.mixup_alpha == (0.1 if examples >= 20_000 else 0.0)
  assert c.head_init_scale == 0.0 and c.weight_decay == 0.0


def test_hyperrule_resolution_and_recipes_are_valid_configs():
  small, large = bit_hyperrule.get_config('50000,small'), bit_hyperrule.get_config('50000')
  assert (small.scale_range, small.image_size) == ((160, 160), 128)
  assert (large.scale_range, large.image_size) == ((512, 512), 480)
  config_check.check(small, num_devices=8)
  for epochs in ('50', '7'):
    c = timm_finetune.get_config(epochs)
    config_check.check(c, num_devices=8)
    assert (c.optimizer, c.layer_decay, c.num_epochs) == ('adamw', 0.75, float(epochs))
  with pytest.raises(ValueError, match='N or N,small'):
    bit_hyperrule.get_config('50k')


def main_with(tmp_path, *flags):
  return subprocess.run(
    [sys.executable, '-m', 'resnet_jax.main', f'--workdir={tmp_path / "run"}', *flags],
    cwd=REPO,
    env=dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1'),
    capture_output=True,
    text=True,
    timeout=600,
  )


@pytest.mark.slow
def test_the_hyperrule_recipe_runs_through_main_on_a_dataset_given_by_flags(tmp_path):
  """64 photo crops (small images: 160 px resized, 128 crops), six steps of batch 16 with the
  rule's warm-up and cuts scaled down to them; logged rates are the schedule's."""
  done = main_with(
    tmp_path,
    '--config=configs/recipes/bit_hyperrule.py:64,small',
    '--config.dataset=photos',
    '--config.photos_num_examples=(64,32)',
    '--config.train_split=train',
    '--config.eval_split=test',
    '--config.model=cifar_resnet8',
    '--config.batch_size=16',
    '--config.num_train_steps=6',
    '--config.warmup_steps=2',
    '--config.lr_boundaries=(3,4,5)',
    '--config.eval_every=6',
    '--config.checkpoint_every=6',
    '--config.log_every=1',
    f'--config.mean_image_path={tmp_path}/mean.npy',
  )
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  records = metrics.read(str(tmp_path / 'run'))
  (last,) = [r for r in records if r['split'] == 'eval']
  assert (last['step'], last['num_examples']) == (6, 32)
  peak = 0.003 * 16 / 512
  rates = [r['learning_rate'] for r in records if r['split'] == 'train']
  # The rate each of steps 0..5 ran at: the ramp from 0, then a cut from each boundary on.
  expected = [0.0, peak / 2, peak, peak / 10, peak / 100, peak / 1000]
  np.testing.assert_allclose(rates, expected, rtol=1e-5, atol=1e-12)


def test_a_split_of_another_size_class_is_refused_in_one_line(tmp_path):
  """The photos' 2,048 training crops are a small dataset: the 50,000-example schedule (10k
  steps) is refused before anything trains, and the line says which argument fits."""
  done = subprocess.run(
    [
      sys.executable,
      '-m',
      'resnet_jax.main',
      '--config=configs/recipes/bit_hyperrule.py:50000',
      f'--workdir={tmp_path / "run"}',
      '--config.dataset=photos',
      '--config.train_split=train',
      '--config.eval_split=test',
      '--config.model=cifar_resnet8',
      '--config.batch_size=16',
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 2, done.stdout + done.stderr
  lines = [x for x in done.stderr.splitlines() if x.startswith('error:')]
  assert lines == [
    'error: The BiT-HyperRule schedule was picked for 50,000 training examples (medium: 10,000 '
    'steps) and photos has 2,048 (small): pass --config=configs/recipes/bit_hyperrule.py:2048.'
  ], done.stderr
  assert 'Traceback' not in done.stderr
  assert not (tmp_path / 'run' / 'checkpoints').exists()
