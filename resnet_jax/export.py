"""Writes a run's network (its latest checkpoint, or converted weights) as an ONNX inference graph.

  python -m resnet_jax.export --workdir=DIR --out=model.onnx
  python -m resnet_jax.export --weights=/tmp/r50_tv --model=resnet50 --out=r50.onnx --layout=NCHW

The graph takes what the network takes: float32 images, normalised as the run's evaluation
pipeline normalises them, of any batch size, NHWC (``--layout=NCHW``: torch's order). BatchNorm
is folded into the convolutions' weights and biases unless ``--fold_batch_norm=false``. Where
onnxruntime is installed, the command runs the file and reports how far its logits are from
JAX's on a random batch. The graph reads like the net (``onnx_layout.py``): NCHW throughout,
ONNX's own operators, each node named after its layer (``layer1.0.conv1``); it opens in Netron
(https://netron.app).
"""

from __future__ import annotations

import json
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from resnet_jax import cli
from resnet_jax.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, "A run's workdir: its latest checkpoint and config.json.")
flags.DEFINE_string(
  'weights',
  None,
  'Instead of --workdir: a convert output (needs --model), or released weights by name '
  '(torchvision:resnet50.IMAGENET1K_V2) or URL.',
)
flags.DEFINE_string('model', None, "The net's name; default the run's (config.json).")
flags.DEFINE_string('out', None, 'The .onnx file to write (local or gs://).')
flags.DEFINE_integer('image_size', None, "Input height and width; default the run's image_size.")
flags.DEFINE_enum('layout', 'NHWC', ['NHWC', 'NCHW'], 'Input layout of the graph.')
flags.DEFINE_bool('fold_batch_norm', True, 'Fold BatchNorm into the convolutions.')
flags.DEFINE_bool('ema', False, "The run's moving average of its weights (a run with ema_decay).")


def _onnx():
  try:
    import onnx  # only this command needs it: an optional dependency
  except ImportError:
    raise UserError('export writes ONNX and needs it: pip install -e ".[export]".') from None
  return onnx


def run_config(source, model: str | None):
  """The run's config (configs/default.py's fields, as config.json holds them), or the defaults
  with ``model`` for converted weights."""
  from configs import default

  config = default.get_config()
  saved = source / 'config.json'
  if saved.exists():
    values = json.loads(saved.read_text())
    for field in config:
      if field in values:
        config[field] = type(config[field])(values[field]) if values[field] is not None else None
  elif not model:
    raise UserError(f'{source} has no config.json: give the net with --model=NAME.')
  if model:
    config.model = model
  return config


def inference_model(config, variables, image_size: int):
  """The config's network for export (float32, per-block, XLA's lowerings: no CPU custom calls)
  with the class count of the weights, which must fit it."""
  from flax import traverse_util

  from resnet_jax.models import registry
  from resnet_jax.train import network

  head = registry.head_name(config.model)
  kernel = variables['params'].get(head, {}).get('kernel')
  if kernel is None:
    raise UserError(f'These weights have no {head!r} layer: they are not a {config.model}.')
  config = config.copy_and_resolve_references()
  config.scan_blocks, config.half_precision = False, False
  config.cpu_convolution, config.cpu_kernels = 'xla', 'xla'
  model = network.build_model(config, int(kernel.shape[-1]), train_bn_axis=False)
  images = jnp.zeros((1, image_size, image_size, 3))
  try:
    wanted = jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))
  except ValueError as e:  # e.g. VGG on images too small for its pools
    raise UserError(f'--image_size={image_size}: {e}') from None
  wanted, given = (traverse_util.flatten_dict(dict(t)) for t in (wanted, variables))
  wrong = [
    '/'.join(k)
    for k in wanted.keys() | given.keys()
    if k not in wanted or k not in given or wanted[k].shape != given[k].shape
  ]
  if wrong:
    raise UserError(
      f'The weights do not fit {config.model} ({len(wrong)} tensors missing, extra or '
      f'mis-shaped, e.g. {", ".join(sorted(wrong)[:3])}): is --model right?'
    )
  return model


def export(source, config, image_size: int, layout: str, fold: bool, use_ema: bool = False):
  """The ONNX model, JAX's inference function and its variables (the run's average of them with
  ``use_ema``)."""
  from resnet_jax import onnx_graph, onnx_layout
  from resnet_jax.models import block_layout
  from resnet_jax.train import checkpoint

  try:
    variables = block_layout.unstack_blocks(checkpoint.read_variables(source, use_ema=use_ema))
  except checkpoint.CheckpointError as e:
    raise UserError(str(e)) from None
  model = inference_model(config, variables, image_size)

  def forward(variables, images):
    if layout == 'NCHW':
      images = jnp.transpose(images, (0, 2, 3, 1))
    return model.apply(variables, images, train=False)

  shape = (image_size, image_size, 3) if layout == 'NHWC' else (3, image_size, image_size)
  graph = onnx_graph.to_onnx(forward, variables, shape)
  if fold:
    graph = onnx_graph.fold_batch_norm(graph)
  return onnx_layout.readable(graph), forward, variables, shape


def runtime_check(graph, forward, variables, shape) -> tuple[bool, str]:
  """onnxruntime's logits against JAX's on a random batch of two: whether they agree (True
  where onnxruntime is missing), and a sentence that says how far apart they are."""
  from resnet_jax import onnx_graph

  try:
    import onnxruntime
  except ImportError:
    return True, 'onnxruntime is not installed: not run here (pip install -e ".[export]").'
  images = np.random.default_rng(0).standard_normal((2, *shape)).astype(np.float32)
  want = np.asarray(jax.jit(forward)(variables, images))
  session = onnxruntime.InferenceSession(
    graph.SerializeToString(), providers=['CPUExecutionProvider']
  )
  got = session.run(None, {'images': images})[0]
  error, scale = float(np.abs(got - want).max()), float(np.abs(want).max())
  tolerance = onnx_graph.LOGIT_TOLERANCE
  agree = error <= tolerance * max(scale, 1e-6)
  verdict = 'within' if agree else 'NOT within'
  return agree, (
    f"onnxruntime {onnxruntime.__version__}: logits {verdict} {error:.2g} of JAX's "
    f'(largest |logit| {scale:.3g}, tolerance {tolerance:g} of it) on a random batch of 2.'
  )


def main(argv):
  from resnet_jax import storage
  from resnet_jax.models import releases
  from resnet_jax.train import pretrained

  if len(argv) > 1:
    raise UserError(f'Unexpected arguments {argv[1:]}: every option is a flag, --name=value.')
  if bool(FLAGS.workdir) == bool(FLAGS.weights) or not FLAGS.out:
    raise UserError(
      'export: give --workdir=DIR (a run) or --weights=DIR --model=NAME (converted weights), '
      'and --out=FILE.onnx.'
    )
  storage.check_writable_file(FLAGS.out, '--out', 'model.onnx')
  _onnx()
  model_name, weights = FLAGS.model, FLAGS.weights
  if weights and releases.is_reference(weights):  # released weights: downloaded, converted once
    if not weights.startswith(('http://', 'https://')):
      model_name = model_name or releases.lookup(weights).model
    weights = pretrained.resolve(weights, model_name)
  source = storage.path(FLAGS.workdir or weights)
  if not source.is_dir():
    raise UserError(f'--{"workdir" if FLAGS.workdir else "weights"}={source}: no such directory.')
  config = run_config(source, model_name)
  from resnet_jax import config_check

  config_check.model_name('model', config.model)
  image_size = config.image_size if FLAGS.image_size is None else FLAGS.image_size
  if image_size < 1:
    raise UserError(f'--image_size={image_size}: must be a positive integer.')
  graph, forward, variables, shape = export(
    source, config, image_size, FLAGS.layout, FLAGS.fold_batch_norm, FLAGS.ema
  )
  storage.write_bytes_atomic(storage.path(FLAGS.out), graph.SerializeToString())
  folded = sum(1 for n in graph.graph.node if n.op_type == 'Conv' and len(n.input) == 3)
  print(
    f'Wrote {FLAGS.out}: {config.model}{" (averaged weights)" if FLAGS.ema else ""}, input '
    f'images [batch, {", ".join(map(str, shape))}] '
    f'{FLAGS.layout} float32, output logits; {len(graph.graph.node)} nodes, ONNX opset '
    f'{graph.opset_import[0].version}'
    + (f', BatchNorm folded into {folded} convolutions.' if FLAGS.fold_batch_norm else '.')
  )
  agree, check = runtime_check(graph, forward, variables, shape)
  if not agree:  # a wrong graph must not pass as a right one
    cli.fail(f'{check} The written graph is wrong: please report it.', code=1)
  print(check)


if __name__ == '__main__':
  cli.run(main)
