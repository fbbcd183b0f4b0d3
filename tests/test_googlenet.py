"""GoogLeNet as torchvision builds it: parameter counts, torch's ceil-mode pools, the auxiliary
classifiers (their logits equal torch's; the train step weighs their losses 0.3), weights
converted both ways. Logits and BatchNorm statistics against torch: test_torchvision_parity."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from helpers import random_torchvision_weights

from configs import default
from resnet_jax import config_check
from resnet_jax.models import googlenet, param_groups, registry, torchvision_weights
from resnet_jax.train import losses, network, parallel, steps

REFERENCES = os.path.join(os.path.dirname(__file__), 'data', 'torchvision_references.npz')


def torch_keys() -> list:
  """torchvision's googlenet state_dict keys and shapes (100 classes), as committed."""
  return json.loads(str(np.load(REFERENCES)['googlenet/keys']))


def test_parameter_counts_are_torchvisions_with_and_without_the_auxiliary_classifiers():
  for aux, expected in ((True, 13_004_888), (False, 6_624_904)):
    model = registry.get_model('googlenet', num_classes=1000, aux_logits=aux)
    variables = jax.eval_shape(
      lambda m=model: m.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False)
    )
    assert sum(x.size for x in jax.tree.leaves(variables['params'])) == expected
  assert 'googlenet' in registry.list_models()
  with pytest.raises(ValueError, match='googlenet is not a ResNet: it has no shortcut'):
    registry.get_model('googlenet', num_classes=10, shortcut='C')
  with pytest.raises(ValueError, match='resnet50 has no aux_logits: auxiliary classifiers'):
    registry.get_model('resnet50', num_classes=10, aux_logits=False)


@pytest.mark.torch
@pytest.mark.parametrize('size', [15, 16, 17, 31, 32, 33, 224])
def test_ceil_mode_pools_are_torchs(size):
  torch = pytest.importorskip('torch')
  x = np.random.RandomState(size).randn(2, 5, size, size).astype(np.float32)
  for window, stride, padding in ((3, 2, 0), (2, 2, 0), (3, 1, 1)):
    expected = torch.nn.functional.max_pool2d(
      torch.from_numpy(x), window, stride, padding, ceil_mode=True
    ).numpy()
    ours = googlenet.max_pool_ceil(jnp.asarray(x.transpose(0, 2, 3, 1)), window, stride, padding)
    np.testing.assert_array_equal(np.asarray(ours).transpose(0, 3, 1, 2), expected)


def test_the_smallest_image_is_torchs_and_a_smaller_one_is_named():
  model = registry.get_model('googlenet', num_classes=10)
  for size in (15, 14):
    init = lambda s=size: model.init(jax.random.key(0), jnp.zeros((1, s, s, 3)), train=False)  # noqa: E731
    if size == model.min_image_size:
      jax.eval_shape(init)
    else:
      with pytest.raises(ValueError, match='GoogLeNet needs images of at least 15 pixels'):
        jax.eval_shape(init)


@pytest.mark.torch
@pytest.mark.slow  # torch's forward in float64
def test_the_auxiliary_classifiers_logits_are_torchs():
  torch = pytest.importorskip('torch')
  torch_resnet = pytest.importorskip('torch_resnet')
  net = torch_resnet.build('googlenet', 100, dropout=0.0, dropout_aux=0.0, main_only=False)
  keys = [(k, list(v.shape)) for k, v in net.state_dict().items()]
  weights = random_torchvision_weights(keys, seed=5)
  net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
  x = np.random.RandomState(2).randn(2, 3, 64, 64)
  with torch.no_grad():
    logits, aux2, aux1 = net.double().train()(torch.from_numpy(x))
  variables = torchvision_weights.from_torchvision(weights, 'googlenet')
  model = registry.get_model('googlenet', num_classes=100, dropout=0.0, dropout_aux=0.0)
  ours, updates = model.apply(
    variables,
    jnp.asarray(x.transpose(0, 2, 3, 1), jnp.float32),
    train=True,
    mutable=['batch_stats', 'intermediates'],
  )
  ours_aux1, ours_aux2 = updates['intermediates']['aux_logits']
  for mine, theirs in ((ours, logits), (ours_aux1, aux1), (ours_aux2, aux2)):
    theirs = theirs.numpy()
    assert np.abs(np.asarray(mine) - theirs).max() <= 1e-4 * np.abs(theirs).max()


def googlenet_config(**fields):
  config = default.get_config()
  config.update(model='googlenet', image_size=32, batch_size=8, pixel_ops='host', bn_group_size=0)
  config.update(dropout=0.0, learning_rate=0.1, **fields)
  config_check.check(config, num_devices=jax.device_count())
  return config


@pytest.mark.slow  # compiles GoogLeNet's train step twice
@pytest.mark.parametrize('aux_loss_weight', [0.3, 0.0])
def test_the_train_step_adds_the_auxiliary_losses_weighted(aux_loss_weight):
  """The step's loss is the main loss plus aux_loss_weight times each auxiliary classifier's
  (their dropout drawn from the step's example keys); 0 builds the net without them."""
  config = googlenet_config(aux_loss_weight=aux_loss_weight)
  data_parallel = parallel.DataParallel(parallel.make_mesh(), config.parallelism)
  step, state = network.example_train_step(config, 10, data_parallel)
  batch = network.example_batch(data_parallel, config, 10)
  params = traverse_util.flatten_dict(data_parallel.host(state.params))
  assert any(k[0] == 'aux1' for k in params) == bool(aux_loss_weight)
  host = data_parallel.host(state)
  _, metrics = step(state, batch)

  model = network.build_model(config, 10)
  images = np.asarray(batch['image'])
  stream = jax.random.fold_in(jax.random.key(config.seed), steps.MODEL_DRAWS_STREAM)
  step0 = jax.random.fold_in(stream, 0)  # as steps.example_keys: by step, then global row
  keys = jax.vmap(lambda row: jax.random.fold_in(step0, row))(jnp.arange(images.shape[0]))
  variables = {'params': host.params, 'batch_stats': host.batch_stats}
  logits, updates = model.clone(bn_axis_name=None).apply(
    variables, images, train=True, example_keys=keys, mutable=['batch_stats', 'intermediates']
  )
  targets = losses.one_hot_targets(np.asarray(batch['label']), 10, 0.0)
  expected = losses.loss(config, logits, targets).mean()
  for aux in updates.get('intermediates', {}).get('aux_logits', ()):
    expected += aux_loss_weight * losses.loss(config, aux, targets).mean()
  assert float(data_parallel.host(metrics)['loss']) == pytest.approx(float(expected), rel=1e-5)


def test_weights_convert_both_ways_one_to_one():
  weights = random_torchvision_weights(torch_keys(), seed=1)
  variables = torchvision_weights.from_torchvision(weights, 'googlenet')
  back = torchvision_weights.to_torchvision(variables)
  assert sorted(back) == sorted(weights)
  for key, value in weights.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)


@pytest.mark.slow
def test_weights_without_the_auxiliary_classifiers_load_and_train_them_from_scratch(
  tmp_path, monkeypatch
):
  """A googlenet file without aux1/aux2 (as a net saved with aux_logits=False), from a URL: its
  tensors load, the auxiliary classifiers of a net that has them start fresh."""
  from test_pretrained import Server

  import resnet_jax
  from resnet_jax import torch_files

  monkeypatch.setenv('RESNET_JAX_WEIGHTS_CACHE', str(tmp_path / 'cache'))
  monkeypatch.delenv('RESNET_JAX_WEIGHTS_MIRROR', raising=False)
  _, saved = resnet_jax.create_model('googlenet', num_classes=10, image_size=32, aux_logits=False)
  state_dict = torchvision_weights.to_torchvision(jax.device_get(saved))
  assert not any(k.startswith('aux') for k in state_dict)
  assert len(state_dict) == 57 * 6 + 2  # 57 BasicConv2d (a weight and BatchNorm's 5), fc's 2
  server = Server()
  try:
    server.files['/googlenet-small.safetensors'] = torch_files.write_safetensors(state_dict)
    url = f'{server.url}/googlenet-small.safetensors'
    module, variables = resnet_jax.create_model('googlenet', pretrained=url, image_size=32)
  finally:
    server.close()
  assert module.aux_logits and module.num_classes == 10
  loaded = traverse_util.flatten_dict(variables['params'], sep='/')
  original = traverse_util.flatten_dict(saved['params'], sep='/')
  assert {k for k in loaded if not k.startswith('aux')} == set(original)
  for key, value in original.items():
    np.testing.assert_array_equal(loaded[key], value, err_msg=key)
  assert loaded['aux1/fc2/kernel'].shape == (1024, 10)


def test_layer_decay_counts_the_stem_then_each_inception_module_then_the_heads():
  model = registry.get_model('googlenet', num_classes=10)
  shapes = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  )
  ids, count = param_groups.layer_ids(shapes['params'])
  by_module = {}
  for key, layer in ids.items():
    by_module.setdefault(key[0], set()).update(layer)
  assert count == 11
  assert by_module == {
    **{f'conv{i}': {0} for i in (1, 2, 3)},
    **{f'inception{s}': {i + 1} for i, s in enumerate(googlenet.INCEPTION)},
    **{'aux1': {10}, 'aux2': {10}, 'fc': {10}},
  }
