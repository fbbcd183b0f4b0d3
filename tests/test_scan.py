"""``scan_blocks``: the same network as the per-block one, for the same weights.

Each stage's blocks 1..n-1 run as one ``nn.scan`` step with stacked variables; these tests give
both layouts the same weights (``stack_blocks``) and compare logits, BN statistic updates,
gradients and an optimiser step, then the layout conversions themselves.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from helpers import final_params, tiny

from configs import default
from resnet_jax import evaluate
from resnet_jax.models import block_layout, conv, registry
from resnet_jax.train import loop, optim

# Scan changes how XLA fuses across blocks, so float32 results agree to rounding, not bitwise.
TOLERANCE = dict(rtol=2e-5, atol=2e-6)


def _pair(name, **overrides):
  per_block = registry.get_model(name, num_classes=10, **overrides)
  scanned = registry.get_model(name, num_classes=10, scan_blocks=True, **overrides)
  images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  variables = per_block.init(jax.random.key(0), images, train=False)
  rng = np.random.default_rng(0)  # running statistics away from (0, 1), so eval tests them
  variables['batch_stats'] = jax.tree.map(
    lambda x: x + rng.uniform(0.1, 0.5, x.shape).astype(np.float32), variables['batch_stats']
  )
  return per_block, scanned, variables, images


def _close(a, b):
  for key, value in traverse_util.flatten_dict(a, sep='/').items():
    np.testing.assert_allclose(
      value, traverse_util.flatten_dict(b, sep='/')[key], err_msg=key, **TOLERANCE
    )


@pytest.mark.parametrize(
  'name',
  [
    'cifar_resnet20',
    pytest.param('resnet50', marks=pytest.mark.slow),
    pytest.param('plain18', marks=pytest.mark.slow),
  ],
)
def test_scanned_network_equals_the_per_block_one(name):
  per_block, scanned, variables, images = _pair(name)
  stacked = block_layout.stack_blocks(variables)
  assert 'layer1_scan' in stacked['params'] and 'layer1_1' not in stacked['params']
  expected = per_block.apply(variables, images, train=False)
  np.testing.assert_allclose(scanned.apply(stacked, images, train=False), expected, **TOLERANCE)

  logits, updates = per_block.apply(variables, images, train=True, mutable=['batch_stats'])
  scan_logits, scan_updates = scanned.apply(stacked, images, train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(scan_logits, logits, **TOLERANCE)
  _close(scan_updates, block_layout.stack_blocks(updates))


@pytest.mark.slow
def test_gradients_and_an_sgd_step_are_those_of_the_per_block_network():
  per_block, scanned, variables, images = _pair('cifar_resnet14')
  labels = jnp.arange(4) % 10

  def loss(model, params, stats):
    logits, _ = model.apply(
      {'params': params, 'batch_stats': stats}, images, train=True, mutable=['batch_stats']
    )
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels])

  grads = jax.grad(loss, 1)(per_block, variables['params'], variables['batch_stats'])
  stacked = block_layout.stack_blocks(variables)
  scan_grads = jax.grad(loss, 1)(scanned, stacked['params'], stacked['batch_stats'])
  _close(scan_grads, block_layout.stack_blocks(grads))

  config = default.get_config()
  tx = optim.create_optimizer(config, lambda step: 1.0)
  updates, _ = tx.update(grads, tx.init(variables['params']), variables['params'])
  scan_updates, _ = tx.update(scan_grads, tx.init(stacked['params']), stacked['params'])
  _close(scan_updates, block_layout.stack_blocks(updates))


@pytest.mark.parametrize(
  'kernel, strides, dtype',
  [(3, 1, 'float32'), (1, 1, 'float32'), (3, 1, 'bfloat16'), (3, 2, 'float32')],
)
def test_scan_convolution_equals_lax_values_and_gradients(kernel, strides, dtype):
  """conv.conv_general_dilated (canonical gradient convolutions) against lax's own VJP."""
  x = jax.random.normal(jax.random.key(0), (4, 9, 9, 8), dtype)
  w = jax.random.normal(jax.random.key(1), (kernel, kernel, 8, 16), dtype)
  pad = [(kernel // 2, kernel // 2)] * 2
  numbers = jax.lax.conv_dimension_numbers(x.shape, w.shape, conv.NHWC)

  def loss(fn, x, w):
    y = fn(x, w, (strides, strides), pad, dimension_numbers=numbers)
    return jnp.sum(y.astype(jnp.float32) ** 2), y

  (_, y), grads = jax.value_and_grad(lambda *a: loss(conv.conv_general_dilated, *a), (0, 1), True)(
    x, w
  )
  (_, y_ref), grads_ref = jax.value_and_grad(
    lambda *a: loss(jax.lax.conv_general_dilated, *a), (0, 1), True
  )(x, w)
  tol = dict(rtol=2e-2, atol=2e-2) if dtype == 'bfloat16' else dict(rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.float32(y), np.float32(y_ref), **tol)
  for ours, ref in zip(grads, grads_ref, strict=True):
    assert ours.dtype == ref.dtype
    np.testing.assert_allclose(np.float32(ours), np.float32(ref), **tol)


def test_layout_conversions_round_trip():
  _, _, variables, _ = _pair('resnet18')
  stacked = block_layout.stack_blocks(variables)
  back = block_layout.unstack_blocks(stacked)
  assert jax.tree.structure(back) == jax.tree.structure(variables)
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, back, variables)))
  assert stacked['params']['layer4_scan']['conv2']['kernel'].shape == (1, 3, 3, 512, 512)
  assert block_layout.relayout_like(variables, stacked)['params'].keys() == stacked['params'].keys()
  assert (
    block_layout.relayout_like(stacked, variables)['params'].keys() == variables['params'].keys()
  )
  assert block_layout.relayout_like(variables, variables) is variables


def test_parameter_counts_are_those_of_the_per_block_networks():
  def count(name, classes, scan_blocks):
    model = registry.get_model(name, num_classes=classes, scan_blocks=scan_blocks)
    shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    )
    return sum(x.size for x in jax.tree.leaves(shapes['params'])), shapes['params']

  scanned, params = count('resnet152', 1000, True)
  assert scanned == 60_192_808  # torchvision's ResNet-152
  assert params['layer3_scan']['conv1']['kernel'].shape == (35, 1, 1, 1024, 256)  # 36 blocks
  assert count('cifar_resnet110', 10, True)[0] == count('cifar_resnet110', 10, False)[0]


@pytest.mark.slow
def test_a_run_resumes_across_layouts(tmp_path):
  """6 steps per block, then 6 more with scan_blocks: as 12 per block; and the scanned run's
  checkpoint evaluates per block, as in the run's own final evaluation."""
  common = dict(model='cifar_resnet14', num_train_steps=6, eval_every=6, checkpoint_every=6)
  straight = tiny(tmp_path, **{**common, 'num_train_steps': 12})
  loop.train_and_evaluate(straight, str(tmp_path / 'straight'))
  switched = str(tmp_path / 'switched')
  loop.train_and_evaluate(tiny(tmp_path, **common), switched)
  scanned = tiny(tmp_path, **{**common, 'num_train_steps': 12, 'scan_blocks': True})
  last_eval = loop.train_and_evaluate(scanned, switched)

  expected, _ = final_params(str(tmp_path / 'straight'), straight)
  got, step = final_params(switched, scanned)
  assert step == 12 and any(name.startswith('layer1_scan/') for name in got)
  got = traverse_util.flatten_dict(block_layout.unstack_blocks(_nested(got)), sep='/')
  assert got.keys() == expected.keys()
  for name, value in expected.items():
    np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-5, err_msg=name)

  per_block = tiny(tmp_path, **{**common, 'num_train_steps': 12})
  result = evaluate.evaluate_workdir(per_block, switched)
  assert result['step'] == 12 and result['num_examples'] == last_eval['num_examples']
  assert result['top1_err'] == pytest.approx(last_eval['top1_err'], abs=1e-9)
  assert result['loss'] == pytest.approx(last_eval['loss'], rel=1e-5)


def _nested(flat: dict) -> dict:
  return traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in flat.items()})
