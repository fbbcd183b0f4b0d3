"""ONNX export: onnxruntime's logits equal JAX's for every kind of net in the family, with and
without BatchNorm folded, at any batch size; and the command on a trained run."""

import collections

import jax
import numpy as np
import pytest

from resnet_jax.models import registry

onnx = pytest.importorskip('onnx')
onnxruntime = pytest.importorskip('onnxruntime')
from resnet_jax import onnx_graph, onnx_layout  # noqa: E402  (import onnx)

# One of each kind, at the smallest size its pools allow, with random BN statistics; how many
# convolutions take the affine that follows them into their weights and bias; and the readable
# graph's operators (NHWC input: its one transpose). torch.onnx.export gives resnet18 49 nodes.
SLOW = pytest.mark.slow
RESNET18 = dict(Conv=20, Relu=17, MaxPool=1, Add=8, GlobalAveragePool=1, Flatten=1, Gemm=1)
FAMILY = [
  pytest.param(  # option A: slices and zeros, as torch's CIFAR ResNets (akamaster's) write them
    *('cifar_resnet20', {}, 32, 19),
    dict(Conv=19, Relu=19, Add=9, Slice=2, Pad=2, GlobalAveragePool=1, Flatten=1, Gemm=1),
    id='cifar_resnet20',
  ),
  pytest.param('resnet18', {}, 32, 20, RESNET18, id='resnet18'),
  pytest.param(  # stem, each first conv; the other norms are BatchNormalization nodes
    *('preact_resnet18', {}, 32, 9),
    dict(RESNET18, BatchNormalization=8),
    id='preact_resnet18',
    marks=SLOW,
  ),
  pytest.param(  # no norms: the convs' own bias additions. At 63 px the adaptive pool to 6x6
    *('alexnet', {}, 63, 5),  # averages 1-pixel windows: slices, sums, divisions, two concats
    dict(Conv=5, Relu=7, MaxPool=3, Slice=12, ReduceSum=12, Div=12, Concat=2, Reshape=1, Gemm=3),
    id='alexnet',
    marks=SLOW,
  ),
  # Inception branches concatenated; ceil-mode pools; the auxiliary classifiers never in eval.
  pytest.param(
    *('googlenet', {}, 32, 57),
    dict(Conv=57, Relu=57, MaxPool=13, Concat=9, GlobalAveragePool=1, Flatten=1, Gemm=1),
    id='googlenet',
    marks=SLOW,
  ),
  pytest.param(  # deep stem, the shortcuts' average pools (count_include_pad=False, ceil mode)
    *('resnet50d', {}, 32, 55),
    dict(
      Conv=55, Relu=51, MaxPool=1, Add=16, AveragePool=3, GlobalAveragePool=1, Flatten=1, Gemm=1
    ),
    id='resnet50d',
    marks=SLOW,
  ),
  pytest.param(  # grouped convs; GroupNorm normalises per example: nothing to fold; its groups
    *('resnext50_32x4d', dict(norm='group'), 32, 0),  # (N, G, C/G, H, W) on NCHW
    dict(Conv=53, Relu=49, MaxPool=1, GlobalAveragePool=1, Flatten=1, Gemm=1, Reshape=106),
    id='resnext50_groupnorm',
    marks=SLOW,
  ),
  pytest.param(
    *('resnet50', dict(replace_stride_with_dilation=(False, True, True), norm='frozen_batch')),
    *(32, 53),
    dict(Conv=53, Relu=49, MaxPool=1, Add=16, GlobalAveragePool=1, Flatten=1, Gemm=1),
    id='resnet50_dilated_frozen',
    marks=SLOW,
  ),
  pytest.param(  # 133 M parameters; the flatten's dense rows permuted to NCHW's order
    *('vgg11_bn', {}, 32, 8),
    dict(Conv=8, Relu=10, MaxPool=5, Slice=14, ReduceSum=14, Div=14, Concat=2, Reshape=1, Gemm=3),
    id='vgg11_bn',
    marks=SLOW,
  ),
  pytest.param(  # SE: global pool, 1x1 convs (their bias additions folded too), sigmoid gate
    *('seresnet18', {}, 32, 36),
    dict(RESNET18, Conv=36, Relu=25, GlobalAveragePool=9, Sigmoid=8, Mul=8),
    id='seresnet18',
    marks=SLOW,
  ),
  pytest.param(  # ECA's 1-D conv over the pooled channels: reshapes around it
    *('ecaresnet50d', {}, 32, 55),
    dict(Conv=71, Relu=51, MaxPool=1, Add=16, AveragePool=3, GlobalAveragePool=17, Sigmoid=16),
    id='ecaresnet50d',
    marks=SLOW,
  ),
  # Weight-standardised kernels (computed from the variables: constants), GroupNorm, bare root.
  pytest.param(
    *('bit_r50x1', {}, 32, 0),
    dict(Conv=53, Relu=49, MaxPool=1, GlobalAveragePool=1, Flatten=1, Gemm=1),
    id='bit_r50x1',
    marks=SLOW,
  ),
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


@pytest.mark.parametrize('name, options, size, folds, operators', FAMILY)
def test_onnxruntime_logits_equal_jaxs_and_the_graph_reads_like_the_net(
  name, options, size, folds, operators
):
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
  readable = onnx_layout.readable(folded)
  counts = collections.Counter(n.op_type for n in readable.graph.node)
  assert counts['Transpose'] == 1  # the NHWC input's, nothing between layers
  assert readable.graph.node[0].op_type == 'Transpose'
  assert 'Max' not in counts and 'MatMul' not in counts  # Relu; Gemm
  assert {op: counts[op] for op in operators} == operators
  for version in (graph, folded, readable, onnx_layout.readable(graph)):
    session = onnxruntime.InferenceSession(
      version.SerializeToString(), providers=['CPUExecutionProvider']
    )
    for batch in (3, 1):  # the batch axis is dynamic
      got = session.run(None, {'images': images[:batch]})[0]
      assert got.shape == (batch, 10)
      error = np.abs(got - want[:batch]).max()
      assert error <= onnx_graph.LOGIT_TOLERANCE * np.abs(want).max()


@pytest.mark.slow
def test_resnet18_reads_as_torchs_export_of_it():
  """NCHW input: the 49 nodes torch.onnx.export writes for torchvision's resnet18, named after
  its modules; unfolded, each BatchNorm one BatchNormalization node."""
  model = registry.get_model('resnet18', num_classes=10, cpu_convolution='xla', cpu_kernels='xla')
  variables = random_variables(model, 32)

  def forward(variables, images):  # the export command's NCHW input
    return model.apply(variables, jax.numpy.transpose(images, (0, 2, 3, 1)), train=False)

  graph = onnx_graph.to_onnx(forward, variables, (3, 32, 32))
  folded = onnx_layout.readable(onnx_graph.fold_batch_norm(graph))
  assert collections.Counter(n.op_type for n in folded.graph.node) == RESNET18
  assert len(folded.graph.node) == 49
  convs = [n.name for n in folded.graph.node if n.op_type == 'Conv']
  assert convs[:4] == ['conv1', 'layer1.0.conv1', 'layer1.0.conv2', 'layer1.1.conv1']
  assert 'layer2.0.downsample.0' in convs
  assert [n.name for n in folded.graph.node if n.op_type == 'Gemm'] == ['fc']
  unfolded = collections.Counter(n.op_type for n in onnx_layout.readable(graph).graph.node)
  assert unfolded == dict(RESNET18, BatchNormalization=20)
