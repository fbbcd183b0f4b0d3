"""A JAX inference function as an ONNX graph: its jaxpr translated equation by equation.

``to_onnx(fn, variables, image_shape)`` traces ``fn(variables, images)`` once and writes each
primitive as the ONNX operator(s) that compute it. Equations of the variables alone (a
BatchNorm's ``rsqrt(var + eps) * scale``, broadcasts of constants) are evaluated here and become
initializers, so the graph holds only what depends on the images. Convolutions and pools, NHWC in
JAX, become ONNX's NCHW operators between transposes (onnxruntime cancels the pairs between
layers); ``fold_batch_norm`` then merges each convolution's following per-channel affine into its
weights and bias, as inference exports of BatchNorm nets do.

The images' batch dimension is dynamic: the function is traced at batch 1, and reshapes keep
the input's leading dimension. Primitives outside the set below raise ``NotImplementedError``
naming the primitive. Platform-dependent code (``lax.platform_dependent``) exports its default
branch, the one every platform without its own lowering runs.
"""

from __future__ import annotations

import itertools

import jax
import numpy as np
import onnx
from jax.extend import core as jax_core
from onnx import helper, numpy_helper

OPSET = 18
# What onnxruntime's float32 logits may differ from JAX's by, relative to the largest logit: they
# sum in different orders (measured 0.2e-6 to 1.6e-6 over the family; tests/test_export.py).
LOGIT_TOLERANCE = 1e-5
_ELEMENTWISE = {
  'add': 'Add',
  'sub': 'Sub',
  'mul': 'Mul',
  'div': 'Div',
  'max': 'Max',
  'min': 'Min',
  'neg': 'Neg',
  'exp': 'Exp',
  'log': 'Log',
  'sqrt': 'Sqrt',
  'tanh': 'Tanh',
  'logistic': 'Sigmoid',
  'abs': 'Abs',
}
_REDUCTIONS = {'reduce_sum': 'ReduceSum', 'reduce_max': 'ReduceMax', 'reduce_min': 'ReduceMin'}
# Higher-order primitives: their body's jaxpr, exported in place.
_BODIES = {
  'jit': 'jaxpr',
  'pjit': 'jaxpr',
  'custom_jvp_call': 'call_jaxpr',
  'custom_vjp_call': 'call_jaxpr',
}
_NHWC_TO_NCHW, _NCHW_TO_NHWC = (0, 3, 1, 2), (0, 2, 3, 1)


class _Tensor:
  """A graph value: its ONNX name, and whether its leading axis is the images' batch."""

  def __init__(self, name: str, batched: bool):
    self.name, self.batched = name, batched


class _Platform:
  """The output of ``platform_index``: selects a ``cond``'s default branch."""


class _Builder:
  def __init__(self):
    self.nodes, self.initializers, self._names = [], [], itertools.count()
    self.scope = ''

  def fresh(self, hint: str) -> str:
    return f'{self.scope or "net"}/{hint}_{next(self._names)}'

  def constant(self, value, name: str | None = None) -> str:
    name = name or self.fresh('const')
    self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
    return name

  def node(self, op: str, inputs, batched: bool, **attributes) -> _Tensor:
    output = self.fresh(op)
    self.nodes.append(helper.make_node(op, list(inputs), [output], name=output, **attributes))
    return _Tensor(output, batched)


def _scope(name_stack) -> str:
  """'ResNet/ResNet._stage/layer1_0/layer1_0.forward/conv1' -> 'layer1_0/conv1'."""
  parts = [p for p in str(name_stack).split('/') if p and '.' not in p and not p[:1].isupper()]
  return '/'.join(parts)


class _Translator:
  def __init__(self, builder: _Builder, names: dict):
    self.b = builder
    self.names = names  # id of a variable's array -> its path, for readable initializer names
    self.named = {}
    self.outer_scope = ''  # the scope of the call whose body is being exported

  def read(self, env, atom):
    if isinstance(atom, jax_core.Literal):
      return np.asarray(atom.val, dtype=atom.aval.dtype)
    return env[atom]

  def as_input(self, value) -> str:
    """An ONNX input name for a value: constants become (named, shared) initializers."""
    if isinstance(value, _Tensor):
      return value.name
    key = id(value)
    if key not in self.named:
      self.named[key] = (self.b.constant(value, self.names.get(key)), value)
    return self.named[key][0]

  def run(self, jaxpr, consts, args):
    env = dict(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    for eqn in jaxpr.eqns:
      inputs = [self.read(env, v) for v in eqn.invars]
      outputs = self.equation(eqn, inputs)
      env.update(zip(eqn.outvars, outputs, strict=True))
    return [self.read(env, v) for v in jaxpr.outvars]

  def equation(self, eqn, inputs):
    name, params = eqn.primitive.name, eqn.params
    if name in _BODIES:
      return self.run_body(eqn, params[_BODIES[name]], inputs)
    if name == 'platform_index':
      return [_Platform()]
    if name == 'cond':
      if not isinstance(inputs[0], _Platform):
        raise NotImplementedError('cond on values (only lax.platform_dependent exports)')
      platforms = params['branches_platforms']
      branch = params['branches'][platforms.index(None) if None in platforms else -1]
      return self.run_body(eqn, branch, inputs[1:])
    if not any(isinstance(x, _Tensor) for x in inputs):  # the variables' own arithmetic
      outputs = eqn.primitive.bind(*inputs, **params)
      outputs = outputs if eqn.primitive.multiple_results else [outputs]
      return [np.asarray(x) for x in outputs]
    self.b.scope = self.scope_of(eqn)
    translate = getattr(self, f'_{name}', None)
    if name in _ELEMENTWISE:
      return [self.elementwise(_ELEMENTWISE[name], inputs)]
    if name in _REDUCTIONS:
      x, axes = inputs[0], params['axes']
      names = [x.name, self.as_input(np.asarray(axes, np.int64))]
      return [self.b.node(_REDUCTIONS[name], names, x.batched and 0 not in axes, keepdims=0)]
    if translate is None:
      raise NotImplementedError(f'ONNX export of the JAX primitive {name!r}')
    out = translate(inputs, params, eqn)
    return out if isinstance(out, list) else [out]

  def run_body(self, eqn, body, inputs):
    """A call's body in place; its equations' names start again, so they go under the call's."""
    outer, self.outer_scope = self.outer_scope, self.scope_of(eqn)
    try:
      return self.run(body.jaxpr, body.consts, inputs)
    finally:
      self.outer_scope = outer

  def scope_of(self, eqn) -> str:
    return '/'.join(p for p in (self.outer_scope, _scope(eqn.source_info.name_stack)) if p)

  def elementwise(self, op, inputs):
    batched = any(isinstance(x, _Tensor) and x.batched for x in inputs)
    return self.b.node(op, [self.as_input(x) for x in inputs], batched)

  # -- shape and layout ---------------------------------------------------------------------------

  def _reshape(self, inputs, params, eqn):
    x, shape = inputs[0], list(params['new_sizes'])
    if x.batched:
      shape[0] = 0  # ONNX: keep the input's (the batch) size
    return self.b.node('Reshape', [x.name, self.as_input(np.asarray(shape, np.int64))], x.batched)

  def _squeeze(self, inputs, params, eqn):
    return self._reshape(inputs, {'new_sizes': eqn.outvars[0].aval.shape}, eqn)

  def _broadcast_in_dim(self, inputs, params, eqn):
    x, dims, shape = inputs[0], params['broadcast_dimensions'], params['shape']
    aligned = [1] * len(shape)
    for axis, dim in zip(dims, eqn.invars[0].aval.shape, strict=True):
      aligned[axis] = dim
    if x.batched and dims and dims[0] == 0:
      aligned[0] = 0
    x = self.b.node('Reshape', [x.name, self.as_input(np.asarray(aligned, np.int64))], x.batched)
    target = [1 if i == 0 and x.batched else s for i, s in enumerate(shape)]  # keeps the batch
    return self.b.node('Expand', [x.name, self.as_input(np.asarray(target, np.int64))], x.batched)

  def _transpose(self, inputs, params, eqn):
    perm = [int(p) for p in params['permutation']]
    return self.b.node('Transpose', [inputs[0].name], inputs[0].batched and perm[0] == 0, perm=perm)

  def _convert_element_type(self, inputs, params, eqn):
    to = helper.np_dtype_to_tensor_dtype(np.dtype(params['new_dtype']))
    return self.b.node('Cast', [inputs[0].name], inputs[0].batched, to=to)

  def _copy(self, inputs, params, eqn):
    return self.b.node('Identity', [inputs[0].name], inputs[0].batched)

  _copy_p = _copy

  def _slice(self, inputs, params, eqn):
    x, start, limit = inputs[0], params['start_indices'], params['limit_indices']
    strides = params['strides'] or (1,) * len(start)
    if x.batched and (start[0], limit[0], strides[0]) != (0, 1, 1):
      raise NotImplementedError('a slice of the batch axis')
    axes = [i for i in range(len(start)) if i > 0 or not x.batched]  # the batch stays whole
    starts, ends, steps = ([int(v[i]) for i in axes] for v in (start, limit, strides))
    arrays = [np.asarray(v, np.int64) for v in (starts, ends, axes, steps)]
    return self.b.node('Slice', [x.name, *map(self.as_input, arrays)], x.batched)

  def _pad(self, inputs, params, eqn):
    x, value = inputs
    config = params['padding_config']
    if any(interior for _, _, interior in config):
      raise NotImplementedError('interior padding')
    pads = np.asarray([lo for lo, _, _ in config] + [hi for _, hi, _ in config], np.int64)
    return self.b.node('Pad', [x.name, self.as_input(pads), self.as_input(value)], x.batched)

  def _concatenate(self, inputs, params, eqn):
    batched = any(isinstance(x, _Tensor) and x.batched for x in inputs)
    names = [self.as_input(x) for x in inputs]
    return self.b.node('Concat', names, batched, axis=int(params['dimension']))

  # -- arithmetic ---------------------------------------------------------------------------------

  def _rsqrt(self, inputs, params, eqn):
    root = self.b.node('Sqrt', [inputs[0].name], inputs[0].batched)
    return self.b.node('Reciprocal', [root.name], root.batched)

  def _square(self, inputs, params, eqn):
    return self.b.node('Mul', [inputs[0].name, inputs[0].name], inputs[0].batched)

  def _integer_pow(self, inputs, params, eqn):
    if params['y'] != 2:
      raise NotImplementedError(f'integer_pow y={params["y"]}')
    return self._square(inputs, params, eqn)

  def _dot_general(self, inputs, params, eqn):
    (contract_l, contract_r), (batch_l, batch_r) = params['dimension_numbers']
    lhs, rhs = inputs
    l_rank, r_rank = (len(v.aval.shape) for v in eqn.invars)
    batched = isinstance(lhs, _Tensor) and lhs.batched
    numbers = (tuple(contract_l), tuple(contract_r), tuple(batch_l), tuple(batch_r))
    if numbers == ((l_rank - 1,), (0,), (), ()) and r_rank == 2:  # a linear layer, last axis
      return self.b.node('MatMul', [self.as_input(lhs), self.as_input(rhs)], batched)
    letters = iter('abcdefghijklmnopqrstuvwxyz')
    left = [next(letters) for _ in range(l_rank)]
    right = [next(letters) for _ in range(r_rank)]
    for l_axis, r_axis in zip((*contract_l, *batch_l), (*contract_r, *batch_r), strict=True):
      right[r_axis] = left[l_axis]
    kept_l = [left[i] for i in range(l_rank) if i not in contract_l and i not in batch_l]
    kept_r = [right[i] for i in range(r_rank) if i not in contract_r and i not in batch_r]
    out = [left[i] for i in batch_l] + kept_l + kept_r
    equation = f'{"".join(left)},{"".join(right)}->{"".join(out)}'
    return self.b.node(
      'Einsum', [self.as_input(lhs), self.as_input(rhs)], batched, equation=equation
    )

  # -- convolutions and pools (ONNX's are NCHW) ----------------------------------------------------

  def _nchw(self, x: _Tensor) -> str:
    return self.b.node('Transpose', [x.name], x.batched, perm=list(_NHWC_TO_NCHW)).name

  def _nhwc(self, name: str, batched: bool) -> _Tensor:
    return self.b.node('Transpose', [name], batched, perm=list(_NCHW_TO_NHWC))

  def _conv_general_dilated(self, inputs, params, eqn):
    x, kernel = inputs
    numbers = params['dimension_numbers']
    if tuple(numbers.lhs_spec) != _NHWC_TO_NCHW or tuple(numbers.out_spec) != _NHWC_TO_NCHW:
      raise NotImplementedError(f'convolution layout {numbers}')
    if any(d != 1 for d in params['lhs_dilation']) or params['batch_group_count'] != 1:
      raise NotImplementedError('transposed or batch-grouped convolution')
    if isinstance(kernel, np.ndarray):  # OIHW from the kernel's own layout
      weights = self.as_input(np.ascontiguousarray(kernel.transpose(numbers.rhs_spec)))
    else:
      weights = self.b.node('Transpose', [kernel.name], False, perm=list(numbers.rhs_spec)).name
    padding = params['padding']
    y = self.b.node(
      'Conv',
      [self._nchw(x), weights],
      True,
      strides=list(params['window_strides']),
      pads=[lo for lo, _ in padding] + [hi for _, hi in padding],
      dilations=list(params['rhs_dilation']),
      group=int(params['feature_group_count']),
    )
    return self._nhwc(y.name, x.batched)

  def _window(self, params, eqn):
    window, strides = params['window_dimensions'], params['window_strides']
    padding = params['padding']
    if len(window) != 4 or window[0] != 1 or window[3] != 1 or strides[0] != 1 or strides[3] != 1:
      raise NotImplementedError(f'pooling window {window} (NHWC, spatial only)')
    if any(d != 1 for d in (*params['base_dilation'], *params['window_dilation'])):
      raise NotImplementedError('dilated pooling')
    return dict(
      kernel_shape=list(window[1:3]),
      strides=list(strides[1:3]),
      pads=[padding[1][0], padding[2][0], padding[1][1], padding[2][1]],
    )

  def _reduce_window_max(self, inputs, params, eqn):
    x = inputs[0]
    y = self.b.node('MaxPool', [self._nchw(x)], x.batched, **self._window(params, eqn))
    return self._nhwc(y.name, x.batched)

  def _reduce_window_sum(self, inputs, params, eqn):
    """Window sums as a depthwise convolution with a kernel of ones (zero padding)."""
    x, window = inputs[0], self._window(params, eqn)
    channels = eqn.invars[0].aval.shape[3]
    ones = np.ones((channels, 1, *window['kernel_shape']), np.dtype(eqn.invars[0].aval.dtype))
    y = self.b.node(
      'Conv', [self._nchw(x), self.as_input(ones)], x.batched, group=channels, **window
    )
    return self._nhwc(y.name, x.batched)


def to_onnx(
  fn, variables, image_shape, *, input_name='images', output_name='logits'
) -> onnx.ModelProto:
  """``fn(variables, images)`` as an ONNX model whose input is ``images`` (NHWC float32 of
  ``image_shape`` = (height, width, channels), any batch) and whose output is ``fn``'s."""
  flat, _ = jax.tree_util.tree_flatten_with_path(variables)
  arrays = [np.asarray(jax.device_get(v)) for _, v in flat]
  names = {
    id(a): '/'.join(str(getattr(k, 'key', k)) for k in path)
    for (path, _), a in zip(flat, arrays, strict=True)
  }
  example = jax.ShapeDtypeStruct((1, *image_shape), np.float32)
  closed = jax.make_jaxpr(
    lambda leaves, x: fn(jax.tree.unflatten(jax.tree.structure(variables), leaves), x)
  )(arrays, example)
  builder = _Builder()
  translator = _Translator(builder, names)
  images = _Tensor(input_name, True)
  (result,) = translator.run(closed.jaxpr, closed.consts, [*arrays, images])
  if not isinstance(result, _Tensor):
    raise ValueError('the output does not depend on the images')
  builder.nodes.append(helper.make_node('Identity', [result.name], [output_name], name=output_name))
  out_aval = closed.jaxpr.outvars[0].aval
  graph = helper.make_graph(
    builder.nodes,
    'resnet_jax',
    [helper.make_tensor_value_info(input_name, onnx.TensorProto.FLOAT, ['batch', *image_shape])],
    [
      helper.make_tensor_value_info(
        output_name,
        helper.np_dtype_to_tensor_dtype(np.dtype(out_aval.dtype)),
        ['batch', *out_aval.shape[1:]],
      )
    ],
    builder.initializers,
  )
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', OPSET)])
  model.producer_name = 'resnet_jax'
  onnx.checker.check_model(model)
  return model


def fold_batch_norm(model: onnx.ModelProto) -> onnx.ModelProto:
  """Merges each Conv's per-channel affine (BatchNorm in inference: subtract, multiply, add by
  constants over the channel axis, after the Conv's NCHW->NHWC transpose) into the Conv's weights
  and bias, where the Conv's output feeds nothing else. Returns a new model."""
  model = onnx.ModelProto.FromString(model.SerializeToString())
  graph = model.graph
  constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
  consumers = {}
  for node in graph.node:
    for name in node.input:
      consumers.setdefault(name, []).append(node)
  removed, new_initializers = set(), {}
  for conv in [n for n in graph.node if n.op_type == 'Conv']:
    if conv.input[1] not in constants or len(consumers.get(conv.output[0], [])) != 1:
      continue
    transpose = consumers[conv.output[0]][0]
    if transpose.op_type != 'Transpose' or list(transpose.attribute[0].ints) != list(_NCHW_TO_NHWC):
      continue
    weights = constants[conv.input[1]].astype(np.float64)
    channels = weights.shape[0]
    bias = (
      constants[conv.input[2]].astype(np.float64) if len(conv.input) > 2 else np.zeros(channels)
    )
    scale, shift = np.ones(channels), np.zeros(channels)
    tail, followers = transpose, []
    while len(consumers.get(tail.output[0], [])) == 1:
      node = consumers[tail.output[0]][0]
      operands = [i for i in node.input if i != tail.output[0]]
      if (
        node.op_type not in ('Add', 'Sub', 'Mul')
        or len(operands) != 1
        or operands[0] not in constants
      ):
        break
      value = constants[operands[0]]
      if value.size != channels or value.shape[-1] != channels or node.input[0] != tail.output[0]:
        break
      value = value.reshape(channels).astype(np.float64)
      if node.op_type == 'Mul':
        scale, shift = scale * value, shift * value
      else:
        shift = shift + value if node.op_type == 'Add' else shift - value
      followers.append(node)
      tail = node
    if not followers:
      continue
    folded_weights = (weights * scale.reshape(-1, 1, 1, 1)).astype(np.float32)
    folded_bias = (bias * scale + shift).astype(np.float32)
    w_name, b_name = f'{conv.name}/folded_weight', f'{conv.name}/folded_bias'
    new_initializers[w_name], new_initializers[b_name] = folded_weights, folded_bias
    del conv.input[1:]
    conv.input.extend([w_name, b_name])
    transpose.output[0] = tail.output[0]  # the affine's consumers now read the transpose
    removed.update(id(n) for n in followers)
  kept = [n for n in graph.node if id(n) not in removed]
  del graph.node[:]
  graph.node.extend(kept)
  graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in new_initializers.items())
  used = {name for node in graph.node for name in node.input}
  unused = [t for t in graph.initializer if t.name not in used]
  for t in unused:
    graph.initializer.remove(t)
  onnx.checker.check_model(model)
  return model
