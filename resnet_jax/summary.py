"""Layer table of a model: output shape, parameters and multiply-adds per layer, with totals.

Counts as torchinfo does, so the figures compare with the torchinfo table of torchvision models:
a conv costs (its kernel size) x (output positions) multiply-adds, a dense or BatchNorm layer its
parameter count per example (so torchvision's published GFLOPS, which count convs and the head
only, are matched within 0.5%). Shapes are traced with ``jax.eval_shape``: nothing is computed, so
ResNet-152 at batch 128 is summarised in seconds on a laptop.

Memory, two ways. torchinfo's estimate (float32: the input, every conv / BN / dense output twice
for the forward and backward passes, the parameters), which it prints for torchvision's models.
And with ``--memory=80GB``, XLA's own figure: the train step compiled for this machine's devices
at two batch sizes, its arguments (state and batch), outputs and temporaries per device, and the
largest global batch whose step fits that much memory per device (memory grows linearly with the
batch; the figure is the compiler's, for the device kind this runs on).

Given several models, one line each instead: parameters and mult-adds, and each one's cost as a
share of the first's (the paper's Fig. 3 comparison: VGG-19 19.6 G, the 34-layer nets 3.6 G).

``--list [PATTERN ...]`` lists the nets by name instead (shell patterns, e.g. ``'resnet*d'``),
each with its parameters and mult-adds per image (at 224, 32 for the CIFAR nets; 1000 and 10
classes) and the released weights that load into it by name (``--config.init_from=NAME``), one
line as each is traced (the 1,000-layer CIFAR nets take a while).

Usage:
  python -m resnet_jax.summary --list 'resnet50*' 'vgg*'
  python -m resnet_jax.summary resnet18 --image-size 224 --batch-size 128
  python -m resnet_jax.summary resnet50 --batch-size 32 --memory=80GB
  python -m resnet_jax.summary vgg19 plain34 resnet34
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import FrozenDict

from resnet_jax import cli
from resnet_jax.models import baselines, norms, registry, releases


@dataclasses.dataclass
class LayerRow:
  path: str
  kind: str
  output_shape: tuple[int, ...]
  params: int
  mult_adds: int


def _own_param_count(module: nn.Module) -> int:
  """The parameters the module holds itself, not in its submodules."""
  own = module.variables.get('params', {}).values()
  return sum(x.size for x in own if not isinstance(x, dict | FrozenDict))


def _mult_adds(module: nn.Module, output_shape, params: int) -> int:
  if isinstance(module, nn.Conv):
    kernel = module.get_variable('params', 'kernel')
    return kernel.size * math.prod(output_shape[:-1])  # batch x output positions
  return params * output_shape[0]  # torchinfo: BN and dense layers cost their params per example


def layer_rows(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerRow]:
  """The leaf layers (conv, BN, dense) of ``model`` applied to ``input_shape`` (NHWC)."""
  rows: list[LayerRow] = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name != '__call__':
      return out
    params = _own_param_count(module)
    # The layers; and any other module with parameters of its own (a gate in a block of yours).
    if params or isinstance(module, (nn.Conv, nn.Dense, baselines.Linear, *norms.NORM_LAYERS)):
      rows.append(
        LayerRow(
          path='/'.join(module.scope.path),
          kind=type(module).__name__,
          output_shape=tuple(out.shape),
          params=params,
          mult_adds=_mult_adds(module, out.shape, params),
        )
      )
    return out

  def init_and_apply():
    variables = model.init(jax.random.key(0), jnp.zeros(input_shape), train=False)
    with nn.intercept_methods(record):
      return model.apply(variables, jnp.zeros(input_shape), train=False)

  jax.eval_shape(init_and_apply)
  return rows


def format_table(rows: list[LayerRow], title: str) -> str:
  """A torchinfo-like text table with totals, mult-adds in G."""
  header = f'{"Layer":<34}{"Type":<11}{"Output shape":<22}{"Param #":>13}{"Mult-adds":>17}'
  lines = [title, '=' * len(header), header, '=' * len(header)]
  for r in rows:
    lines.append(
      f'{r.path:<34}{r.kind:<11}{list(r.output_shape)!s:<22}{r.params:>13,}{r.mult_adds:>17,}'
    )
  total_params = sum(r.params for r in rows)
  total_macs = sum(r.mult_adds for r in rows)
  lines += [
    '=' * len(header),
    f'Total params: {total_params:,}',
    f'Total mult-adds (G): {total_macs / 1e9:.2f}',
    '=' * len(header),
  ]
  return '\n'.join(lines)


def torchinfo_memory(rows: list[LayerRow], input_shape) -> dict[str, float]:
  """torchinfo's memory estimate in MB (1e6 bytes), float32: its layers with parameters count."""
  input_bytes = 4 * math.prod(input_shape)
  activations = 2 * 4 * sum(math.prod(r.output_shape) for r in rows)
  params = 4 * sum(r.params for r in rows)
  return {
    'Input size (MB)': input_bytes / 1e6,
    'Forward/backward pass size (MB)': activations / 1e6,
    'Params size (MB)': params / 1e6,
    'Estimated Total Size (MB)': (input_bytes + activations + params) / 1e6,
  }


def parse_bytes(text: str) -> int:
  """'80GB' (1e9), '16GiB' (2**30), '512MB', '1.5TB' -> bytes."""
  units = {'': 1, 'B': 1, 'KB': 1e3, 'MB': 1e6, 'GB': 1e9, 'TB': 1e12}
  units |= {'KIB': 2**10, 'MIB': 2**20, 'GIB': 2**30, 'TIB': 2**40}
  match = re.fullmatch(r'\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*', text)
  if not match or match.group(2).upper() not in units or float(match.group(1)) <= 0:
    raise ValueError(f'{text!r} is not a memory size such as 80GB, 16GiB or 512MB')
  return int(float(match.group(1)) * units[match.group(2).upper()])


def compiled_step_memory(name: str, num_classes: int, image_size: int, batch: int) -> dict:
  """XLA's memory analysis of the train step (configs/default.py's, on every local device) at
  global ``batch``: bytes per device of its arguments, outputs, aliased buffers and temporaries."""
  from configs import default
  from resnet_jax.train import network, parallel

  config = default.get_config()
  config.model, config.image_size, config.batch_size = name, image_size, batch
  data_parallel = parallel.DataParallel(parallel.make_mesh(), config.parallelism)
  step, state = network.example_train_step(config, num_classes, data_parallel)
  # The batch as shapes only (an example of one image per device, its leading axis widened):
  # a large budget's batch is compiled, never allocated.
  one_per_device = config.copy_and_resolve_references()
  one_per_device.batch_size = jax.device_count()
  example = network.example_batch(data_parallel, one_per_device, num_classes)
  batch_shapes = jax.tree.map(
    lambda a: jax.ShapeDtypeStruct((batch, *a.shape[1:]), a.dtype, sharding=a.sharding), example
  )
  analysis = step.lower(state, batch_shapes).compile().memory_analysis()
  return {
    'arguments': analysis.argument_size_in_bytes,
    'outputs': analysis.output_size_in_bytes,
    'aliased': analysis.alias_size_in_bytes,
    'temporaries': analysis.temp_size_in_bytes,
  }


def peak_bytes(memory: dict) -> int:
  """What one step holds at once: arguments, outputs not written over donated arguments, and
  temporaries."""
  return memory['arguments'] + memory['outputs'] - memory['aliased'] + memory['temporaries']


def largest_fitting_batch(name, num_classes, image_size, budget, fixed, per_image) -> int:
  """The line's largest global batch under ``budget`` per device, checked by compiling it and
  lowered in proportion while the compiler's figure is over (memory is not exactly linear)."""
  devices = jax.device_count()
  batch = devices * int((budget - fixed) / (per_image * devices)) if per_image > 0 else 0
  for _ in range(4):
    if batch < devices:
      return 0
    used = peak_bytes(compiled_step_memory(name, num_classes, image_size, batch))
    if used <= budget:
      return batch
    batch = devices * int(batch * budget / used / devices)
  return 0


def memory_report(name, num_classes, image_size, batch, budget: int) -> str:
  """XLA's figure at ``batch`` and the largest global batch that fits ``budget`` per device."""
  devices = jax.device_count()
  small = compiled_step_memory(name, num_classes, image_size, devices)
  at_batch = compiled_step_memory(name, num_classes, image_size, batch)
  # The cost of an image is the slope between two batches: at the default batch of one image per
  # device there is no second point, so two images per device give it.
  larger, at_larger = (batch, at_batch) if batch > devices else (2 * devices, None)
  at_larger = at_larger or compiled_step_memory(name, num_classes, image_size, larger)
  per_image = (peak_bytes(at_larger) - peak_bytes(small)) / (larger - devices)
  fixed = peak_bytes(small) - per_image * devices
  fits = largest_fitting_batch(name, num_classes, image_size, budget, fixed, per_image)
  mb = lambda n: f'{n / 1e6:,.1f} MB'  # noqa: E731
  return '\n'.join(
    [
      f'Compiled train step, global batch {batch} on {devices} {jax.devices()[0].platform} '
      f"device(s), per device (XLA's memory analysis):",
      f'  arguments {mb(at_batch["arguments"])} (state and batch), outputs '
      f'{mb(at_batch["outputs"])} ({mb(at_batch["aliased"])} of them in donated arguments), '
      f'temporaries {mb(at_batch["temporaries"])}',
      f'  peak {mb(peak_bytes(at_batch))}: {mb(fixed)} fixed + {mb(per_image)} per image',
      f'Largest global batch that fits {budget / 1e9:,.2f} GB per device: {fits:,} (compiled '
      f'to check)',
    ]
  )


def comparison(models: dict[str, list[LayerRow]], image_size: int) -> str:
  """One line per model: its parameters, mult-adds and their share of the first model's."""
  totals = {name: sum(r.mult_adds for r in rows) for name, rows in models.items()}
  first = next(iter(models))
  lines = [f'Per image at {image_size}x{image_size}:']
  for name, rows in models.items():
    share = '' if name == first else f", {totals[name] / totals[first]:.1%} of {first}'s"
    lines.append(
      f'  {name:<18}{sum(r.params for r in rows):>14,} params'
      f'{totals[name] / 1e9:>9.2f} G mult-adds{share}'
    )
  return '\n'.join(lines)


def default_shape(name: str) -> tuple[int, int]:
  """(image size, classes) a net is summarised at unless told: CIFAR's or ImageNet's."""
  return (32, 10) if name.startswith('cifar') else (224, 1000)


def model_list(patterns: list[str]):
  """Yields a header, then one line per net matching any of ``patterns``: its name, parameters
  and mult-adds per image (``default_shape``), and its released weights' names with the top-1
  (%) their source publishes."""
  weights = {}
  for name in releases.names():
    release = releases.lookup(name)
    weights.setdefault(release.model, []).append(
      f'{name} ({release.top1:.2f})' if release.top1 else name
    )
  names = [n for n in registry.list_models() if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
  if not names:
    return
  width = max(map(len, names))
  yield f'{"name":<{width}}  {"params":>13}  {"G mult-adds":>11}  weights by name'
  for name in names:
    size, num_classes = default_shape(name)
    rows = layer_rows(registry.get_model(name, num_classes=num_classes), (1, size, size, 3))
    params, mult_adds = sum(r.params for r in rows), sum(r.mult_adds for r in rows)
    line = f'{name:<{width}}  {params:>13,}  {mult_adds / 1e9:>11.3f}  '
    yield (line + ', '.join(weights.get(name, []))).rstrip()


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument(
    'model', nargs='*', help='e.g. resnet50, cifar_resnet56, plain34; several: one line each'
  )
  parser.add_argument(
    '--list', action='store_true', help="list the nets matching the patterns given (all: '*')"
  )
  # Both spellings: the other commands' flags are absl's, --image_size.
  parser.add_argument('--image-size', '--image_size', type=int, help='224 ImageNet, 32 CIFAR')
  parser.add_argument('--batch-size', '--batch_size', type=int, default=1)
  parser.add_argument('--num-classes', '--num_classes', type=int, default=None, help='1000, 10')
  parser.add_argument(
    '--memory', default=None, help="a device's memory, e.g. 80GB: compile the train step"
  )
  args = parser.parse_args(argv)
  if args.list:
    listed = False
    for line in model_list(args.model or ['*']):
      print(line, flush=True)
      listed = True
    if not listed:
      cli.fail(f'--list {" ".join(args.model)}: no net matches (try --list to see them all).')
    return
  if not args.model:
    cli.fail('summary: give one or more nets (e.g. resnet50), or --list to see their names.')
  try:
    budget = parse_bytes(args.memory) if args.memory is not None else None
  except ValueError as e:
    cli.fail(f'--memory={args.memory}: {e}.')
  for name, value, least in (
    ('--image-size', args.image_size, 8),
    ('--batch-size', args.batch_size, 1),
    ('--num-classes', args.num_classes, 1),
  ):
    if value is not None and value < least:
      cli.fail(f'{name} {value}: must be an integer >= {least}.')
  size, num_classes = default_shape(args.model[0])
  size, num_classes = args.image_size or size, args.num_classes or num_classes
  models = {}
  for name in args.model:
    try:
      models[name] = registry.get_model(name, num_classes=num_classes)
    except ValueError as e:
      cli.fail(f'{e}')
    least = getattr(models[name], 'min_image_size', 0)  # VGG's, AlexNet's, GoogLeNet's
    if size < least:
      cli.fail(f'--image-size {size}: {name} needs at least {least}.')
  if len(models) > 1:
    if budget is not None:
      cli.fail("--memory compiles one model's train step: give one model.")
    rows = {name: layer_rows(model, (1, size, size, 3)) for name, model in models.items()}
    print(comparison(rows, size))
    return
  ((name, model),) = models.items()
  shape = (args.batch_size, size, size, 3)
  rows = layer_rows(model, shape)
  title = f'{name}: input {list(shape)}, {num_classes} classes'
  print(format_table(rows, title))
  print('\n'.join(f'{k}: {v:.2f}' for k, v in torchinfo_memory(rows, shape).items()))
  if budget is not None:
    if args.batch_size % jax.device_count():
      cli.fail(
        f'--batch-size {args.batch_size}: must be a multiple of the {jax.device_count()} devices.'
      )
    print(memory_report(name, num_classes, size, args.batch_size, budget))


if __name__ == '__main__':
  main()
