"""Fine-tuning controls (models/param_groups.py, train/optim.py): layer-wise decay equal to timm's,
AdamW with per-tensor learning rates and frozen tensors equal to torch's AdamW, frozen tensors
and their BatchNorm statistics bitwise unchanged through `main`, the head's initial scale."""

import collections
import itertools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from helpers import final_params, run_main, tiny, tiny_flags

from resnet_jax import storage
from resnet_jax.models import block_layout, param_groups, registry, torchvision_weights
from resnet_jax.train import checkpoint, experiment, optim

# timm's ResNet.group_matcher(coarse=False) and its VGG's (timm/models/resnet.py, vgg.py).
TIMM_RESNET_MATCHER = {'stem': r'^conv1|bn1|maxpool', 'blocks': r'^layer(\d+)\.(\d+)'}
TIMM_VGG_MATCHER = {'stem': r'^features\.0', 'blocks': r'^features\.(\d+)'}


def timm_layer_scales(names: list[str], matcher: dict, decay: float) -> dict[str, float]:
  """timm's param_groups_layer_decay (timm/optim/_param_groups.py) over torch parameter names:
  group_with_matcher's ordinals (group index, then the regex's numbers; unmatched names last),
  renumbered in sorted order, and decay ** (layer_max - layer_id)."""
  compiled = [(re.compile(spec), (ordinal,)) for ordinal, spec in enumerate(matcher.values())]

  def grouping(name):
    for pattern, prefix in compiled:
      match = pattern.match(name)
      if match:
        return tuple(map(float, itertools.chain(prefix, match.groups())))
    return (float('inf'),)

  groups = collections.defaultdict(list)
  for name in names:
    groups[grouping(name)].append(name)
  layer_of = {}
  for layer_id, key in enumerate(sorted(groups)):
    for name in groups[key]:
      layer_of[name] = layer_id
  layer_max = max(layer_of.values())
  return {name: decay ** (layer_max - layer_of[name]) for name in names}


def flax_name(torch_name: str, ndim: int) -> str:
  """torch's 'layer1.0.downsample.1.weight' -> our 'layer1_0/downsample_1/scale'."""
  collection, *path = torchvision_weights.flax_key(torch_name)
  assert collection == 'params', torch_name
  if path[-1] == 'scale' and ndim > 1:
    path[-1] = 'kernel'
  return '/'.join(path)


def shapes(name: str, size: int = 32, **overrides) -> dict:
  model = registry.get_model(name, num_classes=10, **overrides)
  image = jnp.zeros((1, size, size, 3))
  return jax.eval_shape(lambda: model.init(jax.random.key(0), image, train=False))['params']


@pytest.mark.parametrize(
  'name, matcher',
  [
    ('resnet18', TIMM_RESNET_MATCHER),
    # the deep stem conv1.0..conv1.6, avg-pool shortcuts
    pytest.param('resnet50d', TIMM_RESNET_MATCHER, marks=pytest.mark.slow),
    ('cifar_preact_resnet20', TIMM_RESNET_MATCHER),  # its final norm goes with the head
    pytest.param('vgg11_bn', TIMM_VGG_MATCHER, marks=pytest.mark.slow),
  ],
)
def test_layer_decay_scales_are_timms(name, matcher):
  # The torch net's parameter names and ranks: its state_dict (our converter's, whose keys equal
  # torchvision's and timm's, tests/test_torchvision_parity.py) less the buffers.
  variables = registry.get_model(name, num_classes=10).init(
    jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False
  )
  state_dict = torchvision_weights.to_torchvision(jax.device_get(variables))
  buffers = ('running_mean', 'running_var', 'num_batches_tracked')
  torch_names = {n: v.ndim for n, v in state_dict.items() if not n.endswith(buffers)}
  expected = timm_layer_scales(list(torch_names), matcher, 0.7)
  ours = traverse_util.flatten_dict(param_groups.lr_multipliers(shapes(name), '', 0.7), sep='/')
  assert len(ours) == len(expected)
  for torch_name, scale in expected.items():
    ours_scale = ours[flax_name(torch_name, torch_names[torch_name])]
    np.testing.assert_allclose(ours_scale, scale, rtol=1e-6, err_msg=torch_name)
  assert min(expected.values()) < 0.7**8  # many layers: the decay spans a wide range


def test_scanned_stages_take_each_blocks_multiplier():
  """Under scan_blocks a stacked tensor's multipliers are its blocks' own, along the stack."""
  per_block = param_groups.lr_multipliers(shapes('cifar_resnet20'), 'layer2_2=3', 0.8)
  scanned = param_groups.lr_multipliers(
    shapes('cifar_resnet20', scan_blocks=True), 'layer2_2=3', 0.8
  )
  stacked = traverse_util.flatten_dict(block_layout.stack_blocks(per_block), sep='/')
  scanned = traverse_util.flatten_dict(scanned, sep='/')
  assert stacked.keys() == scanned.keys()
  for key, value in stacked.items():
    np.testing.assert_array_equal(np.ravel(scanned[key]), np.ravel(value), err_msg=key)
  # Stage 2's blocks 1 and 2 (layers 5 and 6 of 11) and the multiplier of block 2 alone.
  np.testing.assert_allclose(
    np.ravel(scanned['layer2_scan/conv1/kernel']), [0.8**5, 3 * 0.8**4], rtol=1e-6
  )


def test_patterns_name_tensors_from_the_start_and_first_match_wins():
  tree = shapes('cifar_resnet8')
  frozen = traverse_util.flatten_dict(param_groups.frozen_mask(tree, 'conv1,layer2'), sep='/')
  assert sorted(k for k, v in frozen.items() if v) == [
    'conv1/kernel',
    'layer2_0/bn1/bias',
    'layer2_0/bn1/scale',
    'layer2_0/bn2/bias',
    'layer2_0/bn2/scale',
    'layer2_0/conv1/kernel',
    'layer2_0/conv2/kernel',
  ]
  probe = traverse_util.flatten_dict(param_groups.frozen_mask(tree, 'backbone'), sep='/')
  assert sorted(k for k, v in probe.items() if not v) == ['fc/bias', 'fc/kernel']
  assert param_groups.frozen_norms(tree, 'backbone') == (
    'bn1',
    'layer1_0/bn1',
    'layer1_0/bn2',
    'layer2_0/bn1',
    'layer2_0/bn2',
    'layer3_0/bn1',
    'layer3_0/bn2',
  )
  mults = traverse_util.flatten_dict(
    param_groups.lr_multipliers(tree, 'layer1_0/conv=0.5,layer1=2,fc/bias=0', 0.0), sep='/'
  )
  assert mults['layer1_0/conv1/kernel'] == 0.5 and mults['layer1_0/bn1/scale'] == 2
  assert mults['fc/bias'] == 0 and mults['fc/kernel'] == 1 and mults['conv1/kernel'] == 1
  assert param_groups.unmatched(tree, 'layer4,fc', 'head=1,bn1=2') == ['layer4', 'head']
  assert param_groups.head_prefix(shapes('vgg11', size=32)) == 'classifier_6'


def _adamw_updates(tmp_path, params, grads, **options):
  config = tiny(
    tmp_path,
    optimizer='adamw',
    schedule='plateau',
    warmup_epochs=0,
    learning_rate=0.01,
    weight_decay=0.05,
    **options,
  )
  tx = optim.create_optimizer(config, optim.schedule_fn(config, 10, 100))
  state = tx.init(params)
  deltas = []
  for g in grads:
    updates, state = jax.jit(tx.update)(g, state, params)
    new = optim.apply_updates(config, params, updates)
    deltas.append(jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), new, params))
    params = new
  return deltas, state, optim.peak_learning_rate(config)


@pytest.mark.torch
def test_adamw_with_lr_groups_and_frozen_tensors_is_torchs_adamw(tmp_path):
  """3 steps of our AdamW (layer decay 0.75, 'fc=10', the stem and stage 1 frozen) against
  torch.optim.AdamW with one parameter group per tensor (lr times its scale; decay on kernels
  only, as timm's groups) and the frozen tensors left out, as timm builds them."""
  torch = pytest.importorskip('torch')
  model = registry.get_model('cifar_resnet8', num_classes=10)
  params = model.init(jax.random.key(1), jnp.zeros((1, 8, 8, 3)), train=False)['params']
  rng = np.random.default_rng(0)
  grads = [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)] * 3
  grads = [jax.tree.map(lambda g, i=i: g * (1 + i), grads[i]) for i in range(3)]
  options = dict(freeze='conv1,bn1,layer1', lr_mults='fc=10', layer_decay=0.75)
  deltas, state, lr = _adamw_updates(tmp_path, params, grads, **options)

  flat = traverse_util.flatten_dict(params, sep='/')
  frozen = traverse_util.flatten_dict(param_groups.frozen_mask(params, options['freeze']), sep='/')
  scales = traverse_util.flatten_dict(
    param_groups.lr_multipliers(params, options['lr_mults'], options['layer_decay']), sep='/'
  )
  weights = {k: torch.tensor(np.asarray(v), requires_grad=True) for k, v in flat.items()}
  groups = [
    {
      'params': [w],
      'lr': lr * float(scales[k]),
      'weight_decay': 0.05 if k.endswith('kernel') else 0.0,
    }
    for k, w in weights.items()
    if not frozen[k]
  ]
  reference = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)
  for g, ours in zip(grads, deltas, strict=True):
    before = {k: w.detach().clone() for k, w in weights.items()}
    for k, w in weights.items():
      w.grad = torch.tensor(np.asarray(traverse_util.flatten_dict(g, sep='/')[k]))
    reference.step()
    ours = traverse_util.flatten_dict(ours, sep='/')
    for k, w in weights.items():
      expected = (w.detach() - before[k]).numpy()
      if frozen[k]:
        assert not np.any(ours[k]), k
        assert not np.any(expected), k
      else:
        np.testing.assert_allclose(ours[k], expected, rtol=2e-5, atol=1e-9, err_msg=k)
  # The frozen tensors have no Adam moments.
  adam = state[0][0]
  assert set(traverse_util.flatten_dict(adam.mu, sep='/')) == {k for k in flat if not frozen[k]}
  assert math.isclose(scales['fc/kernel'], 10.0) and scales['conv1/kernel'] == pytest.approx(
    0.75**4
  )


def test_lr_multipliers_keep_the_optimiser_state_so_a_run_resumes_with_others(tmp_path):
  params = shapes('cifar_resnet8')
  plain = tiny(tmp_path)
  grouped = tiny(tmp_path, lr_mults='fc=10', layer_decay=0.5)
  for config in (plain, grouped):
    config.schedule, config.warmup_epochs = 'plateau', 0
  a = optim.create_optimizer(plain, optim.schedule_fn(plain, 10, 100)).init(params)
  b = optim.create_optimizer(grouped, optim.schedule_fn(grouped, 10, 100)).init(params)
  assert jax.tree.structure(a) == jax.tree.structure(b)


def test_head_init_scale_scales_the_head_as_the_run_starts(tmp_path):
  """timm's --head-init-scale: the fresh (or init_from) head times the scale; 0 is BiT's zero
  head. The rest is the seeded initialisation, unchanged."""
  states = {}
  for scale in (1.0, 0.25, 0.0):
    config = tiny(tmp_path, head_init_scale=scale)
    run = experiment.Experiment(config, str(tmp_path / f'run_{scale}'))
    states[scale] = experiment.flat_params(run.data_parallel.host(run.initial_state()))
    run.checkpointer.close()
  for key, value in states[1.0].items():
    if key.startswith('fc/'):
      assert np.any(value)
      np.testing.assert_array_equal(states[0.25][key], value * np.float32(0.25))
      assert not np.any(states[0.0][key])
    else:
      np.testing.assert_array_equal(states[0.25][key], value)


def _stats(workdir) -> dict:
  variables = checkpoint.read_variables(storage.path(workdir))
  return {
    f'{c}/{k}': np.asarray(v)
    for c in ('params', 'batch_stats')
    for k, v in traverse_util.flatten_dict(variables[c], sep='/').items()
  }


@pytest.mark.slow  # three runs through main
def test_frozen_tensors_and_their_statistics_stay_bitwise_through_main(tmp_path):
  """A run, then two fine-tunes from it through `main` on 8 devices (AdamW, layer decay, lr
  multipliers): the frozen stem and stage 1 keep their weights bit for bit; their BatchNorms
  keep their statistics too unless freeze_bn_stats=False; every other tensor trains."""
  base = tiny_flags(tmp_path, num_train_steps=6, eval_every=6, checkpoint_every=6)
  result = run_main(tmp_path / 'pretrained', *base)
  assert result.returncode == 0, result.stderr[-3000:]
  tune = [
    *base,
    f'--config.init_from={tmp_path / "pretrained"}',
    '--config.freeze=conv1,bn1,layer1',
    '--config.optimizer=adamw',
    '--config.learning_rate=0.01',
    '--config.layer_decay=0.8',
    '--config.lr_mults=fc=5',
  ]
  result = run_main(tmp_path / 'tuned', *tune)
  assert result.returncode == 0, result.stderr[-3000:]
  result = run_main(tmp_path / 'adapted', *tune, '--config.freeze_bn_stats=False')
  assert result.returncode == 0, result.stderr[-3000:]
  before, tuned, adapted = (_stats(tmp_path / d) for d in ('pretrained', 'tuned', 'adapted'))
  frozen = lambda key: re.match(r'(params|batch_stats)/(conv1|bn1|layer1)', key)  # noqa: E731
  # cifar_resnet8: the stem (conv, BN: 2 parameters, 2 statistics), block 1 (2 convs, 2 BNs)
  assert sum(1 for k in before if frozen(k)) == 1 + 4 + (2 + 2 * 4)
  for key, value in before.items():
    if frozen(key):
      assert np.array_equal(tuned[key], value), key
      if key.startswith('params/'):
        assert np.array_equal(adapted[key], value), key
      else:  # batch statistics in training, updated
        assert not np.array_equal(adapted[key], value), key
    else:
      assert not np.array_equal(tuned[key], value), key
  config = tiny(tmp_path, freeze='conv1,bn1,layer1', optimizer='adamw')
  config.mean_image_path = str(tmp_path / 'mean.npy')
  _, step = final_params(str(tmp_path / 'tuned'), config)  # resumes under the same freeze
  assert step == 6
