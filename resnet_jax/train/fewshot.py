"""The few-shot linear probe of a net's representation, as big_vision's ``fewshot_lsr`` evaluator:
the pre-logit features (``ResNet(features=('pre_logits',))``) of a training and a test split, then
for each seed and shot count ``k``, ``k`` training examples per class drawn at random, a
closed-form ridge regression onto ±1 one-hot targets on features standardised by those examples
(a constant feature of 100 as an almost unregularised bias), and its top-1 accuracy on the whole
test split. The command is ``resnet_jax.evaluate --fewshot``.
"""

from __future__ import annotations

import time

import numpy as np
from jax import lax

from resnet_jax.data import input_pipeline, sources
from resnet_jax.data.source import numpy_batches
from resnet_jax.train.parallel import AXIS

BIAS_CONSTANT = 100.0  # big_vision's: large, so the bias is almost unregularised


def feature_step(state, batch, *, model):
  """This device's rows' pre-logit features, labels and masks, gathered over all devices in the
  global batch's row order."""
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  x = model.apply(variables, batch['image'], train=False, features=('pre_logits',))['pre_logits']
  rows = {'x': x, 'label': batch['label'], 'mask': batch['mask']}
  return lax.all_gather(rows, AXIS, tiled=True)


def split_features(data_parallel, state, feature_fn, config, source, mean=None):
  """(features [n, d] float32, labels [n]) of every example of ``source``, in its order, from
  the centre view of the evaluation transform."""
  view = config.copy_and_resolve_references()
  view.eval_mode = 'center'
  layout = input_pipeline.Layout.current(config.eval_batch_size or config.batch_size)
  ds, _ = input_pipeline.eval_dataset(view, source, layout, mean)
  features, labels = [], []
  for batch in data_parallel.batches(numpy_batches(ds, source)):
    rows = data_parallel.host(feature_fn(state, batch))
    keep = np.asarray(rows['mask']).astype(bool)
    features.append(np.asarray(rows['x'])[keep])
    labels.append(np.asarray(rows['label'])[keep])
  return np.concatenate(features), np.concatenate(labels)


def ridge_scores(x, y, x_test, num_classes: int, l2_reg: float) -> np.ndarray:
  """The class scores of x_test under the ridge regression fitted to (x, y), by the
  eigendecomposition of the smaller Gram matrix (x^T x, or x x^T when features outnumber
  examples), in float64."""
  x, x_test = np.asarray(x, np.float64), np.asarray(x_test, np.float64)
  mean = x.mean(axis=0, keepdims=True)
  std = x.std(axis=0, keepdims=True) + 1e-5

  def standardise(v):
    return np.pad((v - mean) / std, ((0, 0), (0, 1)), constant_values=BIAS_CONSTANT)

  x, x_test = standardise(x), standardise(x_test)
  targets = 2.0 * np.eye(num_classes)[y] - 1.0
  if x.shape[0] >= x.shape[1]:
    eigs, q = np.linalg.eigh(x.T @ x)
    lhs, rhs = q, q.T @ (x.T @ targets)
  else:
    eigs, q = np.linalg.eigh(x @ x.T)
    lhs, rhs = x.T @ q, q.T @ targets
  return x_test @ ((lhs / (eigs + l2_reg)[None, :]) @ rhs)


def ridge_accuracy(x, y, x_test, y_test, num_classes: int, l2_reg: float) -> float:
  scores = ridge_scores(x, y, x_test, num_classes, l2_reg)
  return float(np.mean(np.argmax(scores, axis=1) == y_test))


def probe(config, train, test, num_classes: int) -> dict[str, float]:
  """``fewshot_shots`` x ``fewshot_seeds`` probes: ``{'fewshot_{k}shot_seed{s}': accuracy}``
  and the mean over seeds, ``fewshot_{k}shot``. Seed s draws each class's examples by numpy's
  ``default_rng(s)`` permutation of that class's indices, as big_vision does."""
  (x, y), (x_test, y_test) = train, test
  short = [c for c in range(num_classes) if np.sum(y == c) < max(config.fewshot_shots)]
  if short:
    raise ValueError(
      f'fewshot_shots={tuple(config.fewshot_shots)}: class(es) {short[:8]} of the few-shot '
      f'training split have fewer examples than {max(config.fewshot_shots)}.'
    )
  results = {}
  for seed in range(config.fewshot_seeds):
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(np.flatnonzero(y == c)) for c in range(num_classes)]
    for shots in config.fewshot_shots:
      chosen = np.concatenate([indices[:shots] for indices in by_class])
      accuracy = ridge_accuracy(
        x[chosen], y[chosen], x_test, y_test, num_classes, config.fewshot_l2_reg
      )
      results[f'fewshot_{shots}shot_seed{seed}'] = accuracy
  for shots in config.fewshot_shots:
    per_seed = [results[f'fewshot_{shots}shot_seed{s}'] for s in range(config.fewshot_seeds)]
    results[f'fewshot_{shots}shot'] = float(np.mean(per_seed))
  return results


def run(experiment, state) -> dict[str, float]:
  """The probe of ``state``'s net on the config's few-shot splits (default: the run's training
  and evaluation splits), with its time."""
  config = experiment.config
  start = time.time()
  splits = []
  for split, default in (
    (config.fewshot_train_split, experiment.train_source),
    (config.fewshot_test_split, experiment.eval_source),
  ):
    source = sources.get_source(config, split) if split else default
    splits.append(
      split_features(
        experiment.data_parallel,
        state,
        experiment.feature_fn,
        config,
        source,
        experiment.pixel_mean(),
      )
    )
  result = probe(config, splits[0], splits[1], experiment.num_classes)
  result['fewshot_time_s'] = time.time() - start
  return result
