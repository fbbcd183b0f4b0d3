"""Where a train step's time goes: forward (eval BN), forward (batch BN), forward + backward.

For each part: measured time and two floors: the model's FLOPs (``summary``'s multiply-adds x 2,
x 3 with the backward pass) over the measured matmul peak, and the bytes XLA's cost analysis says
the compiled program accesses over the measured device-to-device copy bandwidth. (XLA's own FLOP
count leaves out convolutions run as cuDNN calls on GPUs, so it is not used; its byte count is a
lower bound for the same reason.) A part far above both floors loses time to something else
(launches, poor kernels); one near its bytes floor is memory bound (BN and elementwise passes).
Needs JAX and flax only (runs on an accelerator image without TensorFlow):

  python benchmarks/step_anatomy.py --model=resnet50 --batch=256 --dtype=bfloat16

``--trace-dir=DIR`` also records a ``jax.profiler`` trace of a few forward + backward passes
there, to read per kernel in TensorBoard's or xprof's profile viewer.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from resnet_jax import benchmark, distributed, summary
from resnet_jax.models import registry


def timed(fn, *args, repeats: int = 10) -> float:
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  for _ in range(repeats):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / repeats


def copy_bandwidth() -> float:
  """Measured device-to-device copy rate: bytes read plus bytes written per second."""
  big = jax.random.normal(jax.random.key(1), (256 * 2**20 // 4,), jnp.float32)
  return 2 * big.nbytes / timed(jax.jit(lambda x: x * 1.0001), big)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='resnet50')
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--image-size', type=int, default=224)
  parser.add_argument('--dtype', default='bfloat16', choices=['float32', 'bfloat16'])
  parser.add_argument('--trace-dir', default='', help='write a jax.profiler trace here')
  parser.add_argument('--trace-steps', type=int, default=3)
  args = parser.parse_args()
  distributed.set_cpu_xla_flags()  # profile what the commands run
  dtype = jnp.dtype(args.dtype)
  model = registry.get_model(args.model, num_classes=1000, dtype=dtype)
  images = jax.random.normal(jax.random.key(2), (args.batch, args.image_size, args.image_size, 3))
  labels = jnp.arange(args.batch) % 1000
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(images[:1])

  def train_forward(params, stats, x):
    return model.apply(
      {'params': params, 'batch_stats': stats}, x, train=True, mutable=['batch_stats']
    )

  def loss(params, stats, x):
    logits, updates = train_forward(params, stats, x)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
    return -jnp.mean(log_probs[jnp.arange(args.batch), labels]), updates

  rows = summary.layer_rows(model, (1, args.image_size, args.image_size, 3))
  forward_flops = 2 * args.batch * float(sum(r.mult_adds for r in rows))
  flops = {'forward, eval BN': forward_flops, 'forward, batch BN': forward_flops}
  flops['forward + backward'] = 3 * forward_flops
  parts = {
    'forward, eval BN': jax.jit(lambda v, x: model.apply(v, x, train=False)),
    'forward, batch BN': jax.jit(lambda v, x: train_forward(v['params'], v['batch_stats'], x)),
    'forward + backward': jax.jit(
      lambda v, x: jax.grad(loss, has_aux=True)(v['params'], v['batch_stats'], x)
    ),
  }
  peak, bandwidth = benchmark.matmul_peak_flops(args.dtype), copy_bandwidth()
  print(
    f'{jax.devices()[0].device_kind}: matmul {peak / 1e12:.1f} TFLOP/s ({args.dtype}), '
    f'copy {bandwidth / 1e9:.0f} GB/s; {args.model} batch {args.batch} {args.dtype}'
  )
  print(f'{"part":<22}{"ms":>9}{"GFLOP":>10}{"GB":>8}{"flop floor ms":>15}{"byte floor ms":>15}')
  for name, fn in parts.items():
    cost = fn.lower(variables, images).compile().cost_analysis()
    nbytes = (cost[0] if isinstance(cost, list) else cost).get('bytes accessed', 0.0)
    seconds = timed(fn, variables, images)
    print(
      f'{name:<22}{seconds * 1e3:9.2f}{flops[name] / 1e9:10.0f}{nbytes / 1e9:8.2f}'
      f'{flops[name] / peak * 1e3:15.2f}{nbytes / bandwidth * 1e3:15.2f}'
    )
  if args.trace_dir:
    step = parts['forward + backward']
    with jax.profiler.trace(args.trace_dir):
      for _ in range(args.trace_steps):
        out = step(variables, images)
      jax.block_until_ready(out)
    print(f'trace of {args.trace_steps} forward + backward passes in {args.trace_dir}')


if __name__ == '__main__':
  main()
