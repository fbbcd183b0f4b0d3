"""An exported graph made to read like the net: NCHW from input to logits, ONNX's own operators,
nodes named after the layers.

``onnx_graph.to_onnx`` translates the NHWC jaxpr equation by equation, so each convolution and
pool sits between two transposes, ReLU is ``Max`` with zero, a global average pool is
``ReduceSum`` and ``Div``, a classifier ``MatMul`` and ``Add``. ``readable`` rewrites that graph
without changing what it computes:

1. The layout pass: every image tensor the graph computes in NHWC is held in NCHW instead
   (GroupNorm's (N, H, W, G, C/G) groups as (N, G, C/G, H, W)). A transpose into or out of that
   order becomes the tensor itself; elementwise operations take their per-channel constants
   permuted as the graph's broadcasting read them; pads, slices, reductions, expands and
   concatenation take their axes mapped; a reshape is written on the held value where it reads
   the same there (checked on an index array). Only where an operation needs the NHWC order
   itself is a transpose written back, and a flatten into a dense layer takes the layer's rows
   permuted instead. What remains is the input's transpose for an NHWC input; transposes that
   move only axes of size 1 (ECA's) become reshapes, and reshapes that end where they began go.
2. Operators: ``Max(x, 0)`` -> ``Relu``; a spatial mean -> ``GlobalAveragePool`` (with
   ``Flatten`` where the axes are dropped); a window sum over a window's pixel count ->
   ``AveragePool``; ``MatMul`` + bias ``Add`` -> ``Gemm``; the per-channel affine of an unfolded
   BatchNorm -> ``BatchNormalization``.
3. Names: each node after the layer it computes, in torch's dotted form (``layer1.0.conv1``).
"""

from __future__ import annotations

import collections

import numpy as np
import onnx
from onnx import helper, numpy_helper

NCHW, TO_NHWC = (0, 3, 1, 2), (0, 2, 3, 1)  # NCHW[k] = NHWC axis; TO_NHWC = its inverse
_ELEMENTWISE = frozenset(
  {'Add', 'Sub', 'Mul', 'Div', 'Max', 'Min', 'Neg', 'Exp', 'Log', 'Sqrt', 'Tanh', 'Sigmoid',
   'Abs', 'Relu', 'Reciprocal', 'Identity', 'Cast'}
)  # fmt: skip


def readable(model: onnx.ModelProto) -> onnx.ModelProto:
  """``model`` in NCHW throughout with ONNX's own operators and layer names (module docstring)."""
  model = onnx.ModelProto.FromString(model.SerializeToString())
  _Layout(model.graph).run()
  _unit_transposes_as_reshapes(model.graph, _shapes(model))
  _drop_shape_no_ops(model.graph, _shapes(model))
  _prune(model.graph)
  shapes = _shapes(model)
  _fuse_relu(model.graph)
  _fuse_global_average_pool(model.graph, shapes)
  _fuse_average_pool(model.graph)
  _fuse_gemm(model.graph)
  _fuse_batch_norm(model.graph, shapes)
  _drop_shape_no_ops(model.graph, _shapes(model))
  _drop_output_identities(model.graph)
  _prune(model.graph)
  _name_after_layers(model.graph)
  onnx.checker.check_model(model)
  return model


class _Layout:
  """The layout pass (module docstring, 1). ``held`` maps a tensor of the NHWC graph to the value
  computed instead and its axis order, ``perm`` (that value is the tensor transposed by
  ``perm``): NCHW for images, (N, G, C/G, H, W) for GroupNorm's (N, H, W, G, C/G) groups."""

  def __init__(self, graph):
    self.graph = graph
    self.constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    self.count = 0  # of the constants written here
    self.held: dict[str, tuple[str, tuple]] = {}
    self.alias: dict[str, str] = {}  # a tensor now computed as another one
    self.undone: dict[str, str] = {}  # a transpose back to NHWC, written once per tensor
    self.dims = _shapes(helper.make_model(graph))
    self.rank = {name: len(dims) for name, dims in self.dims.items()}
    self.users = collections.defaultdict(list)
    for node in graph.node:
      for name in node.input:
        self.users[name].append(node)
    for output in graph.output:
      self.users[output.name].append(None)  # the graph's own output
    self.skip: set[str] = set()  # outputs of nodes another rewrite has taken in

  def run(self):
    nodes = list(self.graph.node)
    del self.graph.node[:]
    for node in nodes:
      if node.output[0] in self.skip:  # done with the node before it
        continue
      for i, name in enumerate(node.input):
        node.input[i] = self.alias.get(name, name)
      self.rewrite(node)
    for output in self.graph.output:  # the logits: in the graph's own order again if held
      name = self.alias.get(output.name, output.name)
      if name in self.held:
        name = self.undo(name)
      if name != output.name:
        self.graph.node.append(helper.make_node('Identity', [name], [output.name]))

  def emit(self, node):
    self.graph.node.append(node)

  def constant(self, value, hint: str) -> str:
    self.count += 1
    name = f'{hint}/layout_{self.count}'
    self.constants[name] = value = np.asarray(value)
    self.graph.initializer.append(numpy_helper.from_array(value, name))
    return name

  def transpose(self, name: str, perm, hint: str) -> str:
    out = f'{name}/{hint}'
    self.emit(helper.make_node('Transpose', [name], [out], name=f'{_scope(name)}/T', perm=perm))
    return out

  def undo(self, name: str) -> str:
    """The tensor in the graph's own order (a transpose of the held value, written once)."""
    if name not in self.undone:
      value, perm = self.held[name]
      self.undone[name] = self.transpose(value, _inverse(perm), 'nhwc')
    return self.undone[name]

  def plain(self, node):
    """``node`` as it was, its inputs read in the graph's own order."""
    for i, name in enumerate(node.input):
      if name in self.held:
        node.input[i] = self.undo(name)
    self.emit(node)

  def hold(self, node, perm, value: str | None = None):
    """``node``'s output is held in ``perm``'s order, computed by ``node`` (or is ``value``)."""
    out = node.output[0]
    if value is None:
      node.output[0] = f'{out}/nchw'
      self.emit(node)
    self.held[out] = (value or node.output[0], tuple(perm))

  def rewrite(self, node):
    op, inputs = node.op_type, list(node.input)
    held = [name for name in inputs if name in self.held]
    if op == 'Transpose':
      self.rewrite_transpose(node)
    elif op == 'Reshape' and inputs[1] in self.constants:
      if not self.reshape(node):
        self.plain(node)
    elif not held:
      self.emit(node)
    elif op in _ELEMENTWISE:
      self.elementwise(node)
    elif op in ('ReduceSum', 'ReduceMax', 'ReduceMin', 'ReduceMean'):
      self.reduction(node)
    elif op in ('Pad', 'Slice', 'Concat', 'Expand'):
      self.axes_op(node)
    else:
      self.plain(node)

  def rewrite_transpose(self, node):
    x, perm = node.input[0], tuple(_ints(node, 'perm'))
    if x in self.held:  # of the held value: composed (nothing where it undoes the order)
      value, order = self.held[x]
      composed = [_inverse(order)[p] for p in perm]
      if composed == sorted(composed):
        self.alias[node.output[0]] = value
        return
      node.input[0] = value
      _set_ints(node, 'perm', composed)
      self.emit(node)
    elif perm == TO_NHWC and self.rank.get(x) == 4:  # NCHW -> NHWC: hold the NCHW tensor
      self.hold(node, NCHW, value=x)
    else:
      self.emit(node)

  def elementwise(self, node):
    """Every input in the held order (constants permuted as the graph's broadcasting reads
    them); with a tensor of another rank (broadcast from fewer axes), as it was."""
    perm = self.held[next(n for n in node.input if n in self.held)][1]
    rank = len(perm)
    others = [n for n in node.input if n not in self.constants]
    if any(self.held.get(n, (None, perm))[1] != perm for n in others) or any(
      n not in self.held and self.rank.get(n) != rank for n in others
    ):
      self.plain(node)
      return
    for i, name in enumerate(node.input):
      if name in self.held:
        node.input[i] = self.held[name][0]
      elif name in self.constants:
        constant = self.constants[name]
        if constant.ndim > 0 and constant.size > 1:
          constant = constant.reshape((1,) * (rank - constant.ndim) + constant.shape)
          node.input[i] = self.constant(constant.transpose(perm), node.name)
      else:  # a tensor computed in the graph's order: into the held one
        node.input[i] = self.transpose(name, list(perm), 'nchw')
    self.hold(node, perm)

  def reduction(self, node):
    x = node.input[0]
    value, perm = self.held[x]
    rank = len(perm)
    if len(node.input) < 2 or node.input[1] not in self.constants:
      self.plain(node)
      return
    axes = sorted(int(a) % rank for a in self.constants[node.input[1]])
    keepdims = _int(node, 'keepdims', 1)
    remaining = [a for a in perm if a not in axes]
    restore = None if keepdims else self.axes_put_back(node, axes)
    if not keepdims and restore is None and remaining != sorted(remaining):
      self.plain(node)  # what remains would be in another order
      return
    node.input[0] = value
    inverse = _inverse(perm)
    node.input[1] = self.constant(np.asarray(sorted(inverse[a] for a in axes)), node.name)
    if restore is not None:  # jnp.mean's keepdims, a reshape after the sum: keepdims itself
      _set_int(node, 'keepdims', 1)
      summed = node.output[0]
      self.hold(node, perm)
      self.held[restore] = self.held[summed]
      self.skip.add(restore)
    elif keepdims:
      self.hold(node, perm)
    else:  # what remains is in the graph's order
      self.emit(node)

  def axes_put_back(self, node, axes) -> str | None:
    """The output of the one reshape that reads ``node``'s reduction and puts its axes back as
    ones (what keepdims would have given), or None."""
    users, dims = self.users.get(node.output[0], []), self.dims.get(node.input[0])
    if len(users) != 1 or users[0] is None or users[0].op_type != 'Reshape' or not dims:
      return None
    target = self.constants.get(users[0].input[1])
    kept = [0 if i == 0 else 1 if i in axes else d for i, d in enumerate(dims)]
    if target is None or None in dims[1:] or target.tolist() != kept:
      return None
    return users[0].output[0]

  def axes_op(self, node):
    """Pad, Slice, Concat and Expand of held tensors: their axes (or per-axis lists) mapped."""
    op, inputs = node.op_type, list(node.input)
    value, perm = self.held[inputs[0]]
    inverse = _inverse(perm)
    if op == 'Concat' and all(self.held.get(n, (None, None))[1] == perm for n in inputs):
      node.input[:] = [self.held[name][0] for name in inputs]
      _set_int(node, 'axis', inverse[_int(node, 'axis', 0) % len(perm)])
    elif op == 'Pad' and inputs[1] in self.constants:
      pads = self.constants[inputs[1]].reshape(2, -1)[:, list(perm)].reshape(-1)
      node.input[0], node.input[1] = value, self.constant(pads, node.name)
    elif op == 'Slice' and len(inputs) > 3 and inputs[3] in self.constants:
      axes = np.asarray([inverse[a] for a in self.constants[inputs[3]]], np.int64)
      node.input[0], node.input[3] = value, self.constant(axes, node.name)
    elif op == 'Expand' and inputs[1] in self.constants:
      shape = self.constants[inputs[1]][list(perm)]
      node.input[0], node.input[1] = value, self.constant(shape, node.name)
    else:
      self.plain(node)
      return
    self.hold(node, perm)

  def reshape(self, node) -> bool:
    """A reshape that reads the same on the held value, in the order images of its output's
    rank are held in (a broadcast's reshapes, GroupNorm's split into groups and back, a pooled
    vector made an image again); or a flatten into a dense layer. False: none of these."""
    x, target = node.input[0], self.constants[node.input[1]]
    dims = self.dims.get(x)
    if x in self.held and self.flattens_into_dense(node):
      return True
    value, perm = self.held.get(x, (x, tuple(range(len(dims or ())))))
    order = _HELD.get(len(target))
    if not dims or None in dims[1:] or order is None or (x not in self.held and len(dims) >= 4):
      return False
    logical = np.arange(int(np.prod(dims[1:]))).reshape(1, *dims[1:])
    shape = [1 if t == 0 else int(t) for t in target]
    if -1 in shape or int(np.prod(shape)) != logical.size:
      return False
    held_shape = [shape[a] for a in order]
    same = np.array_equal(
      logical.transpose(perm).reshape(held_shape), logical.reshape(shape).transpose(order)
    )
    if not same:
      return False
    node.input[0] = value
    node.input[1] = self.constant(np.asarray(target)[list(order)], node.name)
    self.hold(node, order)
    return True

  def flattens_into_dense(self, node) -> bool:
    """A flatten (N, H, W, C) -> (N, HWC) read only by a product with constant rows (VGG's and
    AlexNet's classifier): flatten the NCHW tensor and permute the rows to its (C, H, W) order."""
    x, out = node.input[0], node.output[0]
    users = self.users.get(out, [])
    if len(users) != 1 or users[0] is None or users[0].op_type != 'MatMul':
      return False
    matmul, (value, perm) = users[0], self.held[x]
    weights = self.constants.get(matmul.input[1])
    dims = self.dims.get(x)
    if perm != NCHW or weights is None or not dims or None in dims[1:] or matmul.input[0] != out:
      return False
    _, h, w, c = dims
    if weights.ndim != 2 or weights.shape[0] != h * w * c:
      return False
    rows = weights.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)
    matmul.input[1] = self.constant(rows, matmul.name)
    node.input[0] = value
    self.emit(node)
    return True


# The order images of a rank are held in: NCHW; GroupNorm's (N, H, W, G, C/G) as (N, G, C/G, H, W).
_HELD = {4: NCHW, 5: (0, 3, 4, 1, 2)}


def _inverse(perm) -> list[int]:
  out = [0] * len(perm)
  for k, p in enumerate(perm):
    out[p] = k
  return out


def _scope(name: str) -> str:
  """The layer scope of a node or tensor name ``onnx_graph`` wrote: 'layer1_0/conv1/Conv_7'."""
  return name.rsplit('/', 1)[0] if '/' in name else 'net'


def _int(node, name, default):
  return next((a.i for a in node.attribute if a.name == name), default)


def _ints(node, name):
  return next((list(a.ints) for a in node.attribute if a.name == name), [])


def _set_ints(node, name, values):
  for a in node.attribute:
    if a.name == name:
      del a.ints[:]
      a.ints.extend(int(v) for v in values)


def _set_int(node, name, value):
  for a in node.attribute:
    if a.name == name:
      a.i = int(value)


def _shapes(model) -> dict[str, list]:
  inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
  return {
    info.name: [d.dim_value or None for d in info.type.tensor_type.shape.dim]
    for info in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)
  }


def _prune(graph):
  """Removes nodes whose outputs nothing reads, and unused initializers."""
  needed = {o.name for o in graph.output}
  kept = []
  for node in reversed(list(graph.node)):
    if any(o in needed for o in node.output):
      kept.append(node)
      needed.update(node.input)
  del graph.node[:]
  graph.node.extend(reversed(kept))
  unused = [t for t in graph.initializer if t.name not in needed]
  for t in unused:
    graph.initializer.remove(t)


def _replace(graph, old: list, new: list):
  """``new`` nodes in place of the ``old`` ones (at the first's position)."""
  gone = {n.output[0] for n in old}  # a node's identity: its (single-assignment) output
  nodes = list(graph.node)
  at = min(i for i, n in enumerate(nodes) if n.output[0] in gone)
  nodes = (
    [n for n in nodes[:at] if n.output[0] not in gone]
    + new
    + [n for n in nodes[at:] if n.output[0] not in gone]
  )
  del graph.node[:]
  graph.node.extend(nodes)


def _constant_value(graph, name):
  for t in graph.initializer:
    if t.name == name:
      return numpy_helper.to_array(t)
  return None


def _single_user(graph, name):
  users = [n for n in graph.node if name in n.input]
  outputs = {o.name for o in graph.output}
  return users[0] if len(users) == 1 and name not in outputs else None


def _unit_transposes_as_reshapes(graph, shapes):
  """A transpose that moves only axes of size 1 (ECA's channel vector turned for its 1-D
  convolution) reorders no element: a reshape to its output's shape."""
  for node in list(graph.node):
    dims = shapes.get(node.input[0]) if node.op_type == 'Transpose' else None
    perm = _ints(node, 'perm')
    if not dims or not perm or perm[0] != 0 or None in dims[1:]:
      continue
    moved = [dims[p] for p in perm]
    if [d for d in moved if d != 1] != [d for d in dims if d != 1]:
      continue
    shape = f'{node.name}/shape'
    graph.initializer.append(numpy_helper.from_array(np.asarray([0, *moved[1:]], np.int64), shape))
    reshape = helper.make_node('Reshape', [node.input[0], shape], list(node.output), name=node.name)
    _replace(graph, [node], [reshape])


def _drop_shape_no_ops(graph, shapes):
  """Reshapes, expands and flattens that end where they began (a broadcast to the shape a
  tensor has, a flatten undone): their readers read the tensor they began from."""
  reshaping = ('Reshape', 'Expand', 'Flatten')
  producer = {n.output[0]: n for n in graph.node}
  renamed = {}
  for node in graph.node:
    end = shapes.get(node.output[0])
    if node.op_type not in reshaping or not end or None in end[1:]:
      continue
    start = node.input[0]
    while True:
      if shapes.get(start) == end:
        renamed[node.output[0]] = renamed.get(start, start)
        break
      before = producer.get(start)
      if before is None or before.op_type not in reshaping:
        break
      start = before.input[0]
  for node in graph.node:  # (a graph output keeps its node: the name is the graph's)
    for i, name in enumerate(node.input):
      node.input[i] = renamed.get(name, name)
  users = collections.Counter(name for node in graph.node for name in node.input)
  for node in graph.node:  # a reshape of a reshape: one reshape, of the first's input
    before = producer.get(node.input[0]) if node.op_type == 'Reshape' else None
    while (
      before is not None
      and before.op_type in ('Reshape', 'Flatten')
      and users[before.output[0]] == 1
    ):
      node.input[0] = before.input[0]
      before = producer.get(node.input[0])


def _drop_output_identities(graph):
  """A graph output copied by Identity from a node's output read by nothing else: that node
  writes the graph output itself."""
  for output in graph.output:
    nodes = list(graph.node)
    copy = next((n for n in nodes if n.output[0] == output.name), None)
    if copy is None or copy.op_type != 'Identity':
      continue
    source = next((n for n in nodes if n.output[0] == copy.input[0]), None)
    if source is None or sum(copy.input[0] in n.input for n in nodes) != 1:
      continue
    _replace(graph, [copy], [])  # (writes the nodes anew: find the source again)
    next(n for n in graph.node if n.output[0] == copy.input[0]).output[0] = output.name


def _fuse_relu(graph):
  for node in list(graph.node):
    if node.op_type != 'Max' or len(node.input) != 2:
      continue
    for x, c in (node.input, node.input[::-1]):
      value = _constant_value(graph, c)
      if value is not None and value.size == 1 and float(value.reshape(())) == 0.0:
        _replace(graph, [node], [helper.make_node('Relu', [x], list(node.output), name=node.name)])
        break


def _fuse_global_average_pool(graph, shapes):
  """ReduceSum over H and W (NCHW axes 2, 3), then a division by H * W (or product with its
  inverse) -> GlobalAveragePool (then Flatten where the reduction dropped the axes)."""
  for node in list(graph.node):
    if node.op_type != 'ReduceSum' or len(node.input) < 2:
      continue
    axes = _constant_value(graph, node.input[1])
    dims = shapes.get(node.input[0])
    if axes is None or sorted(axes.tolist()) != [2, 3] or not dims or None in dims[2:]:
      continue
    keepdims, chain = _int(node, 'keepdims', 1), [node]
    scale = _single_user(graph, node.output[0])
    target = None if scale is None else _constant_value(graph, scale.input[-1])
    if scale is not None and scale.op_type == 'Reshape' and target is not None:
      if target.tolist() != [0, dims[1], 1, 1]:  # jnp.mean's keepdims: the axes put back
        continue
      keepdims, chain = 1, [node, scale]
      scale = _single_user(graph, scale.output[0])
    if (
      scale is None or scale.op_type not in ('Div', 'Mul') or scale.input[0] != chain[-1].output[0]
    ):
      continue
    value = _constant_value(graph, scale.input[1])
    area = dims[2] * dims[3]
    want = area if scale.op_type == 'Div' else 1.0 / area
    if value is None or value.size != 1 or not np.isclose(float(value.reshape(())), want):
      continue
    out = scale.output[0]
    if keepdims:
      new = [helper.make_node('GlobalAveragePool', [node.input[0]], [out], name=node.name)]
    else:
      pooled = f'{node.name}/pooled'
      new = [
        helper.make_node('GlobalAveragePool', [node.input[0]], [pooled], name=node.name),
        helper.make_node('Flatten', [pooled], [out], name=f'{_scope(node.name)}/F', axis=1),
      ]
    _replace(graph, [*chain, scale], new)


def _fuse_average_pool(graph):
  """A depthwise convolution with a kernel of ones (``onnx_graph``'s window sum) divided by the
  window's size, or by the count of the window's pixels inside the image -> AveragePool with
  count_include_pad 1 or 0 (ResNet-D's shortcut pool: torch's count_include_pad=False)."""
  for conv in list(graph.node):
    ones = _constant_value(graph, conv.input[1]) if conv.op_type == 'Conv' else None
    if ones is None or len(conv.input) != 2 or ones.shape[1] != 1 or not np.all(ones == 1):
      continue
    if _int(conv, 'group', 1) != ones.shape[0]:
      continue
    divide = _single_user(graph, conv.output[0])
    if divide is None or divide.op_type != 'Div' or divide.input[0] != conv.output[0]:
      continue
    counts = _constant_value(graph, divide.input[1])
    kernel, strides, pads = (_ints(conv, k) for k in ('kernel_shape', 'strides', 'pads'))
    kernel = kernel or list(ones.shape[2:])
    if counts is None:
      continue
    if counts.size == 1 and float(counts.reshape(())) == float(np.prod(kernel)):
      include_pad = 1
    elif counts.ndim == 4 and np.array_equal(
      counts[0, 0], _inside_counts(counts.shape[2:], kernel, strides, pads)
    ):
      include_pad = 0
    else:
      continue
    pool = helper.make_node(
      'AveragePool',
      [conv.input[0]],
      list(divide.output),
      name=conv.name,
      kernel_shape=kernel,
      strides=strides or [1, 1],
      pads=pads or [0, 0, 0, 0],
      count_include_pad=include_pad,
    )
    _replace(graph, [conv, divide], [pool])


def _inside_counts(out_hw, kernel, strides, pads) -> np.ndarray:
  """For each output position of a pool, how many of its window's pixels are in the image."""
  strides, pads = strides or [1, 1], pads or [0, 0, 0, 0]
  per_axis = []
  for axis in range(2):
    size = out_hw[axis]
    starts = np.arange(size) * strides[axis] - pads[axis]
    extent = (size - 1) * strides[axis] + kernel[axis] - pads[axis] - pads[axis + 2]
    inside = [min(s + kernel[axis], extent) - max(s, 0) for s in starts]
    per_axis.append(np.asarray(inside, np.float32))
  return np.outer(*per_axis)


def _fuse_gemm(graph):
  """MatMul of a (N, K) tensor by constant (K, M) rows, then Add of a constant (M,) bias -> Gemm."""
  for node in list(graph.node):
    if node.op_type != 'MatMul':
      continue
    weights = _constant_value(graph, node.input[1])
    add = _single_user(graph, node.output[0])
    if weights is None or weights.ndim != 2 or add is None or add.op_type != 'Add':
      continue
    bias_name = next((i for i in add.input if i != node.output[0]), None)
    bias = _constant_value(graph, bias_name)
    if bias is None or bias.size != weights.shape[1] or bias.shape[-1] != bias.size:
      continue
    if bias.ndim != 1:  # Gemm's C broadcasts over rows: the bias as a vector
      bias_name = f'{node.name}/bias'
      graph.initializer.append(numpy_helper.from_array(bias.reshape(-1), bias_name))
    gemm = helper.make_node(
      'Gemm', [node.input[0], node.input[1], bias_name], list(add.output), name=node.name
    )
    _replace(graph, [node, add], [gemm])


def _fuse_batch_norm(graph, shapes):
  """Sub, Mul, Add of per-channel constants on an NCHW tensor (an unfolded BatchNorm in
  inference) -> BatchNormalization with that mean, scale and bias, variance 1 and epsilon 0:
  the same arithmetic."""
  for first in list(graph.node):
    chain = [first]
    for op in ('Mul', 'Add'):
      step = _single_user(graph, chain[-1].output[0])
      chain.append(step if step is not None and step.op_type == op else None)
      if chain[-1] is None or chain[-1].input[0] != chain[-2].output[0]:
        break
    if first.op_type != 'Sub' or None in chain or len(chain) != 3:
      continue
    dims = shapes.get(first.input[0])
    values = [_constant_value(graph, step.input[1]) for step in chain]
    if (
      not dims or len(dims) != 4 or any(v is None or v.shape != (1, dims[1], 1, 1) for v in values)
    ):
      continue
    mean, scale, bias = (v.reshape(-1).astype(np.float32) for v in values)
    names = []
    for hint, value in (('scale', scale), ('B', bias), ('mean', mean), ('var', np.ones_like(mean))):
      names.append(f'{first.name}/{hint}')
      graph.initializer.append(numpy_helper.from_array(value, names[-1]))
    norm = helper.make_node(
      'BatchNormalization',
      [first.input[0], *names],
      list(chain[-1].output),
      name=first.name,
      epsilon=0.0,
    )
    _replace(graph, chain, [norm])


def _dotted(scope: str) -> str:
  """'layer1_0/conv1' -> 'layer1.0.conv1' (torch's module path)."""
  parts = []
  for part in scope.split('/'):
    head, _, tail = part.rpartition('_')
    parts += [head, tail] if head and tail.isdigit() else [part]
  return '.'.join(parts)


def _name_after_layers(graph):
  """Each node named after the scope ``onnx_graph`` recorded: ``<layer>`` for a convolution or
  the classifier (the layer itself, ``layer1.0.conv1``, ``fc``), else ``<layer>/<Op>``; made
  unique."""
  seen = collections.Counter()
  for node in graph.node:
    scope = _scope(node.name)
    layer = _dotted(scope) if scope != 'net' else ''
    base = (
      layer if node.op_type in ('Conv', 'Gemm') and layer else f'{layer or "net"}/{node.op_type}'
    )
    seen[base] += 1
    node.name = base if seen[base] == 1 else f'{base}_{seen[base] - 1}'
