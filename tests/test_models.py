"""Model zoo: parameter counts, torchvision parity, shapes, shortcut options, plain nets, the
family's norm layers and variants, errors."""

import contextlib
import functools
import io
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from helpers import CONFIGURED_NETS, REFERENCE_NETS, REPO

import resnet_jax
from resnet_jax import summary
from resnet_jax.models import (
  attention,
  batch_norm,
  block_layout,
  example_draws,
  layers,
  norms,
  registry,
  resnet,
  torchvision_weights,
)

TORCHVISION_PARAMS = {
  'resnet18': 11_689_512,
  'resnet34': 21_797_672,
  'resnet50': 25_557_032,
  'resnet101': 44_549_160,
  'resnet152': 60_192_808,
  'resnext50_32x4d': 25_028_904,
  'resnext101_32x8d': 88_791_336,
  'resnext101_64x4d': 83_455_272,
  'wide_resnet50_2': 68_883_240,
  'wide_resnet101_2': 126_886_696,
  # The paper's comparison nets (torchvision's vgg.py, alexnet.py)
  'vgg11': 132_863_336,
  'vgg13': 133_047_848,
  'vgg16': 138_357_544,
  'vgg19': 143_667_240,
  'vgg11_bn': 132_868_840,
  'vgg13_bn': 133_053_736,
  'vgg16_bn': 138_365_992,
  'vgg19_bn': 143_678_248,
  'alexnet': 61_100_840,
  'googlenet': 6_624_904,  # without its auxiliary classifiers, as torchvision's model card
}
TORCHVISION_GMACS = {  # torchvision's model cards ("GFLOPS", counted as multiply-adds)
  'resnet18': 1.81,
  'resnet34': 3.66,
  'resnet50': 4.09,
  'resnet101': 7.80,
  'resnet152': 11.51,
  'resnext50_32x4d': 4.23,
  'resnext101_32x8d': 16.41,
  'resnext101_64x4d': 15.46,
  'wide_resnet50_2': 11.40,
  'wide_resnet101_2': 22.75,
  'vgg11': 7.61,
  'vgg16': 15.47,
  'vgg19': 19.63,
  'vgg16_bn': 15.47,
  'alexnet': 0.71,
  'googlenet': 1.50,
}

# Checks over ~3 s each on a 2-core CPU (among them any of the 101- and 152-layer nets and the
# 1001- and 1202-layer CIFAR nets) are slow: the full run only, not the fast lane.
SLOW = pytest.mark.slow
DEEPEST = ('resnet101', 'resnet152', 'resnext101_32x8d', 'resnext101_64x4d', 'wide_resnet101_2')


def variables_of(model, size, batch=1):
  return jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((batch, size, size, 3)), train=False)
  )


def count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


@pytest.mark.parametrize('name', sorted(TORCHVISION_PARAMS))
def test_imagenet_param_counts_equal_torchvision(name):
  # torchvision's figure for googlenet is without its auxiliary classifiers (test_googlenet: with)
  options = dict(aux_logits=False) if name == 'googlenet' else {}
  model = registry.get_model(name, num_classes=1000, **options)
  assert count(variables_of(model, 224)['params']) == TORCHVISION_PARAMS[name]


@pytest.mark.parametrize(
  'depth, paper_millions', [(20, 0.27), (32, 0.46), (44, 0.66), (56, 0.85), (110, 1.7)]
)
def test_cifar_param_counts_match_paper_table6(depth, paper_millions):
  model = registry.get_model(f'cifar_resnet{depth}', num_classes=10)
  millions = count(variables_of(model, 32)['params']) / 1e6
  assert millions == pytest.approx(paper_millions, abs=0.01 if depth < 110 else 0.05)


# The family beyond torchvision, 1000 classes: each equals its torch reference's count
# (tests/torch_resnet.py; resnet50d is timm's 25.58 M), as the parity tests check key by key.
# Counted at 64 px: the count does not depend on the image.
FAMILY_PARAMS = {
  'resnet18d': 11_708_744,
  'resnet50c': 25_576_264,
  'resnet50d': 25_576_264,
  'preact_resnet18': 11_687_720,
  'preact_resnet50': 25_549_352,
  'preact_resnet200': 64_666_152,
  # timm's attention nets, as its model cards count them.
  'seresnet18': 11_779_624,
  'seresnet50': 28_088_024,
  'seresnet101': 49_326_872,
  'ecaresnet50d': 25_576_350,
  'ecaresnet101d': 44_568_563,
}


@pytest.mark.parametrize('name', sorted(FAMILY_PARAMS))
def test_family_param_counts(name):
  model = registry.get_model(name, num_classes=1000)
  assert count(variables_of(model, 64)['params']) == FAMILY_PARAMS[name]


def test_resnet50d_mult_adds_are_timms():
  rows = summary.layer_rows(registry.get_model('resnet50d', num_classes=1000), (1, 224, 224, 3))
  assert sum(r.mult_adds for r in rows) / 1e9 == pytest.approx(4.35, rel=0.01)  # timm: 4.35 G


@pytest.mark.parametrize(
  'depth, total, paper_millions',
  [(164, 1_703_258, 1.7), pytest.param(1001, 10_327_706, 10.2, marks=SLOW)],
)
def test_preact_cifar_bottleneck_nets_have_the_papers_parameters(depth, total, paper_millions):
  """He et al. 2016 give ResNet-164 1.7 M and ResNet-1001 10.2 M parameters: their convolutions'
  weights (with the BN scales, biases and the classifier, 1001 has 10.33 M)."""
  params = variables_of(registry.get_model(f'cifar_preact_resnet{depth}', num_classes=10), 32)
  params = params['params']
  assert count(params) == total
  kernels = [x.size for x in jax.tree.leaves(params) if x.ndim == 4]
  assert round(sum(kernels) / 1e6, 1) == paper_millions
  assert (
    len(kernels) == (depth - 2) + 1 + 3
  )  # three per block of (depth - 2) / 3, stem, projections


def test_norm_layers_change_only_what_they_should():
  """GroupNorm keeps BatchNorm's parameters and drops its statistics; frozen BatchNorm's four
  tensors are all statistics (no parameters), as torchvision's buffers."""
  shapes = {
    norm: variables_of(registry.get_model('resnet50', num_classes=1000, norm=norm), 64)
    for norm in norms.NORMS
  }
  assert count(shapes['group']['params']) == TORCHVISION_PARAMS['resnet50']
  assert 'batch_stats' not in shapes['group']
  frozen = shapes['frozen_batch']
  norm_params = count(shapes['batch']['batch_stats'])  # scale and bias: the sizes of mean and var
  assert count(frozen['params']) == TORCHVISION_PARAMS['resnet50'] - norm_params
  assert count(frozen['batch_stats']) == 2 * norm_params


def test_group_norm_is_torchs_formula():
  x = np.random.default_rng(0).standard_normal((2, 5, 3, 64)).astype(np.float32) * 3 + 1
  layer = norms.GroupNorm(num_groups=8)
  variables = layer.init(jax.random.key(0), x, train=True)
  scale = np.random.default_rng(1).uniform(0.5, 1.5, 64).astype(np.float32)
  bias = np.random.default_rng(2).normal(0, 1, 64).astype(np.float32)
  y = layer.apply({'params': {'scale': scale, 'bias': bias}}, x, train=True)
  groups = x.astype(np.float64).reshape(2, 5, 3, 8, 8)  # channel c in group c // 8, as torch
  mean = groups.mean(axis=(1, 2, 4), keepdims=True)
  var = groups.var(axis=(1, 2, 4), keepdims=True)
  expected = ((groups - mean) / np.sqrt(var + 1e-5)).reshape(x.shape) * scale + bias
  np.testing.assert_allclose(y, expected, atol=2e-5)
  assert variables.keys() == {'params'}
  half = norms.GroupNorm(num_groups=8, dtype=jnp.bfloat16)
  assert (
    half.apply({'params': {'scale': scale, 'bias': bias}}, x, train=False).dtype == jnp.bfloat16
  )


def test_frozen_batch_norm_is_torchvisions_and_never_changes():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((4, 3, 3, 8)).astype(np.float32)
  stats = {
    'scale': rng.uniform(0.5, 1.5, 8),
    'bias': rng.normal(0, 1, 8),
    'mean': rng.normal(0, 1, 8),
    'var': rng.uniform(0.5, 2, 8),
  }
  stats = {k: v.astype(np.float32) for k, v in stats.items()}
  layer = norms.FrozenBatchNorm()
  y, updates = layer.apply({'batch_stats': stats}, x, train=True, mutable=['batch_stats'])
  folded = stats['scale'] / np.sqrt(stats['var'].astype(np.float64) + 1e-5)
  np.testing.assert_allclose(y, x * folded + (stats['bias'] - stats['mean'] * folded), atol=1e-6)
  for key, value in stats.items():
    np.testing.assert_array_equal(updates['batch_stats'][key], value)
  assert layer.init(jax.random.key(0), x, train=False).keys() == {'batch_stats'}


def test_init_from_moves_batch_norm_parameters_into_frozen_statistics():
  bn = registry.get_model('cifar_resnet8', num_classes=10)
  frozen = registry.get_model('cifar_resnet8', num_classes=10, norm='frozen_batch')
  trained = bn.init(jax.random.key(0), jnp.ones((1, 8, 8, 3)), train=False)
  like = variables_of(frozen, 8)
  moved = norms.collections_like(trained, like)
  assert jax.tree.map(np.shape, moved) == jax.tree.map(lambda s: s.shape, like)
  np.testing.assert_array_equal(
    moved['batch_stats']['layer1_0']['bn2']['scale'], trained['params']['layer1_0']['bn2']['scale']
  )
  back = norms.collections_like(moved, trained)
  assert jax.tree.map(np.shape, back) == jax.tree.map(np.shape, trained)


def test_resnet_d_shortcut_averages_then_projects():
  """ResNet-D's average pool: torch's AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False),
  an odd edge a window of its own."""
  x = np.arange(2 * 5 * 3 * 2, dtype=np.float32).reshape(2, 5, 3, 2)
  y = np.asarray(layers.average_pool_2x2(jnp.asarray(x)))
  assert y.shape == (2, 3, 2, 2)
  np.testing.assert_allclose(y[:, 0, 0], x[:, 0:2, 0:2].mean(axis=(1, 2)))
  np.testing.assert_allclose(y[:, 2, 1], x[:, 4, 2])  # the corner window holds one pixel
  np.testing.assert_allclose(y[:, 1, 1], x[:, 2:4, 2].mean(axis=1))
  flat = traverse_util.flatten_dict(
    variables_of(registry.get_model('resnet50d', num_classes=10), 64)
  )
  names = {'/'.join(k[1:]) for k in flat if k[1] == 'layer2_0'}
  assert {'layer2_0/downsample_1/kernel', 'layer2_0/downsample_2/scale'} <= names
  assert flat['params', 'layer2_0', 'downsample_1', 'kernel'].shape == (1, 1, 256, 512)
  stem = [k[1] for k in flat if k[0] == 'params' and k[1].startswith('conv1')]
  assert sorted(set(stem)) == ['conv1_0', 'conv1_1', 'conv1_3', 'conv1_4', 'conv1_6']


@pytest.mark.slow
def test_cifar_resnet1202_has_19_4m_params():
  model = registry.get_model('cifar_resnet1202', num_classes=10)
  assert count(variables_of(model, 32)['params']) / 1e6 == pytest.approx(19.4, abs=0.05)


@pytest.mark.parametrize(
  'name',
  [pytest.param(n, marks=SLOW) if n in DEEPEST else n for n in sorted(TORCHVISION_GMACS)],
)
def test_mult_adds_match_torchvision(name):
  rows = summary.layer_rows(registry.get_model(name, num_classes=1000), (1, 224, 224, 3))
  gmacs = sum(r.mult_adds for r in rows) / 1e9
  assert gmacs == pytest.approx(TORCHVISION_GMACS[name], rel=0.01)
  assert sum(r.params for r in rows) == TORCHVISION_PARAMS[name]


def test_the_list_of_nets_names_what_builds_and_the_weights_each_loads(capsys):
  names = registry.list_models()
  assert len(names) == len(set(names)) == 78
  for name in names:
    registry.model_config(name)  # each listed name builds
  assert {'resnet50d', 'wide_resnet101_2', 'cifar_resnet1202', 'cifar_preact_resnet1001'} < set(
    names
  )
  assert registry.list_models('vgg1[13]*') == ['vgg11', 'vgg11_bn', 'vgg13', 'vgg13_bn']
  released = resnet_jax.list_models(pretrained=True)
  assert len(released) == 27 and 'resnet50' in released and 'resnet50d' not in released
  assert 'bit_r152x4' in released and 'seresnet50' in released and 'seresnet101' not in released
  summary.main(['--list', 'resnet50', 'alexnet', 'cifar_plain2?'])
  assert capsys.readouterr().out.splitlines() == [
    'name                  params  G mult-adds  weights by name',
    'resnet50          25,557,032        4.089  torchvision:resnet50.IMAGENET1K_V1 (76.13), '
    'torchvision:resnet50.IMAGENET1K_V2 (80.86), timm:resnet50.a1_in1k (80.40), '
    'timm:resnet50.a2_in1k (79.80), timm:resnet50.a3_in1k (78.10)',
    'cifar_plain20        269,722        0.041',
    'alexnet           61,100,840        0.714  torchvision:alexnet.IMAGENET1K_V1 (56.52)',
  ]


def test_blocks_of_your_own_keep_the_rules_of_the_block_they_derive_from():
  class MyBasicBlock(resnet.BasicBlock):
    pass

  class MyBottleneck(resnet.Bottleneck):
    pass

  with pytest.raises(ValueError, match=r'blocks without a grouped 3x3 \(MyBasicBlock\)'):
    registry.get_model('resnet18', num_classes=10, block_cls=MyBasicBlock, groups=32)
  # Its 3x3 convolutions have 12, 24, 48 (and 96) channels: 32 groups divide only 96.
  with pytest.raises(ValueError, match=r'its norms see \[12, 24, 48\] channels'):
    registry.get_model(
      'resnet50', num_classes=10, block_cls=MyBottleneck, groups=3, width_per_group=4, norm='group'
    )


def test_attention_widths_follow_timms_rules():
  # SE: 1/16 of the channels, to the nearest multiple of 8, at least 8 (seresnet18's 64 -> 8).
  assert [attention.se_channels(c) for c in (64, 256, 512, 1024, 2048)] == [8, 16, 32, 64, 128]
  # ECA: |log2 C + 1| / 2, odd upwards, at least 3.
  assert [attention.eca_kernel_size(c) for c in (64, 256, 512, 1024, 2048)] == [3, 5, 5, 5, 7]
  v = variables_of(registry.get_model('ecaresnet50d', num_classes=10), 32)['params']
  assert v['layer1_0']['se']['conv']['kernel'].shape == (5, 1, 1)
  assert v['layer4_2']['se']['conv']['kernel'].shape == (7, 1, 1)
  v = variables_of(registry.get_model('seresnet50', num_classes=10), 32)['params']
  assert v['layer4_0']['se']['fc1']['kernel'].shape == (1, 1, 2048, 128)
  with pytest.raises(ValueError, match='pre-activation block does not have'):
    registry.get_model('preact_resnet18', num_classes=10, attention='se')
  with pytest.raises(ValueError, match="attention must be '', 'se' or 'eca', got 'cbam'"):
    registry.get_model('resnet18', num_classes=10, attention='cbam')


def test_blocks_declare_what_the_checks_read():
  class TwoBranchBlock(resnet.BasicBlock):
    """Declares a grouped 3x3 and wider norms, as a block of one's own may."""

    takes_groups = True

    @classmethod
    def norm_channels(cls, features, groups=1, width_per_group=64):
      return {features, 3 * features}

  assert resnet.Bottleneck.norm_channels(64, 32, 4) == {128, 256}
  # GroupNorm of 32 groups: 3 * 16 = 48 channels do not split, whatever the parent block says.
  with pytest.raises(ValueError, match=r'its norms see \[16, 48\] channels'):
    registry.get_model(
      'cifar_resnet20', num_classes=10, block_cls=TwoBranchBlock, norm='group', norm_groups=32
    )
  registry.get_model('cifar_resnet20', num_classes=10, block_cls=TwoBranchBlock, groups=2)


def test_nets_of_your_own_by_registration_and_by_import_path(tmp_path, monkeypatch):
  @registry.register_model
  def tiny_se_net():
    return dict(
      stage_sizes=(1, 1),
      block_cls=resnet.BasicBlock,
      widths=(16, 32),
      stem='cifar',
      attention='se',
    )

  try:
    assert 'tiny_se_net' in registry.list_models('tiny_*')
    v = variables_of(registry.get_model('tiny_se_net', num_classes=10), 16)['params']
    assert v['layer2_0']['se']['fc1']['kernel'].shape == (1, 1, 32, 8)
  finally:
    registry._ENTRY_POINTS.pop('tiny_se_net')

  def resnet50():
    return {}

  def seresnet50():
    return {}

  for built_in in (resnet50, seresnet50):
    with pytest.raises(ValueError, match=f"'{built_in.__name__}' is a built-in net"):
      registry.register_model(built_in)
  (tmp_path / 'their_nets.py').write_text(
    'import flax.linen as nn\n'
    'class Linear(nn.Module):\n'
    '  num_classes: int\n'
    '  dtype: object = None\n'
    '  @nn.compact\n'
    '  def __call__(self, x, *, train):\n'
    '    return nn.Dense(self.num_classes, name="fc")(x.reshape(x.shape[0], -1))\n'
    'def not_a_net():\n'
    '  return dict(stage_sizes=(1,))\n'
  )
  monkeypatch.syspath_prepend(str(tmp_path))
  model = registry.get_model('their_nets:Linear', num_classes=3)
  assert count(variables_of(model, 4)['params']) == 4 * 4 * 3 * 3 + 3
  with pytest.raises(ValueError, match='returns no block_cls: a ResNet needs both'):
    registry.get_model('their_nets:not_a_net', num_classes=3)
  with pytest.raises(ValueError, match='their_nets has no function'):
    registry.get_model('their_nets:missing', num_classes=3)
  with pytest.raises(ValueError, match=r"Cannot import 'nowhere\.nets'.*PYTHONPATH"):
    registry.get_model('nowhere.nets:net', num_classes=3)
  with pytest.raises(ValueError, match='their_nets:Linear is not a ResNet: it has no drop_path'):
    registry.get_model('their_nets:Linear', num_classes=3, drop_path_rate=0.1)


def test_summary_takes_the_flag_spelling_of_the_other_commands_too(capsys):
  summary.main(['cifar_resnet20', '--image_size', '40', '--batch_size', '2', '--num_classes', '7'])
  underscores = capsys.readouterr().out
  summary.main(['cifar_resnet20', '--image-size', '40', '--batch-size', '2', '--num-classes', '7'])
  assert capsys.readouterr().out == underscores
  assert 'cifar_resnet20: input [2, 40, 40, 3], 7 classes' in underscores


def test_summary_resnet18_batch128_matches_torchinfo(capsys):
  summary.main(['resnet18', '--image-size', '224', '--batch-size', '128'])
  out = capsys.readouterr().out
  assert 'Total params: 11,689,512' in out
  assert 'Total mult-adds (G): 232.20' in out
  # torchinfo 1.8.0's memory lines for torchvision's resnet18 (tests/torch_resnet.py's build) at
  # input (128, 3, 224, 224), word for word.
  assert out.strip().splitlines()[-4:] == [
    'Input size (MB): 77.07',
    'Forward/backward pass size (MB): 5087.67',
    'Params size (MB): 46.76',
    'Estimated Total Size (MB): 5211.49',
  ]


@pytest.mark.slow  # compiles ResNet-50 steps at several batches
def test_compiled_step_memory_grows_with_the_batch_and_the_largest_batch_fits(capsys):
  """XLA's memory analysis of the train step grows with the batch, and the largest batch that
  summary reports for a budget compiles to a step that fits it, and not by a wide margin."""
  at = {
    b: summary.peak_bytes(summary.compiled_step_memory('cifar_resnet20', 10, 32, b))
    for b in (32, 128)
  }
  assert at[128] > at[32] > 0
  summary.main(['cifar_resnet20', '--image-size', '32', '--batch-size', '32', '--memory=200MB'])
  out = capsys.readouterr().out
  fits = int(re.search(r'fits 0.20 GB per device: ([\d,]+)', out).group(1).replace(',', ''))
  assert fits > 32
  used = summary.peak_bytes(summary.compiled_step_memory('cifar_resnet20', 10, 32, fits))
  assert 0.7 * 200e6 <= used <= 200e6
  # One image per device gives no slope of its own; the answer is the same.
  devices = str(jax.device_count())
  summary.main(['cifar_resnet20', '--image-size', '32', '--batch-size', devices, '--memory=200MB'])
  out = capsys.readouterr().out
  assert int(re.search(r'per device: ([\d,]+)', out).group(1).replace(',', '')) == fits


@pytest.mark.parametrize(
  'text, expected', [('80GB', 80e9), ('16GiB', 16 * 2**30), ('512 MB', 512e6)]
)
def test_memory_sizes_are_read_as_users_write_them(text, expected):
  assert summary.parse_bytes(text) == expected
  with pytest.raises(ValueError, match='is not a memory size'):
    summary.parse_bytes('lots')


@pytest.mark.parametrize(
  'name, size, expected',
  [
    ('resnet18', 224, (2, 1000)),
    ('resnet50', 160, (2, 1000)),
    ('resnet34', 97, (2, 1000)),
    ('cifar_resnet20', 32, (2, 10)),
    ('cifar_resnet20', 48, (2, 10)),
  ],
)
def test_output_shapes_any_input_size(name, size, expected):
  model = registry.get_model(name, num_classes=expected[1])
  variables = variables_of(model, size, batch=2)
  out = jax.eval_shape(
    lambda v: model.apply(v, jnp.zeros((2, size, size, 3)), train=False), variables
  )
  assert out.shape == expected and out.dtype == jnp.float32


@pytest.mark.parametrize('name', ['cifar_resnet20', 'cifar_preact_resnet20'])
def test_spatial_logits_are_the_fully_convolutional_form(name):
  model = registry.get_model(name, num_classes=10)
  x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  spatial = model.apply(variables, x, train=False, spatial_logits=True)
  assert spatial.shape == (2, 16, 16, 10)
  # The head is linear, so averaging its spatial outputs equals the pooled logits.
  pooled = model.apply(variables, x, train=False)
  np.testing.assert_allclose(spatial.mean(axis=(1, 2)), pooled, rtol=1e-5, atol=1e-5)


def test_option_a_adds_no_parameters_and_c_projects_every_block():
  sizes = {}
  for option in 'ABC':
    model = registry.get_model('resnet18', num_classes=1000, shortcut=option)
    params = variables_of(model, 64)['params']
    sizes[option] = count(params)
    flat = traverse_util.flatten_dict(params, sep='/')
    sizes[option + '_projections'] = len({k.split('/')[0] for k in flat if 'downsample_0' in k})
  plain = count(variables_of(registry.get_model('plain18', num_classes=1000), 64)['params'])
  assert sizes['A'] == plain  # option A: identity shortcuts only, like no shortcut at all
  assert sizes['B_projections'] == 3  # first block of stages 2-4
  assert sizes['C_projections'] == 8  # every block
  assert sizes['A'] < sizes['B'] < sizes['C']


def test_cifar_option_a_equals_plain_param_count():
  for depth in (20, 56):
    res = count(variables_of(registry.get_model(f'cifar_resnet{depth}', num_classes=10), 32))
    plain = count(variables_of(registry.get_model(f'cifar_plain{depth}', num_classes=10), 32))
    assert res == plain


@pytest.mark.parametrize(
  'depth', [18, 34, 50, pytest.param(101, marks=SLOW), pytest.param(152, marks=SLOW)]
)
def test_plain_nets_have_exactly_the_projections_fewer(depth):
  res = variables_of(registry.get_model(f'resnet{depth}', num_classes=1000), 64)['params']
  plain = variables_of(registry.get_model(f'plain{depth}', num_classes=1000), 64)['params']
  flat = traverse_util.flatten_dict(res, sep='/')
  projection = sum(v.size for k, v in flat.items() if '/downsample_' in k)
  assert projection > 0
  assert count(plain) == count(res) - projection


@pytest.mark.slow
def test_stride_in_1x1_moves_the_stride_and_keeps_params():
  v15 = registry.get_model('resnet50', num_classes=1000)
  v1 = registry.get_model('resnet50', num_classes=1000, stride_in_1x1=True)
  assert count(variables_of(v15, 64)) == count(variables_of(v1, 64))
  rows_v15 = {r.path: r for r in summary.layer_rows(v15, (1, 224, 224, 3))}
  rows_v1 = {r.path: r for r in summary.layer_rows(v1, (1, 224, 224, 3))}
  assert rows_v15['layer2_0/conv1'].output_shape == (1, 56, 56, 128)
  assert rows_v1['layer2_0/conv1'].output_shape == (1, 28, 28, 128)
  # The paper's placement does the 3x3 at the lower resolution: fewer multiply-adds.
  assert sum(r.mult_adds for r in rows_v1.values()) < sum(r.mult_adds for r in rows_v15.values())


@pytest.mark.slow
def test_initialisation_matches_torchvision_statistics():
  model = registry.get_model('resnet50', num_classes=1000, zero_init_residual=True)
  v = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  kernel = v['params']['layer3_0']['conv2']['kernel']  # 3x3x256x256, fan_out = 9 * 256
  assert float(jnp.std(kernel)) == pytest.approx(np.sqrt(2 / (9 * 256)), rel=0.02)
  fc = v['params']['fc']['kernel']
  assert float(jnp.max(jnp.abs(fc))) <= 1 / np.sqrt(2048)
  assert float(jnp.max(jnp.abs(fc))) > 0.99 / np.sqrt(2048)
  assert float(jnp.abs(v['params']['layer1_0']['bn3']['scale']).max()) == 0.0
  assert float(v['params']['layer1_0']['bn1']['scale'].min()) == 1.0
  assert float(v['batch_stats']['bn1']['var'].min()) == 1.0


def test_zero_init_residual_blocks_start_as_identity_of_the_shortcut():
  trunk = jax.random.normal(jax.random.key(2), (2, 32, 32, 16))
  conv = functools.partial(layers.conv, dtype=jnp.float32)
  for block_cls, width in [(resnet.BasicBlock, 16), (resnet.Bottleneck, 4)]:
    block = block_cls(width, 1, 'B', True, conv, batch_norm.BatchNorm, zero_init_residual=True)
    bv = block.init(jax.random.key(3), trunk, train=False)
    out = block.apply(bv, trunk, train=False)
    np.testing.assert_allclose(out, jax.nn.relu(trunk), atol=1e-6)


@pytest.mark.parametrize(
  'name, options',
  [
    ('cifar_resnet20', {}),
    ('cifar_preact_resnet20', {}),
    ('cifar_resnet20', {'norm': 'group'}),
    ('cifar_resnet20', {'attention': 'se'}),
    ('cifar_resnet20', {'attention': 'eca'}),
    # BiT's make: GroupNorm, weight-standardised convs (standardised in float32, then cast).
    ('cifar_preact_resnet20', {'norm': 'group', 'weight_standardization': True}),
  ],
)
def test_mixed_precision_keeps_params_stats_and_logits_float32(name, options):
  options = {**options, 'norm_groups': 16} if options else options
  model = registry.get_model(name, num_classes=10, dtype=jnp.bfloat16, **options)
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  v = model.init(jax.random.key(0), x, train=False)
  assert {leaf.dtype for leaf in jax.tree.leaves(v)} == {jnp.dtype('float32')}
  logits, updates = model.apply(v, x, train=True, mutable=['batch_stats'])
  assert logits.dtype == jnp.float32
  assert {leaf.dtype for leaf in jax.tree.leaves(updates)} <= {jnp.dtype('float32')}
  full = registry.get_model(name, num_classes=10, **options).apply(v, x, train=False)
  half = model.apply(v, x, train=False)
  np.testing.assert_allclose(half, full, atol=0.1 * float(jnp.abs(full).max()) + 0.05)


def example_keys(count, seed=0):
  return jax.vmap(lambda row: jax.random.fold_in(jax.random.key(seed), row))(jnp.arange(count))


@pytest.mark.slow
def test_stochastic_depth_is_timms_drop_path_per_example_and_linear_in_depth():
  assert example_draws.drop_path_rates((1, 1, 1), 0.2) == [0.0, 0.1, 0.2]
  assert example_draws.drop_path_rates((3, 4, 6, 3), 0.05)[-1] == 0.05
  keys, y = example_keys(4000), jnp.full((4000, 2, 2, 3), 2.0)
  out = np.asarray(example_draws.drop_path(y, keys, 5, 0.25))
  kept = out[:, 0, 0, 0] != 0
  assert np.all(out[kept] == np.float32(2.0 / 0.75)) and np.all(out[~kept] == 0)
  assert abs(kept.mean() - 0.75) < 3 * np.sqrt(0.75 * 0.25 / 4000)
  again = example_draws.drop_path(y, keys, 5, 0.25)
  np.testing.assert_array_equal(again, out)  # keyed, not stateful
  other = np.asarray(example_draws.drop_path(y, keys, 6, 0.25))[:, 0, 0, 0] != 0
  assert 0.5 < (other == kept).mean() < 0.75  # another block draws on its own (0.625 expected)
  np.testing.assert_array_equal(example_draws.drop_path(y, keys, 5, 0.0), y)

  # In a block, a dropped example's output is the shortcut alone: relu(x) for an identity.
  x = jax.random.normal(jax.random.key(2), (64, 4, 4, 16))
  conv = functools.partial(layers.conv, dtype=jnp.float32)
  block = resnet.BasicBlock(16, 1, 'A', True, conv, batch_norm.BatchNorm, zero_init_residual=False)
  variables = block.init(jax.random.key(3), x, train=False)
  drop = (example_keys(64), 7, 0.5)
  out, _ = block.apply(variables, x, train=True, drop=drop, mutable=['batch_stats'])
  full, _ = block.apply(variables, x, train=True, mutable=['batch_stats'])
  dropped = np.asarray(example_draws.drop_path(jnp.ones((64, 1)), *drop))[:, 0] == 0
  assert 16 < dropped.sum() < 48
  np.testing.assert_array_equal(out[dropped], jax.nn.relu(x)[dropped])
  assert not np.allclose(out[~dropped], jax.nn.relu(x)[~dropped])
  assert not np.allclose(out[~dropped], full[~dropped])  # kept branches scaled by 1 / (1 - 0.5)


@pytest.mark.slow
@pytest.mark.parametrize('name', ['cifar_resnet20', 'cifar_preact_resnet20'])
def test_stochastic_depth_trains_only_and_is_the_same_scanned(name):
  x = jax.random.normal(jax.random.key(1), (8, 16, 16, 3))
  model = registry.get_model(name, num_classes=10, drop_path_rate=0.5)
  variables = model.init(jax.random.key(0), x, train=False)
  plain = registry.get_model(name, num_classes=10)
  np.testing.assert_array_equal(
    model.apply(variables, x, train=False), plain.apply(variables, x, train=False)
  )
  train = functools.partial(model.apply, x=x, train=True, mutable=['batch_stats'])
  dropped = train(variables, example_keys=example_keys(8))[0]
  assert not np.allclose(dropped, plain.apply(variables, x, train=True, mutable=['batch_stats'])[0])
  scanned = registry.get_model(name, num_classes=10, drop_path_rate=0.5, scan_blocks=True)
  again = scanned.apply(
    block_layout.stack_blocks(variables),
    x,
    train=True,
    example_keys=example_keys(8),
    mutable=['batch_stats'],
  )[0]
  np.testing.assert_allclose(again, dropped, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='example_keys'):
    train(variables)
  with pytest.raises(ValueError, match='no shortcuts'):
    registry.get_model('cifar_plain20', num_classes=10, drop_path_rate=0.1)


@pytest.mark.parametrize(
  'name, message, choices',
  [
    ('resnet19', 'Impossible ImageNet depth 19', 'choose one of [18, 34, 50, 101, 152, 200]'),
    ('cifar_resnet21', 'Impossible CIFAR depth 21', 'the paper uses 20, 32, 44, 56, 110, 1202'),
    ('cifar_resnet2', 'Impossible CIFAR depth 2', 'depth must be 6n+2 with n >= 1'),
    ('cifar_preact_resnet165', 'Impossible CIFAR depth 165', 'or 9n+2 from 164 for the bottleneck'),
    ('cifar_resnet20d', "Unknown model 'cifar_resnet20d'", 'the -C/-D tweaks name resnets only'),
    ('vgg12', "Unknown model 'vgg12'", 'Valid names: resnet{18,34,50,101,152,200}, plain{'),
  ],
)
def test_bad_names_raise_with_the_valid_choices(name, message, choices):
  with pytest.raises(ValueError, match=message) as err:
    registry.get_model(name, num_classes=10)
  assert choices in str(err.value)


def test_bad_options_raise():
  with pytest.raises(ValueError, match="shortcut must be 'A', 'B' or 'C'"):
    registry.get_model('resnet18', num_classes=10, shortcut='D')
  with pytest.raises(ValueError, match='Unknown model option'):
    registry.get_model('resnet18', num_classes=10, shortcutt='A')


def test_any_6n_plus_2_depth_builds():
  model = registry.get_model('cifar_resnet14', num_classes=10)
  assert model.stage_sizes == (2, 2, 2)


def test_convert_rejects_wrong_keys_naming_them():
  good = {'fc.weight': np.zeros((10, 512)), 'fc.bias': np.zeros(10)}
  first = 'params/bn1/bias, params/bn1/scale, params/conv1/kernel, '  # parameters first
  with pytest.raises(ValueError, match=f'; 100 missing for resnet18: {first}'):
    torchvision_weights.from_torchvision(good, 'resnet18')
  bad = {**good, 'fc.weight': np.zeros((10, 256)), 'layer9.0.conv1.weight': np.zeros((1, 1, 1, 1))}
  with pytest.raises(ValueError) as err:
    torchvision_weights.from_torchvision(bad, 'resnet18')
  assert 'layer9.0.conv1.weight' in str(err.value)
  assert 'fc.weight: got (256, 10)' in str(err.value)


@pytest.mark.parametrize('groups', [None, [[0, 1, 2, 3], [4, 5, 6, 7]]])
def test_cross_device_batchnorm_equals_batchnorm_of_the_whole_group(groups):
  from jax.sharding import Mesh, PartitionSpec

  x = jax.random.normal(jax.random.key(0), (16, 3, 3, 4)) * 3 + 1
  synced = batch_norm.BatchNorm(axis_name='data', axis_index_groups=groups)
  local = batch_norm.BatchNorm()
  variables = local.init(jax.random.key(1), x, train=False)

  def per_device(xs):
    return synced.apply(variables, xs, train=True, mutable=['batch_stats'])

  mesh = Mesh(np.array(jax.devices()[:8]), ('data',))
  step = jax.shard_map(
    per_device,
    mesh=mesh,
    in_specs=PartitionSpec('data'),
    out_specs=PartitionSpec('data'),
    check_vma=False,
  )
  y, stats = jax.jit(step)(x)
  parts = [x] if groups is None else [x[:8], x[8:]]
  expected = [local.apply(variables, p, train=True, mutable=['batch_stats']) for p in parts]
  np.testing.assert_allclose(y, jnp.concatenate([e[0] for e in expected]), atol=1e-5)
  # Running variance uses the group's unbiased variance (n = 2 * 9 * group size, as torch would).
  got_var = stats['batch_stats']['var'].reshape(8, -1)
  np.testing.assert_allclose(got_var[0], expected[0][1]['batch_stats']['var'], rtol=1e-5)
  np.testing.assert_allclose(got_var[-1], expected[-1][1]['batch_stats']['var'], rtol=1e-5)


def _autodiff_batch_norm(x, scale, bias, axis):
  """``batch_norm.train_batch_norm``'s forward expressions, left to JAX's autodiff (whose
  gradient flows through the batch mean and variance as the written-out one says it does)."""
  return batch_norm.train_batch_norm_forward(x, scale, bias, 1e-5, x.dtype, axis)[0][0]


def test_one_pass_batch_statistics_keep_float32_digits_where_the_mean_dwarfs_the_spread():
  """Late-stage maps: few values per channel, mean 1e3 x the spread. The shifted one-pass sums
  match float64 two-pass statistics; unshifted E[x^2] - E[x]^2 is off by 23% to 5e4x here."""
  spread = np.random.default_rng(0).normal(size=(4, 2, 2, 3))
  x = (1000.0 + spread * np.array([1e-3, 1e-2, 1.0])).astype(np.float32)
  mean, var = jax.jit(lambda x: batch_norm._statistics(x, None))(x)
  x64 = x.astype(np.float64)
  np.testing.assert_allclose(mean, x64.mean((0, 1, 2)), rtol=1e-7)
  np.testing.assert_allclose(var, x64.var((0, 1, 2)), rtol=1e-6)
  naive = np.mean(x * x, (0, 1, 2)) - np.mean(x, (0, 1, 2)) ** 2
  assert abs(naive[0] / x64[..., 0].var() - 1) > 0.5  # the case is hard for the unshifted formula


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('axis', [None, ('data', None), ('data', ((0, 1, 2, 3), (4, 5, 6, 7)))])
def test_batchnorm_backward_equals_autodiff_of_its_forward(axis, dtype):
  from jax.sharding import Mesh, PartitionSpec

  x = (jax.random.normal(jax.random.key(0), (16, 5, 5, 6)) * 3 + 2).astype(dtype)
  dy = jax.random.normal(jax.random.key(1), (16, 5, 5, 6)).astype(dtype)
  scale, bias = jnp.linspace(0.5, 1.5, 6), jnp.linspace(-1.0, 1.0, 6)

  def outputs(fn):
    def per_device(x, dy):
      y, vjp = jax.vjp(fn, x, scale, bias)
      dx, dscale, dbias = vjp(dy)
      return y, dx, dscale[None], dbias[None]  # parameter gradients stay per device

    if axis is None:
      return jax.jit(per_device)(x, dy)
    mesh = Mesh(np.array(jax.devices()[:8]), ('data',))
    spec = PartitionSpec('data')
    return jax.jit(
      jax.shard_map(per_device, mesh=mesh, in_specs=(spec, spec), out_specs=spec, check_vma=False)
    )(x, dy)

  ours = outputs(lambda x, s, b: batch_norm.train_batch_norm(x, s, b, 1e-5, x.dtype, axis)[0])
  autodiff = outputs(lambda x, s, b: _autodiff_batch_norm(x, s, b, axis))
  np.testing.assert_array_equal(ours[0], autodiff[0])  # the forward pass is the same expressions
  tolerance = dict(rtol=2e-5, atol=2e-6) if dtype == 'float32' else dict(rtol=1e-2, atol=1e-2)
  for name, a, b in zip(('dx', 'dscale', 'dbias'), ours[1:], autodiff[1:], strict=True):
    np.testing.assert_allclose(
      np.asarray(a, np.float32), np.asarray(b, np.float32), err_msg=name, **tolerance
    )


@pytest.mark.slow
def test_stage_features_are_the_classifiers_own_internals():
  """``features=`` returns the named stage outputs (a backbone's C2..C5): the shapes torchvision's
  stages have, the tensor the head pools (its logits recomputed from them), no deeper stage run."""
  model = registry.get_model('resnet50', num_classes=10)
  x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  logits = model.apply(variables, x, train=False)
  c = model.apply(variables, x, train=False, features=('layer4', 'stem', 'layer2', 'layer3'))
  assert list(c) == ['layer4', 'stem', 'layer2', 'layer3']  # as asked
  assert {k: v.shape for k, v in c.items()} == {
    'stem': (2, 16, 16, 64),
    'layer2': (2, 8, 8, 512),
    'layer3': (2, 4, 4, 1024),
    'layer4': (2, 2, 2, 2048),
  }
  fc = variables['params']['fc']
  head = jnp.mean(c['layer4'], axis=(1, 2)) @ fc['kernel'] + fc['bias']
  np.testing.assert_allclose(head, logits, rtol=1e-6, atol=1e-6)
  # Only as deep as asked: the stem and layer1 need no deeper variables.
  shallow = {
    collection: {k: v for k, v in tree.items() if k in ('conv1', 'bn1') or k.startswith('layer1')}
    for collection, tree in variables.items()
  }
  c1 = model.apply(shallow, x, train=False, features=('layer1',))['layer1']
  assert c1.shape == (2, 16, 16, 256)
  # Dilated stages keep their resolution (output stride 8), with the same variables' shapes.
  dilated = registry.get_model(
    'resnet50', num_classes=10, replace_stride_with_dilation=(False, True, True)
  )
  shapes = dilated.apply(variables, x, train=False, features=('layer3', 'layer4'))
  assert [v.shape for v in shapes.values()] == [(2, 8, 8, 1024), (2, 8, 8, 2048)]
  # The scanned layout gives the same features.
  scanned = registry.get_model('resnet50', num_classes=10, scan_blocks=True)
  stacked = block_layout.stack_blocks(variables)
  same = scanned.apply(stacked, x, train=False, features=('layer3',))['layer3']
  np.testing.assert_allclose(same, c['layer3'], rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='this net has stem, layer1, layer2, layer3, layer4'):
    model.apply(variables, x, train=False, features=('layer5',))


@pytest.mark.slow
def test_readme_python_examples_run_and_print_what_they_say(tmp_path):
  with open(os.path.join(REPO, 'README.md')) as f:
    blocks = re.findall(r'```python\n(.*?)```', f.read(), flags=re.S)
  assert blocks
  # The README's digits run, as the weights it leaves (a converted checkpoint reads the same):
  # this test must not depend on another having trained it.
  from resnet_jax.train import checkpoint

  _, variables = resnet_jax.create_model('cifar_resnet20', num_classes=10, image_size=16)
  checkpoint.save_variables(str(tmp_path / 'digits'), jax.device_get(variables))
  for block in blocks:
    block = block.replace("'/tmp/digits'", repr(str(tmp_path / 'digits')))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
      exec(compile(block, 'README.md', 'exec'), {})
  assert out.getvalue().strip() == (
    "{'layer2': (2, 16, 16, 512), 'layer3': (2, 8, 8, 1024), 'layer4': (2, 4, 4, 2048)}"
  )


@pytest.mark.slow  # converts every family net both ways
def test_to_torchvision_gives_torchvisions_state_dict_and_converts_back_exactly():
  """Every named net's variables (either layout) as torchvision's state_dict: the keys and shapes
  torch's own modules have (committed with the references), and back to the same variables."""
  references = np.load(os.path.join(REPO, 'tests', 'data', 'torchvision_references.npz'))
  names = [k.split('/')[0] for k in references.files if k.endswith('/keys')]
  assert len(names) == len(REFERENCE_NETS) + len(CONFIGURED_NETS) == 26
  for name in names:
    torch_shapes = {k: tuple(shape) for k, shape in json.loads(str(references[f'{name}/keys']))}
    model_name, options = CONFIGURED_NETS.get(name, (name, {}))
    shapes = torchvision_weights.expected_variables(model_name, num_classes=100, **options)
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    state_dict = torchvision_weights.to_torchvision(zeros)
    assert {k: np.shape(v) for k, v in state_dict.items()} == torch_shapes, name
  rng = np.random.default_rng(0)
  cases = [
    ('resnext50_32x4d', {}),
    ('resnet50', dict(scan_blocks=True)),
    ('resnet50d', {}),
    ('preact_resnet50', dict(scan_blocks=True)),
    ('resnet18', dict(norm='frozen_batch')),
    ('vgg11_bn', {}),
    ('alexnet', {}),
    ('googlenet', {}),
  ]
  for name, options in cases:
    shapes = torchvision_weights.expected_variables(name, num_classes=10, **options)
    variables = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)
    state_dict = torchvision_weights.to_torchvision(variables)
    back = torchvision_weights.from_torchvision(state_dict, name, **options)
    flat, flat_back = traverse_util.flatten_dict(variables), traverse_util.flatten_dict(back)
    assert flat.keys() == flat_back.keys()
    for key, value in flat.items():
      np.testing.assert_array_equal(flat_back[key], value, err_msg=str(key))
