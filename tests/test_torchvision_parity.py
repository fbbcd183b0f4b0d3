"""Our models fed torchvision's weights give torchvision's outputs (eval and train mode).

Two ways: against the references committed in tests/data (written by tests/torch_references.py
with torch; these tests need no torch), and live against torch where it is installed (CI).
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from helpers import CONFIGURED_NETS, REFERENCE_NETS, random_torchvision_weights, statistics_keys

from resnet_jax.models import block_layout, registry, torchvision_weights

REFERENCES = os.path.join(os.path.dirname(__file__), 'data', 'torchvision_references.npz')
MODELS = (*REFERENCE_NETS, *CONFIGURED_NETS)
DEEP = ('cifar_preact_resnet164',)  # 54 blocks: checked with its stages scanned (one compile)
NETS_WITHOUT_STATISTICS = ('resnet50_groupnorm', 'vgg11', 'alexnet')


def images_nchw() -> np.ndarray:
  return np.random.RandomState(1).randn(2, 3, 64, 64).astype(np.float32)  # as torch_references


def our_outputs(name, state_dict, x_nchw, scan_blocks=False):
  """Eval logits, train-mode logits and the BN statistics (``statistics_keys``, by torch key)
  after that train-mode forward."""
  name, options = CONFIGURED_NETS.get(name, (name, {}))
  options = dict(options, scan_blocks=scan_blocks)
  variables = torchvision_weights.from_torchvision(state_dict, name, **options)
  model = registry.get_model(name, num_classes=100, **options)
  x = jnp.asarray(x_nchw.transpose(0, 2, 3, 1))
  eval_logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  train_logits, updates = jax.jit(
    lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])
  )(variables, x)
  stats = traverse_util.flatten_dict(block_layout.unstack_blocks(updates))
  keys = statistics_keys([(k, np.shape(v)) for k, v in state_dict.items()])
  return eval_logits, train_logits, {k: stats[torchvision_weights.flax_key(k)] for k in keys}


def assert_matches(ours, eval_ref, train_ref64, torch_train_error, stats_ref):
  eval_logits, train_logits, stats = ours
  assert np.abs(eval_logits - eval_ref).max() <= 1e-4 * np.abs(eval_ref).max()
  # Train mode normalises with batch statistics, which deep nets amplify: on this batch float32
  # torch itself strays from float64 torch by up to 2e-3 (ResNet-152). So the train-mode reference
  # is torch in float64, and we must be as close to it as torch's own float32 forward is (the
  # farther of its NCHW and channels-last forwards: torch_resnet.float32_train_error).
  scale = np.abs(train_ref64).max()
  assert np.abs(train_logits - train_ref64).max() <= max(1.5 * torch_train_error, 1e-4 * scale)
  for key, value in stats.items():  # momentum 0.1, unbiased variance, as torch
    np.testing.assert_allclose(value, stats_ref[key], rtol=1e-4, atol=1e-5)


# The fast lane (-m 'not slow') checks the smallest net of each kind; the others' full-size forward
# passes take 4-23 s each on a 2-core CPU: the full run only.
FAST_LANE = (
  'resnet18',
  'resnet18d',
  'seresnet18',
  'preact_resnet18',
  'alexnet',
  'cifar_preact_resnet20',
)


def case(name: str, scan_blocks: bool):
  if name in FAST_LANE:
    return name, scan_blocks
  return pytest.param(name, scan_blocks, marks=pytest.mark.slow)


@pytest.mark.parametrize(
  'name, scan_blocks',
  [
    *(case(name, False) for name in MODELS if name not in DEEP),
    *(case(name, True) for name in DEEP),
    *(case('resnet50', True), case('resnet152', True), case('resnext50_32x4d', True)),
    *(case('resnet50_dilated', True), case('resnet50d', True), case('preact_resnet50', True)),
    *(case('seresnet50', True), case('ecaresnet50d', True)),
  ],
)
def test_logits_and_bn_statistics_match_committed_torchvision_references(name, scan_blocks):
  refs = np.load(REFERENCES)
  keys = json.loads(str(refs[f'{name}/keys']))
  assert len(keys) == {'resnet18': 122, 'resnet34': 218, 'resnet50': 320}.get(name, len(keys))
  weights = random_torchvision_weights(keys, seed=0)
  ours = our_outputs(name, weights, images_nchw(), scan_blocks)
  assert len(ours[2]) == (0 if name in NETS_WITHOUT_STATISTICS else 2)
  assert_matches(
    ours,
    refs[f'{name}/eval_logits'],
    refs[f'{name}/train_logits_float64'],
    float(refs[f'{name}/torch_float32_train_error']),
    {k: refs[f'{name}/{k}'] for k in ours[2]},
  )


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize(
  'name',
  [
    *('resnet18', 'resnet50', 'resnext50_32x4d', 'resnet50d', 'preact_resnet18'),
    *('resnet50_groupnorm', 'vgg16_bn', 'alexnet', 'googlenet'),
    *('seresnet18', 'ecaresnet50d'),
  ],
)
def test_logits_and_bn_statistics_match_live_torch(name):
  torch = pytest.importorskip('torch')
  torch_resnet = pytest.importorskip('torch_resnet')
  builder, kwargs = CONFIGURED_NETS.get(name, (name, {}))
  net = torch_resnet.build(builder, 100, **kwargs)
  keys = [(k, list(v.shape)) for k, v in net.state_dict().items()]
  weights = random_torchvision_weights(keys, seed=3)  # other weights than the committed ones
  net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
  x = torch.from_numpy(images_nchw())
  with torch.no_grad():
    eval_ref = net.eval()(x).numpy()
    net.train()(x)  # updates the running statistics
    stats = {k: net.state_dict()[k].numpy().copy() for k in statistics_keys(keys)}
    net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    train64 = net.double()(x.double()).numpy()
  torch_error = torch_resnet.float32_train_error(net, weights, x, train64)
  assert_matches(our_outputs(name, weights, images_nchw()), eval_ref, train64, torch_error, stats)
