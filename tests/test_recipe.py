"""The shipped digits recipe learns: 15 epochs of CIFAR ResNet-20 on scikit-learn's digits reach
<= 3% test error (the README's first command). Its own file, so the two test workers can run it
beside the rest of test_train.py."""

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
