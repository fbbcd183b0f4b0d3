"""The few-shot linear probe (train/fewshot.py, `python -m resnet_jax.evaluate --fewshot`): its
ridge regression equals the textbook solve in numpy, its draws are big_vision's, and through the
command and training it scores a run's representation."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO, run_main, tiny, tiny_flags

from resnet_jax.train import fewshot, metrics


def reference_scores(x, y, x_test, num_classes, l2):
  """(X^T X + l2 I)^-1 X^T Y on features standardised by the training examples, a constant 100
  appended as the bias feature, targets 2 * one_hot - 1 (big_vision's fewshot_lsr)."""
  mean, std = x.mean(0), x.std(0) + 1e-5
  design = np.hstack([(x - mean) / std, np.full((len(x), 1), 100.0)])
  test = np.hstack([(x_test - mean) / std, np.full((len(x_test), 1), 100.0)])
  targets = 2.0 * np.eye(num_classes)[y] - 1.0
  gram = design.T @ design + l2 * np.eye(design.shape[1])
  return test @ np.linalg.solve(gram, design.T @ targets)


@pytest.mark.parametrize('examples, dim', [(200, 16), (12, 64)])  # x^T x, and x x^T
def test_ridge_regression_is_the_direct_solve(examples, dim):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(examples, dim)) * rng.uniform(0.1, 10, dim)
  y = np.arange(examples) % 4
  x_test = rng.normal(size=(50, dim))
  for l2 in (1.0, 1024.0):
    np.testing.assert_allclose(
      fewshot.ridge_scores(x, y, x_test, 4, l2),
      reference_scores(x, y, x_test, 4, l2),
      rtol=1e-7,
      atol=1e-9,
    )


def test_probe_draws_each_class_as_big_vision_does(tmp_path):
  """Seed s: each class's indices permuted by default_rng(s), its first k taken; the accuracy is
  the reference regression's on the whole test split, averaged over seeds."""
  rng = np.random.default_rng(1)
  centres = rng.normal(size=(5, 8)) * 3
  y = rng.permutation(np.arange(100) % 5)
  x = centres[y] + rng.normal(size=(100, 8))
  y_test = np.arange(40) % 5
  x_test = centres[y_test] + rng.normal(size=(40, 8))
  config = tiny(tmp_path, fewshot_shots=(1, 3), fewshot_seeds=2, fewshot_l2_reg=4.0)
  results = fewshot.probe(config, (x, y), (x_test, y_test), 5)
  for shots in (1, 3):
    per_seed = []
    for seed in range(2):
      draw = np.random.default_rng(seed)
      chosen = np.concatenate([draw.permutation(np.flatnonzero(y == c))[:shots] for c in range(5)])
      scores = reference_scores(x[chosen], y[chosen], x_test, 5, 4.0)
      accuracy = np.mean(scores.argmax(1) == y_test)
      assert results[f'fewshot_{shots}shot_seed{seed}'] == pytest.approx(accuracy, abs=1e-12)
      per_seed.append(accuracy)
    assert results[f'fewshot_{shots}shot'] == pytest.approx(np.mean(per_seed))
  assert results['fewshot_3shot'] > 0.5  # separable clusters: the probe works
  too_many = tiny(tmp_path, fewshot_shots=(21,))
  with pytest.raises(ValueError, match=r'class\(es\) \[0, 1, 2, 3, 4\]'):
    fewshot.probe(too_many, (x, y), (x_test, y_test), 5)


@pytest.mark.slow  # trains, then probes twice through the command
def test_the_command_probes_a_run_and_training_logs_the_probe(tmp_path):
  work = tmp_path / 'run'
  flags = tiny_flags(
    tmp_path,
    num_train_steps=24,
    eval_every=12,
    checkpoint_every=12,
    keep_checkpoints=2,
    fewshot_in_evaluations=True,
    fewshot_shots='(1,5)',
    fewshot_seeds=2,
  )
  result = run_main(work, *flags)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'few-shot probe: 1shot ' in result.stdout
  evals = [r for r in metrics.read(str(work)) if r['split'] == 'eval']
  assert [e['step'] for e in evals] == [12, 24]
  env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS='--xla_force_host_platform_device_count=8')
  lines = []
  for step in (12, 24):
    probe = subprocess.run(
      [
        sys.executable,
        '-m',
        'resnet_jax.evaluate',
        '--fewshot',
        '--config=configs/digits.py',
        f'--workdir={work}',
        f'--checkpoint_step={step}',
        *flags,
      ],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    lines.append(json.loads(probe.stdout.strip().splitlines()[-1]))
  for line, logged in zip(lines, evals, strict=True):
    # The command on a checkpoint gives what training logged at that step.
    assert line['step'] == logged['step']
    for key in ('fewshot_1shot_seed0', 'fewshot_5shot_seed1', 'fewshot_5shot'):
      assert line[key] == logged[key], key
  assert lines[-1]['fewshot_5shot'] > 0.3  # 10 classes: chance is 0.1
  with open(work / 'fewshot.jsonl') as f:
    assert [json.loads(x)['step'] for x in f] == [12, 24]


@pytest.mark.parametrize('name', ['cifar_resnet8', 'cifar_preact_resnet20'])
def test_pre_logits_are_what_the_classifier_sees(name):
  """The probe's features: the pooled output (after a pre-activation net's final norm) whose
  image under the head is the logits."""
  import jax
  import jax.numpy as jnp

  from resnet_jax.models import registry

  model = registry.get_model(name, num_classes=10)
  images = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
  variables = model.init(jax.random.key(1), images, train=False)
  features = model.apply(variables, images, train=False, features=('pre_logits',))['pre_logits']
  assert features.shape == (3, 64) and features.dtype == jnp.float32
  head = variables['params']['fc']
  np.testing.assert_allclose(
    features @ head['kernel'] + head['bias'],
    model.apply(variables, images, train=False),
    rtol=1e-5,
    atol=1e-5,
  )
