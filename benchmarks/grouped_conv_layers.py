"""ResNeXt's grouped 3x3 convolutions, one layer at a time: ours (oneDNN's forward and gradients
through ``conv.cpu_convolution``) beside PyTorch's ``conv2d`` on the same shapes and threads.

  pip install torch==2.13.0 && python benchmarks/grouped_conv_layers.py [--groups=32 --batch=8]

Prints per layer the forward and forward + both gradients in ms, and PyTorch's time over ours.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import torch

from resnet_jax.models import conv

# ResNeXt-50 32x4d's grouped 3x3s at 224 px (layer1 to layer4), then ResNeXt-101 32x8d's widest.
LAYERS = ((56, 128), (56, 256), (28, 512), (14, 1024), (7, 2048))


def timed(fn, repeats=10):
  fn()
  fn()
  start = time.perf_counter()
  for _ in range(repeats):
    fn()
  return (time.perf_counter() - start) / repeats * 1e3


def pytorch_ms(batch, size, channels, groups):
  x = torch.randn(batch, channels, size, size, requires_grad=True)
  w = torch.randn(channels, channels // groups, 3, 3, requires_grad=True)
  forward = lambda: torch.nn.functional.conv2d(x, w, padding=1, groups=groups)  # noqa: E731

  def both():
    y = forward()
    y.backward(torch.ones_like(y))

  with torch.no_grad():
    forward_ms = timed(forward)
  return forward_ms, timed(both)


def ours_ms(batch, size, channels, groups):
  x = jnp.ones((batch, size, size, channels))
  w = jnp.ones((3, 3, channels // groups, channels))
  lowering = conv.cpu_convolution(conv.conv_general_dilated_stored_input, 'onednn')
  numbers = jax.lax.conv_dimension_numbers(x.shape, w.shape, conv.NHWC)
  layer = lambda x, w: lowering(x, w, (1, 1), [(1, 1)] * 2, None, None, numbers, groups)  # noqa: E731
  forward = jax.jit(layer)
  both = jax.jit(jax.grad(lambda x, w: jnp.sum(layer(x, w)), argnums=(0, 1)))
  return (
    timed(lambda: jax.block_until_ready(forward(x, w))),
    timed(lambda: jax.block_until_ready(both(x, w))),
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--groups', type=int, default=32)
  parser.add_argument('--batch', type=int, default=8)
  args = parser.parse_args()
  columns = ('px', 'channels', 'PyTorch fwd ms', 'ours fwd ms', 'fwd ratio')
  columns += ('PyTorch fwd+bwd ms', 'ours fwd+bwd ms', 'fwd+bwd ratio')
  print('| ' + ' | '.join(columns) + ' |')
  print('| --- | --- | --- | --- | --- | --- | --- | --- |')
  for size, channels in LAYERS:
    theirs = pytorch_ms(args.batch, size, channels, args.groups)
    ours = ours_ms(args.batch, size, channels, args.groups)
    print(
      f'| {size} | {channels} | {theirs[0]:.2f} | {ours[0]:.2f} | {theirs[0] / ours[0]:.2f} | '
      f'{theirs[1]:.2f} | {ours[1]:.2f} | {theirs[1] / ours[1]:.2f} |'
    )


if __name__ == '__main__':
  main()
