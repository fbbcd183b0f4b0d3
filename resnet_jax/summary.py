"""Layer table of a model: output shape, parameters and multiply-adds per layer, with totals.

Counts as torchinfo does, so the figures compare with the torchinfo table of torchvision models:
a conv costs (its kernel size) x (output positions) multiply-adds, a dense or BatchNorm layer its
parameter count per example (so torchvision's published GFLOPS, which count convs and the head
only, are matched within 0.5%). Shapes are traced with ``jax.eval_shape``: nothing is computed, so
ResNet-152 at batch 128 is summarised in seconds on a laptop.

Usage:
  python -m resnet_jax.summary resnet18 --image-size 224 --batch-size 128
"""

from __future__ import annotations

import argparse
import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax import cli
from resnet_jax.models import resnet


@dataclasses.dataclass
class LayerRow:
  path: str
  kind: str
  output_shape: tuple[int, ...]
  params: int
  mult_adds: int


def _own_param_count(module: nn.Module) -> int:
  if not module.has_variable('params', 'kernel') and not module.has_variable('params', 'scale'):
    return 0
  return sum(x.size for x in jax.tree.leaves(module.variables.get('params', {})))


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
    if context.method_name == '__call__' and isinstance(
      module, nn.Conv | nn.Dense | resnet.BatchNorm
    ):
      params = _own_param_count(module)
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


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('model', help='e.g. resnet50, cifar_resnet56, plain34')
  parser.add_argument('--image-size', type=int, default=None, help='224 ImageNet, 32 CIFAR')
  parser.add_argument('--batch-size', type=int, default=1)
  parser.add_argument('--num-classes', type=int, default=None, help='1000 ImageNet, 10 CIFAR')
  args = parser.parse_args(argv)
  for name, value, least in (
    ('--image-size', args.image_size, 8),
    ('--batch-size', args.batch_size, 1),
    ('--num-classes', args.num_classes, 1),
  ):
    if value is not None and value < least:
      cli.fail(f'{name} {value}: must be an integer >= {least}.')
  cifar = args.model.startswith('cifar')
  size = args.image_size or (32 if cifar else 224)
  num_classes = args.num_classes or (10 if cifar else 1000)
  try:
    model = resnet.get_model(args.model, num_classes=num_classes)
  except ValueError as e:
    cli.fail(f'{e}')
  rows = layer_rows(model, (args.batch_size, size, size, 3))
  title = f'{args.model}: input {[args.batch_size, size, size, 3]}, {num_classes} classes'
  print(format_table(rows, title))


if __name__ == '__main__':
  main()
