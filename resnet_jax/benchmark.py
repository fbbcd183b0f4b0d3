"""Honest throughput: the whole training loop, the jitted train or eval step, the input pipeline.

- ``end_to_end``: the real loop of ``resnet_jax.main`` (input pipeline, transfers, steps in
  flight, logging, an asynchronous checkpoint) on ``--data=fake`` images or real JPEGs, timed from
  its own metrics records after the first logging window (compile excluded); then the device-only
  step of the same config, and their ratio. Also the model's training FLOPs per image (3x the
  forward's 2 x multiply-adds, from ``summary``), the achieved FLOP/s against the device's measured
  matmul peak (MFU), the compile time and the peak host memory.
- ``train`` / ``eval``: the step alone on batches already on the devices, after a compile timed
  apart, each timing ended with ``block_until_ready``.
- ``input`` / ``input_baseline``: the paper's augmentation on real JPEGs (random crops of
  scikit-learn's two sample photos, 300-427 x 375-640 pixels, quality 90) with tf.data limited to
  ``--cores`` threads, or a plain decode + resize + crop + flip baseline. Under the default
  ``pixel_ops='device'`` the pipeline ends at uint8 crops and the lighting, normalisation and
  flip run in the train step (and in ``train``'s timing); ``--config.pixel_ops=host`` times them
  on the host.

A table goes to stderr; the last line printed is one JSON object.

  python -m resnet_jax.benchmark --config=configs/fake.py --config.model=resnet50 --mode=end_to_end
  python -m resnet_jax.benchmark --config=configs/fake.py --config.model=resnet50 --mode=train
  python -m resnet_jax.benchmark --config=configs/fake.py --mode=input --cores=1
"""

from __future__ import annotations

import functools
import glob
import json
import os
import resource
import sys
import tempfile
import time

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

# Only JAX-side modules here: the device-step modes run on an accelerator image without
# TensorFlow. The modes that read data import the pipeline where they need it.
from resnet_jax.errors import UserError
from resnet_jax.train import network, parallel

FLAGS = flags.FLAGS  # absl's registry; the flags themselves: define_flags()


def time_device_step(config, mode: str, num_steps: int) -> dict:
  """Compile time and steady-state step time of the train or eval step."""
  num_classes = config.num_classes or 1000
  mesh = parallel.make_mesh()
  data_parallel = parallel.DataParallel(mesh, config.parallelism)
  parallel.check_batch(config.batch_size, jax.device_count(), jax.process_count())
  fn, state = network.example_train_step(config, num_classes, data_parallel)
  batch = network.example_batch(data_parallel, config, num_classes, mode)
  if mode == 'train':
    step = lambda s: fn(s, batch)[0]  # noqa: E731
  else:
    from resnet_jax.train import scoring

    config.eval_mode = 'center'
    eval_model = network.build_model(config, num_classes, train_bn_axis=False)
    fn = data_parallel.wrap(
      functools.partial(scoring.eval_step, model=eval_model, config=config), donate_state=False
    )
    # The eval step's outputs are not the state the loop waits on: wait on them each step, or the
    # timing ends before the work does.
    step = lambda s: (jax.block_until_ready(fn(s, batch)), s)[1]  # noqa: E731

  start = time.perf_counter()
  state = jax.block_until_ready(step(state))
  first_call = time.perf_counter() - start
  for _ in range(2):  # settle clocks and allocator
    state = step(state)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(num_steps):
    state = step(state)
  jax.block_until_ready(state)
  step_time = (time.perf_counter() - start) / num_steps
  return {
    'mode': mode,
    'model': config.model,
    'global_batch': config.batch_size,
    'half_precision': config.half_precision,
    'devices': jax.device_count(),
    'device_kind': jax.devices()[0].device_kind,
    'images_per_sec': config.batch_size / step_time,
    'step_time_s': step_time,
    'compile_time_s': max(first_call - step_time, 0.0),  # trace + compile: the first call's excess
    'peak_host_memory_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
  }


def matmul_peak_flops(dtype_name: str, size: int = 0, repeats: int = 10) -> float:
  """FLOP/s of a large square matmul on one device: the peak the MFU is measured against."""
  import jax.numpy as jnp

  size = size or (2048 if jax.default_backend() == 'cpu' else 8192)
  dtype = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}[dtype_name]
  # Random operands: constant ones or zeros toggle fewer bits and can run above the true peak.
  a = jax.random.normal(jax.random.key(0), (size, size), dtype)
  matmul = jax.jit(lambda x: x @ x)
  jax.block_until_ready(matmul(a))
  start = time.perf_counter()
  for _ in range(repeats):
    out = matmul(a)
  jax.block_until_ready(out)
  return 2 * size**3 * repeats / (time.perf_counter() - start)


def train_flops_per_image(config, num_classes: int) -> float:
  """Forward FLOPs (2 per multiply-add) x 3: the backward pass costs about twice the forward."""
  from resnet_jax import summary
  from resnet_jax.models import registry

  model = registry.get_model(config.model, num_classes=num_classes)
  rows = summary.layer_rows(model, (1, config.image_size, config.image_size, 3))
  return 3 * 2 * float(sum(r.mult_adds for r in rows))


def time_end_to_end(config, num_steps: int, data: str) -> dict:
  """The training loop of ``main``, timed from its metrics records, beside the device step."""
  from resnet_jax.train import loop, metrics

  if num_steps < 4:
    raise UserError(f'--steps={num_steps}: end_to_end needs at least 4 (one window is compile).')
  with tempfile.TemporaryDirectory() as tmp:
    if data == 'jpeg':
      write_benchmark_jpegs(os.path.join(tmp, 'data'), count=max(256, config.batch_size * 2))
      config.dataset, config.data_dir = 'folder', os.path.join(tmp, 'data')
      config.train_split, config.eval_split = 'train', 'test'
      config.mean_image_path = os.path.join(tmp, 'mean.npy')
    config.fake_eval_examples = config.batch_size  # the run's final evaluation is not timed
    config.num_train_steps = num_steps
    config.log_every = max(1, num_steps // 4)
    config.eval_every = 10 * num_steps
    config.checkpoint_every = max(1, num_steps // 2)  # one asynchronous save inside the timing
    workdir = os.path.join(tmp, 'run')
    start = time.perf_counter()
    loop.train_and_evaluate(config, workdir)
    wall = time.perf_counter() - start
    logged = [r for r in metrics.read(workdir) if r['split'] == 'train']
  first, last = logged[0], logged[-1]  # the first window holds the compile
  images_per_sec = (
    (last['step'] - first['step']) * config.batch_size / (last['time'] - first['time'])
  )
  device = time_device_step(config, 'train', max(num_steps // 2, 2))
  return {
    'mode': 'end_to_end',
    'data': data,
    'model': config.model,
    'image_size': config.image_size,
    'global_batch': config.batch_size,
    'devices': jax.device_count(),
    'device_kind': jax.devices()[0].device_kind,
    'images_per_sec': images_per_sec,
    'device_images_per_sec': device['images_per_sec'],
    'end_to_end_over_device': images_per_sec / device['images_per_sec'],
    'step_time_s': config.batch_size / images_per_sec,
    'compile_time_s': device['compile_time_s'],
    **utilisation(config, images_per_sec),
    'peak_host_memory_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    'wall_time_s': wall,
  }


def peak_units() -> int:
  """How many times one device's matmul peak the job can reach: every device of an accelerator
  job; on CPU one per process, since a process's devices (``--xla_force_host_platform_device_count``
  simulates several) share its cores, and one device's matmul already runs on all of them."""
  return jax.process_count() if jax.default_backend() == 'cpu' else jax.device_count()


def utilisation(config, images_per_sec: float) -> dict:
  """Training FLOPs per image, the FLOP/s they make at ``images_per_sec``, and the MFU: that
  rate over the measured matmul peak of the job (``peak_units`` x one device's) in the step's
  precision."""
  flops = train_flops_per_image(config, config.num_classes or 1000)
  dtype = config.half_dtype if config.half_precision else 'float32'
  units = peak_units()
  peak = matmul_peak_flops(dtype) * units
  return {
    'dtype': dtype,
    'train_flops_per_image': flops,
    'achieved_flops_per_sec': images_per_sec * flops,
    'peak_units': units,
    'peak_matmul_flops_per_sec': peak,
    'mfu': images_per_sec * flops / peak,
  }


def print_table(result: dict):
  """The result as aligned name/value lines on stderr (the JSON line goes to stdout)."""
  for name, value in result.items():
    shown = f'{value:,.4g}' if isinstance(value, float) else str(value)
    print(f'{name:<28}{shown}', file=sys.stderr)


def write_benchmark_jpegs(directory: str, count: int, seed: int = 0) -> str:
  """A folder dataset of ``count`` JPEGs: random 300-427 x 375-640 crops of the sample photos."""
  from PIL import Image
  from sklearn.datasets import load_sample_images

  photos = load_sample_images().images
  rng = np.random.default_rng(seed)
  for split in ('train', 'test'):
    os.makedirs(os.path.join(directory, split, 'photos'), exist_ok=True)
  for i in range(count):
    photo = photos[i % 2]
    h, w = int(rng.integers(300, 428)), int(rng.integers(375, 641))
    y, x = (
      int(rng.integers(0, photo.shape[0] - h + 1)),
      int(rng.integers(0, photo.shape[1] - w + 1)),
    )
    path = os.path.join(directory, 'train', 'photos', f'{i}.jpg')
    Image.fromarray(photo[y : y + h, x : x + w]).save(path, quality=90)
  Image.fromarray(photos[0]).save(os.path.join(directory, 'test', 'photos', '0.jpg'), quality=90)
  return directory


def _baseline_dataset(directory, config):
  """Plain tf.data: decode the whole JPEG, resize shorter side to 256, random crop, flip."""
  import tensorflow as tf

  def plain(data, label):
    image = tf.io.decode_jpeg(tf.io.read_file(data), channels=3)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    size = tf.cast(tf.round(shape * 256.0 / tf.reduce_min(shape)), tf.int32)
    image = tf.image.resize(image, size)
    image = tf.image.random_crop(image, [config.image_size, config.image_size, 3])
    return {'image': tf.image.random_flip_left_right(image), 'label': label}

  paths = sorted(glob.glob(os.path.join(directory, 'train', '*', '*.jpg')))
  labels = np.zeros(len(paths), np.int32)
  ds = tf.data.Dataset.from_tensor_slices((paths, labels)).repeat()
  return ds.map(plain, num_parallel_calls=tf.data.AUTOTUNE).batch(config.batch_size)


def time_input(config, cores: int, num_batches: int, baseline: bool) -> dict:
  """Images/s of the training input pipeline with tf.data confined to ``cores`` threads."""
  import tensorflow as tf

  from resnet_jax.data import input_pipeline, sources

  with tempfile.TemporaryDirectory() as tmp:
    write_benchmark_jpegs(tmp, count=max(256, config.batch_size * 2))
    config.dataset, config.data_dir = 'folder', tmp
    config.train_split, config.eval_split = 'train', 'test'
    config.mean_image_path = os.path.join(tmp, 'mean.npy')  # computed before timing starts
    source = sources.get_source(config, 'train')
    if baseline:
      ds = _baseline_dataset(tmp, config)
    else:
      ds = input_pipeline.train_dataset(
        config, source, input_pipeline.Layout(config.batch_size, 0, 1)
      )
    options = tf.data.Options()
    options.threading.private_threadpool_size = cores
    options.threading.max_intra_op_parallelism = 1
    it = ds.with_options(options).as_numpy_iterator()
    for _ in range(2):
      next(it)
    start = time.perf_counter()
    for _ in range(num_batches):
      next(it)
    seconds = time.perf_counter() - start
  rate = num_batches * config.batch_size / seconds
  return {
    'mode': 'input_baseline' if baseline else 'input',
    'augment': 'decode+resize256+crop+flip' if baseline else config.train_augment,
    'pixel_ops': 'host' if baseline else config.pixel_ops,  # 'device': uint8 out, finished later
    'cores': cores,
    'images_per_sec': rate,
    'images_per_sec_per_core': rate / cores,
    'step_time_s': seconds / num_batches,
    'compile_time_s': 0.0,
  }


def main(argv):
  del argv
  from resnet_jax import cli, config_check, distributed

  distributed.initialize()
  if FLAGS.mode in ('input', 'input_baseline', 'end_to_end'):  # the modes that run tf.data
    distributed.hide_accelerators_from_tensorflow()
  config = FLAGS.config
  config_check.check_here(config, given=cli.config_fields_given())
  if FLAGS.mode in ('input', 'input_baseline'):
    result = time_input(config, FLAGS.cores, FLAGS.steps, FLAGS.mode == 'input_baseline')
  elif FLAGS.mode == 'end_to_end':
    result = time_end_to_end(config, FLAGS.steps, FLAGS.data)
  else:
    result = time_device_step(config, FLAGS.mode, FLAGS.steps)
    if FLAGS.mode == 'train':
      result.update(utilisation(config, result['images_per_sec']))
  print_table(result)
  print(json.dumps(result), flush=True)


def define_flags():
  """The command's flags; defined only when run as a command, so importing this module (a
  library too) never adds flags to another entry point's."""
  config_flags.DEFINE_config_file(
    'config', None, 'Config (e.g. configs/fake.py).', lock_config=False
  )
  flags.DEFINE_enum(
    'mode', 'train', ['end_to_end', 'train', 'eval', 'input', 'input_baseline'], 'What to time.'
  )
  flags.DEFINE_enum('data', 'fake', ['fake', 'jpeg'], 'end_to_end: fake images or real JPEGs.')
  flags.DEFINE_integer('steps', 20, 'Timed steps (or input batches).')
  flags.DEFINE_integer('cores', 1, 'tf.data threads for the input modes.')
  flags.mark_flags_as_required(['config'])


if __name__ == '__main__':
  from resnet_jax import cli

  define_flags()
  cli.run(main)
