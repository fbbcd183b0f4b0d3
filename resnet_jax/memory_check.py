"""The host memory a config's input batches take, checked before anything is built.

A batch that cannot fit is otherwise met deep inside tf.data or XLA as ``std::bad_alloc`` and an
abort (exit 134), or as a machine that swaps to a halt. Multi-scale testing is where it happens:
each test example carries a view at every size of ``multiscale_sizes``, the largest up to
``max(multiscale_aspects)`` times wider than tall.

The figure is the float32 views of the batches a process holds at once (``prefetch_batches``
ahead, the one being built, and the one handed to the devices), compared with the memory the
kernel says is available (``MemAvailable``). On a CPU backend the devices share that memory, so
the batch counts a second time there. What the network needs on the device beyond its input is
not estimated here: a step that runs out of device memory ends in one line (``cli``).
"""

from __future__ import annotations

import math

from resnet_jax.errors import UserError

FLOAT_BYTES = 4  # views are normalised to float32 on the host


def _view_pixels(config) -> tuple[int, str]:
  """(pixels of one test example's views, what they are) for ``config.eval_mode``."""
  crop = config.eval_image_size or config.image_size
  if config.eval_mode == 'center':
    return crop * crop, f'a {crop}x{crop} crop'
  if config.eval_mode == '10crop':
    return 10 * crop * crop, f'ten {crop}x{crop} crops'
  widest = max(config.multiscale_aspects)
  pixels = sum(s * math.floor(s * widest + 1e-6) for s in config.multiscale_sizes)
  largest = max(config.multiscale_sizes)
  return pixels, f'views at sizes {tuple(config.multiscale_sizes)}, up to {largest}x' + str(
    math.floor(largest * widest + 1e-6)
  )


def input_bytes(config, num_processes: int) -> dict[str, tuple[int, str]]:
  """{'train' / 'eval': (bytes of one process's batches held at once, description)}."""
  held = config.prefetch_batches + 2
  train_rows = config.batch_size // num_processes
  eval_rows = (config.eval_batch_size or config.batch_size) // num_processes
  pixels, views = _view_pixels(config)
  return {
    'train': (
      held * train_rows * config.image_size**2 * 3 * FLOAT_BYTES,
      f'--config.batch_size={config.batch_size} at --config.image_size={config.image_size}',
    ),
    'eval': (
      held * eval_rows * pixels * 3 * FLOAT_BYTES,
      f'{eval_rows} test examples per process, each {views} (--config.eval_mode='
      f'{config.eval_mode!r})',
    ),
  }


def available_host_bytes() -> int | None:
  """The kernel's estimate of memory available without swapping (Linux), else None."""
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def check(config, num_processes: int, cpu_backend: bool, available: int | None = None):
  """Raises UserError when one process's input batches cannot fit in the host's memory."""
  available = available_host_bytes() if available is None else available
  if available is None:
    return
  for split, (needed, what) in input_bytes(config, num_processes).items():
    needed *= 2 if cpu_backend else 1  # the devices' copy lives in the same memory
    if needed > available:
      lower = 'eval_batch_size or the largest of multiscale_sizes' if split == 'eval' else ''
      raise UserError(
        f'Not enough memory for the {split} input: {what} take about {needed / 2**30:,.1f} GiB '
        f'(prefetch_batches={config.prefetch_batches} batches ahead, one being built, one on '
        f'the devices{", in the same memory on CPU" if cpu_backend else ""}), and this machine '
        f'has {available / 2**30:,.1f} GiB available. Lower --config.'
        f'{lower or "batch_size or image_size"}.'
      )
