"""ONNX export: onnxruntime's logits equal JAX's for every kind of net in the family, with and
without BatchNorm folded, at any batch size; and the command on a trained run."""

import jax
import numpy as np
import pytest

from resnet_jax.models import registry

onnx = pytest.importorskip('onnx')
onnxruntime = pytest.importorskip('onnxruntime')
from resnet_jax import onnx_graph  # noqa: E402  (imports onnx)

# One of each kind, at the smallest size its pools allow, with random BN statistics; and how many
# convolutions take the affine that follows them into their weights and bias.
SLOW = pytest.mark.slow
FAMILY = [
  pytest.param('cifar_resnet20', {}, 32, 19, id='cifar_resnet20'),  # option A: slices, zeros
  pytest.param('resnet18', {}, 32, 20, id='resnet18'),
  pytest.param('preact_resnet18', {}, 32, 9, id='preact_resnet18'),  # stem, each first conv
  pytest.param('alexnet', {}, 63, 5, id='alexnet'),  # no norms: the convs' own bias additions
  # Inception branches concatenated; ceil-mode pools; the auxiliary classifiers never in eval.
  pytest.param('googlenet', {}, 32, 57, id='googlenet'),
  pytest.param('resnet50d', {}, 32, 55, id='resnet50d', marks=SLOW),  # deep stem, avg-pool paths
  pytest.param(
    *('resnext50_32x4d', dict(norm='group'), 32, 0), id='resnext50_groupnorm', marks=SLOW
  ),  # grouped convs; GroupNorm normalises per example: nothing to fold
  pytest.param(
    *('resnet50', dict(replace_stride_with_dilation=(False, True, True), norm='frozen_batch')),
    *(32, 53),
    id='resnet50_dilated_frozen',
    marks=SLOW,
  ),
  pytest.param('vgg11_bn', {}, 32, 8, id='vgg11_bn', marks=SLOW),  # 133 M parameters
  # SE: mean, 1x1 convs (their bias additions folded too), sigmoid gate.
  pytest.param('seresnet18', {}, 32, 36, id='seresnet18'),
  pytest.param('ecaresnet50d', {}, 32, 55, id='ecaresnet50d', marks=SLOW),  # ECA's 1-D conv
  # Weight-standardised kernels (computed from the variables: constants), GroupNorm, bare root.
  pytest.param('bit_r50x1', {}, 32, 0, id='bit_r50x1', marks=SLOW),
]


def random_variables(model, size):
  """He-scaled kernels, norms' scales, biases and statistics away from 1 and 0 (without compiling
  the net's initialiser)."""
  images = np.zeros((1, size, size, 3), np.float32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))
  rng = np.random.default_rng(0)

  def draw(path, shape):
    if path[-1].key == 'kernel':
      fan_in = np.prod(shape.shape[:-1])
      return (rng.standard_normal(shape.shape) * np.sqrt(2 / fan_in)).astype(np.float32)
    return rng.uniform(0.5, 1.5, shape.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.mark.parametrize('name, options, size, folds', FAMILY)
def test_onnxruntime_logits_equal_jaxs(name, options, size, folds):
  model = registry.get_model(
    name, num_classes=10, cpu_convolution='xla', cpu_kernels='xla', **options
  )
  variables = random_variables(model, size)

  def forward(variables, images):
    return model.apply(variables, images, train=False)

  images = np.random.default_rng(1).standard_normal((3, size, size, 3)).astype(np.float32)
  want = np.asarray(jax.jit(forward)(variables, images))
  graph = onnx_graph.to_onnx(forward, variables, (size, size, 3))
  folded = onnx_graph.fold_batch_norm(graph)
  biased = [n for n in folded.graph.node if n.op_type == 'Conv' and len(n.input) == 3]
  bias_before = sum(1 for n in graph.graph.node if n.op_type == 'Conv' and len(n.input) == 3)
  assert len(biased) - bias_before == folds  # each BatchNorm after a conv merged into it
  for version in (graph, folded):
    session = onnxruntime.InferenceSession(
      version.SerializeToString(), providers=['CPUExecutionProvider']
    )
    for batch in (3, 1):  # the batch axis is dynamic
      got = session.run(None, {'images': images[:batch]})[0]
      assert got.shape == (batch, 10)
      error = np.abs(got - want[:batch]).max()
      assert error <= onnx_graph.LOGIT_TOLERANCE * np.abs(want).max()
