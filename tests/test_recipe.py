"""The shipped digits recipe learns: 15 epochs of CIFAR ResNet-20 on scikit-learn's digits reach
<= 3% test error (the README's first command); the family's nets learn through the same command.
Its own file, so the two test workers can run it beside the rest of test_train.py."""

import pytest
from helpers import run_main

from resnet_jax.train import metrics


@pytest.mark.slow
def test_digits_recipe_reaches_97_percent(tmp_path):
  workdir = str(tmp_path / 'digits')
  # One device, as on a user's CPU (8 simulated devices split the same work eight ways).
  result = run_main(workdir, f'--config.mean_image_path={tmp_path}/mean.npy', devices=1)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  evals = [r for r in metrics.read(workdir) if r['split'] == 'eval']
  assert evals[-1]['num_examples'] == 360
  assert evals[-1]['top1_err'] <= 0.03


@pytest.mark.slow
def test_a_dilated_resnext_learns_digits_through_the_command_line(tmp_path):
  """ResNeXt-50 32x4d, last two stages dilated (output stride 8: 2x2 maps at 16 px), 4 epochs on
  one device: its grouped convolutions train (20% test error on this machine; chance is 90%)."""
  workdir = str(tmp_path / 'resnext')
  result = run_main(
    workdir,
    '--config.model=resnext50_32x4d',
    '--config.replace_stride_with_dilation=(False,True,True)',
    '--config.num_epochs=4',
    '--config.learning_rate=0.02',
    f'--config.mean_image_path={tmp_path}/mean.npy',
    devices=1,
  )
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert 'resnext50_32x4d on digits: 88 steps' in result.stdout + result.stderr
  evals = [r for r in metrics.read(workdir) if r['split'] == 'eval']
  assert evals[-1]['num_examples'] == 360 and evals[-1]['step'] == 88
  assert evals[-1]['top1_err'] <= 0.35
