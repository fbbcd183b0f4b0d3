"""Honest throughput: the jitted train step, the eval step, or the input pipeline, timed apart.

Device modes time the real train/eval step on batches already on the devices (so the input
pipeline is not in the figure), after a compile that is timed separately, ending each timing with
``block_until_ready``. The input mode times the paper's augmentation on real JPEGs (random crops of
scikit-learn's two sample photos, 300-427 x 375-640 pixels, quality 90) with tf.data limited to
``--cores`` threads, against a plain decode + resize + crop + flip baseline. The last line printed
is one JSON object.

  python -m resnet_jax.benchmark --config=configs/fake.py --config.model=resnet50 --mode=train
  python -m resnet_jax.benchmark --config=configs/fake.py --mode=input --cores=1
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import time

import jax
import numpy as np

from resnet_jax import experiment, input_pipeline, optim, parallel, scoring, sources, steps


def _device_batch(dp, config, num_classes, mode):
  rng = np.random.default_rng(0)
  local = config.batch_size // jax.process_count()
  shape = (local, config.image_size, config.image_size, 3)
  batch = {
    'image': rng.standard_normal(shape, dtype=np.float32),
    'label': rng.integers(0, num_classes, local).astype(np.int32),
  }
  if mode == 'eval':
    batch['mask'] = np.ones(local, bool)
  return dp.put_batch(batch)


def time_device_step(config, mode: str, num_steps: int) -> dict:
  """Compile time and steady-state step time of the train or eval step."""
  num_classes = config.num_classes or 1000
  mesh = parallel.make_mesh()
  dp = parallel.DataParallel(mesh, config.parallelism)
  input_pipeline.check_batch(config.batch_size, jax.device_count(), jax.process_count())
  model = experiment.build_model(config, num_classes)
  tx = optim.create_optimizer(config)
  state = dp.put_state(experiment.fresh_state(config, model, tx, dp))
  batch = _device_batch(dp, config, num_classes, mode)
  if mode == 'train':
    schedule = optim.schedule_fn(config, 1000, 10_000)
    fn = dp.wrap(
      functools.partial(
        steps.train_step,
        model=model,
        tx=tx,
        config=config,
        base_schedule=schedule,
        num_classes=num_classes,
      )
    )
    step = lambda s: fn(s, batch)[0]  # noqa: E731
  else:
    config.eval_mode = 'center'
    eval_model = experiment.build_model(config, num_classes, train_bn_axis=False)
    fn = dp.wrap(
      functools.partial(scoring.eval_step, model=eval_model, config=config), donate_state=False
    )
    step = lambda s: (fn(s, batch), s)[1]  # noqa: E731

  start = time.perf_counter()
  state = jax.block_until_ready(step(state))
  compile_time = time.perf_counter() - start
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
    'compile_time_s': compile_time,
  }


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


def _baseline_dataset(source, config):
  """Plain tf.data: decode the whole JPEG, resize shorter side to 256, random crop, flip."""
  import tensorflow as tf

  def plain(data, label):
    image = tf.io.decode_jpeg(tf.io.read_file(data), channels=3)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    size = tf.cast(tf.round(shape * 256.0 / tf.reduce_min(shape)), tf.int32)
    image = tf.image.resize(image, size)
    image = tf.image.random_crop(image, [config.image_size, config.image_size, 3])
    return {'image': tf.image.random_flip_left_right(image), 'label': label}

  data, labels = source.fetch(np.arange(source.num_examples))
  ds = tf.data.Dataset.from_tensor_slices((list(data), labels)).repeat()
  return ds.map(plain, num_parallel_calls=tf.data.AUTOTUNE).batch(config.batch_size)


def time_input(config, cores: int, num_batches: int, baseline: bool) -> dict:
  """Images/s of the training input pipeline with tf.data confined to ``cores`` threads."""
  import tensorflow as tf

  with tempfile.TemporaryDirectory() as tmp:
    write_benchmark_jpegs(tmp, count=max(256, config.batch_size * 2))
    config.dataset, config.data_dir = 'folder', tmp
    config.train_split, config.eval_split = 'train', 'test'
    config.mean_image_path = os.path.join(tmp, 'mean.npy')  # computed before timing starts
    source = sources.get_source(config, 'train')
    if baseline:
      ds = _baseline_dataset(source, config)
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
    'cores': cores,
    'images_per_sec': rate,
    'images_per_sec_per_core': rate / cores,
    'step_time_s': seconds / num_batches,
    'compile_time_s': 0.0,
  }


def main(argv):
  del argv
  from resnet_jax import config_check, distributed

  distributed.initialize()
  distributed.hide_accelerators_from_tensorflow()
  config = FLAGS.config
  config_check.check(config, num_devices=jax.device_count(), num_processes=jax.process_count())
  if FLAGS.mode in ('input', 'input_baseline'):
    result = time_input(config, FLAGS.cores, FLAGS.steps, FLAGS.mode == 'input_baseline')
  else:
    result = time_device_step(config, FLAGS.mode, FLAGS.steps)
  print(json.dumps(result))


if __name__ == '__main__':
  from absl import flags
  from ml_collections import config_flags

  FLAGS = flags.FLAGS
  config_flags.DEFINE_config_file(
    'config', None, 'Config (e.g. configs/fake.py).', lock_config=False
  )
  flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'input', 'input_baseline'], 'What to time.')
  flags.DEFINE_integer('steps', 20, 'Timed steps (or input batches).')
  flags.DEFINE_integer('cores', 1, 'tf.data threads for the input modes.')
  flags.mark_flags_as_required(['config'])
  from resnet_jax import cli

  cli.run(main)
