"""The paper's comparison nets (VGG, AlexNet): dropout keyed per example, torch's adaptive pool,
the dense (fully-convolutional) classifier, and the paper's Fig. 3 comparison through the CLI.
Parameter counts, mult-adds, logits against torch and conversion are in test_models and
test_torchvision_parity with the ResNets."""

import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO

from resnet_jax.models import baselines, example_draws, registry


def test_example_dropout_is_torchs_and_a_function_of_each_examples_key():
  x = jnp.ones((4, 20_000))
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(7), i))(jnp.arange(4))
  y = np.asarray(example_draws.dropout(x, keys, 2, 0.5))
  assert set(np.unique(y)) == {0.0, 2.0}  # kept units scaled by 1 / (1 - p)
  assert abs((y == 0).mean() - 0.5) < 0.01
  # Row 2's mask depends on its key alone: alone, or beside other rows, it is the same.
  alone = example_draws.dropout(x[2:3], keys[2:3], 2, 0.5)
  np.testing.assert_array_equal(alone[0], y[2])
  assert not np.array_equal(y[0], y[1])  # rows draw apart
  other_layer = np.asarray(example_draws.dropout(x, keys, 5, 0.5))
  assert not np.array_equal(other_layer, y)  # each dropout layer draws apart
  np.testing.assert_array_equal(example_draws.dropout(x, keys, 2, 0.0), x)


@pytest.mark.parametrize('size, out', [(2, 7), (7, 7), (13, 6), (5, 3)])
def test_adaptive_average_pool_is_torchs(size, out):
  """Against a direct loop over torch's windows: rows floor(i*H/o) .. ceil((i+1)*H/o) - 1."""
  x = np.random.default_rng(0).standard_normal((2, size, size, 3)).astype(np.float32)
  want = np.zeros((2, out, out, 3), np.float32)
  for i in range(out):
    for j in range(out):
      rows = slice(i * size // out, -(-(i + 1) * size // out))
      cols = slice(j * size // out, -(-(j + 1) * size // out))
      want[:, i, j] = x[:, rows, cols].mean(axis=(1, 2))
  pooled = baselines.adaptive_average_pool(jnp.asarray(x), out)
  np.testing.assert_allclose(pooled, want, rtol=1e-6, atol=1e-7)  # sums of values near 1


@pytest.mark.slow
@pytest.mark.parametrize('name, size', [('vgg11', 224), ('alexnet', 223)])
def test_dense_evaluation_at_the_classifiers_window_gives_the_logits(name, size):
  """VGG's dense evaluation uses the linear layers' own weights: where the feature map is just
  the classifier's window (7x7 for VGG, 6x6 for AlexNet) it is the classifier; a larger map
  scores each window (those differ from the crop's logits: its borders were padding there)."""
  model = registry.get_model(name, num_classes=5)
  x = jax.random.normal(jax.random.key(1), (1, size + 32, size + 32, 3))
  variables = jax.jit(lambda: model.init(jax.random.key(0), x[:, :size, :size], train=False))()
  apply = jax.jit(model.apply, static_argnames=('train', 'spatial_logits'))
  logits = apply(variables, x[:, :size, :size], train=False)
  dense = apply(variables, x[:, :size, :size], train=False, spatial_logits=True)
  assert dense.shape == (1, 1, 1, 5)
  np.testing.assert_allclose(dense[:, 0, 0], logits, rtol=1e-4, atol=1e-5)
  wider = apply(variables, x, train=False, spatial_logits=True)
  assert wider.shape == (1, 2, 2, 5)  # 32 more pixels: one more window each way


@pytest.mark.slow
def test_training_draws_dropout_from_the_train_steps_example_keys():
  """The classifier's masks come from the keys the train step derives from (seed, step, row):
  the same keys, the same logits; other keys, others; dropout 0, no keys needed."""
  model = registry.get_model('vgg11', num_classes=3)
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  variables = jax.jit(lambda: model.init(jax.random.key(0), x, train=False))()
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(3), i))(jnp.arange(4))
  apply = jax.jit(model.apply, static_argnames='train')
  first = apply(variables, x, train=True, example_keys=keys)
  again = apply(variables, x, train=True, example_keys=keys)
  np.testing.assert_array_equal(first, again)
  assert not np.allclose(first, apply(variables, x, train=True, example_keys=keys[::-1]))
  eval_logits = apply(variables, x, train=False)
  assert not np.allclose(first, eval_logits)
  with pytest.raises(ValueError, match='example_keys'):
    jax.eval_shape(functools.partial(model.apply, train=True), variables, x)
  no_dropout = registry.get_model('vgg11', num_classes=3, dropout=0.0)
  without = jax.jit(no_dropout.apply, static_argnames='train')(variables, x, train=True)
  np.testing.assert_allclose(without, eval_logits, rtol=1e-5, atol=1e-6)


def test_summary_gives_the_papers_figure_3_comparison():
  """Fig. 3: 'Our 34-layer baseline has 3.6 billion FLOPs (multiply-adds), which is only 18% of
  VGG-19 (19.6 billion FLOPs)'."""
  result = subprocess.run(
    [sys.executable, '-m', 'resnet_jax.summary', 'vgg19', 'plain34', 'resnet34'],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    check=True,
  )
  lines = result.stdout.splitlines()
  assert lines[0] == 'Per image at 224x224:'
  assert '143,667,240 params    19.63 G mult-adds' in lines[1]
  assert lines[2].split()[0] == 'plain34' and '3.64 G mult-adds, 18.6% of vgg19' in lines[2]
  assert lines[3].split()[0] == 'resnet34' and '3.66 G mult-adds, 18.7% of vgg19' in lines[3]
