"""Training loop: learning, shard_map == pmap, exact resume, schedules, checkpoints, errors."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import REPO, TINY, final_params, run_main, tiny, tiny_flags

from configs import default
from resnet_jax import evaluate
from resnet_jax.data import device_pixels, input_pipeline
from resnet_jax.train import checkpoint, experiment, loop, metrics, network, optim, parallel


@pytest.mark.slow
def test_training_lowers_the_loss_and_records_metrics(tmp_path):
  config = tiny(tmp_path, num_train_steps=24, eval_every=24, lr_boundaries=(1000,))
  workdir = str(tmp_path / 'run')
  result = loop.train_and_evaluate(config, workdir)
  records = metrics.read(workdir)
  losses = [r['loss'] for r in records if r['split'] == 'train']
  assert len(losses) == 6 and losses[-1] < 0.7 * losses[0]
  assert result['num_examples'] == 360
  assert {'step', 'epoch', 'learning_rate', 'images_per_sec', 'top1_err', 'top5_err'} <= set(
    records[0]
  )
  assert os.path.exists(os.path.join(workdir, 'config.json'))
  assert os.listdir(os.path.join(workdir, 'tensorboard', 'train'))


@pytest.mark.slow
def test_shard_map_and_pmap_give_the_same_parameters(tmp_path):
  params = {}
  for kind in ('shard_map', 'pmap'):
    config = tiny(tmp_path, parallelism=kind, num_train_steps=5, eval_every=5, keep_best=0)
    workdir = str(tmp_path / kind)
    loop.train_and_evaluate(config, workdir)
    params[kind], step = final_params(workdir, config)
    assert step == 5
  for key, value in params['shard_map'].items():
    np.testing.assert_allclose(params['pmap'][key], value, rtol=1e-5, atol=1e-6, err_msg=key)


# Today's recipe parts: mixup and CutMix (drawn per step), LAMB with the gradient clip, BCE,
# accumulation, repeated augmentation (3 of 16 rows), timm's RandAugment, random erasing, the
# weights' average; ECA attention in every block.
MODERN = dict(
  attention='eca',
  mixup_alpha=0.2,
  cutmix_alpha=1.0,
  optimizer='lamb',
  learning_rate=0.01,
  grad_clip_norm=1.0,
  loss='bce',
  grad_accum_steps=2,
  repeated_augmentation=3,
  augment_policy='randaugment_timm',
  randaugment_magnitude=7,
  randaugment_magnitude_std=0.5,
  randaugment_increasing=True,
  random_erasing=0.25,
  ema_decay=0.9,
  ema_every=2,
  best_metric='ema_top1_err',
)


# A fine-tune's controls: frozen stem and stage 1 (no optimiser state, BatchNorm statistics
# kept), AdamW, lr multipliers, layer-wise decay and the head's initial scale (applied once, not
# on resume).
FINETUNE = dict(
  freeze='conv1,bn1,layer1',
  optimizer='adamw',
  learning_rate=0.01,
  weight_decay=0.05,
  lr_mults='fc=5',
  layer_decay=0.8,
  head_init_scale=0.5,
  fewshot_in_evaluations=True,  # the probe reads the state and must leave the run as it was
  fewshot_shots=(1, 3),
  fewshot_seeds=2,
)


@pytest.mark.slow
@pytest.mark.parametrize(
  'recipe',
  [{}, {'drop_path_rate': 0.3}, MODERN, FINETUNE],
  ids=['paper', 'drop_path', 'modern', 'finetune'],
)
def test_interrupted_and_resumed_run_is_bitwise_equal(tmp_path, recipe):
  options = dict(schedule='plateau', plateau_patience=0, eval_every=4, **recipe)
  config = tiny(tmp_path, **options)
  straight = str(tmp_path / 'straight')
  loop.train_and_evaluate(config, straight)
  resumed = str(tmp_path / 'resumed')
  half = tiny(tmp_path, **options, num_train_steps=6)
  loop.train_and_evaluate(half, resumed)
  loop.train_and_evaluate(config, resumed)  # same command again: resumes at step 6
  a, step_a = final_params(straight, config)
  b, step_b = final_params(resumed, config)
  assert step_a == step_b == 12
  for key in a:
    assert np.array_equal(a[key], b[key]), key
  evals = {
    name: {
      r['step']: (
        r['learning_rate'],
        r['top1_err'],
        r.get('ema_top1_err'),
        r.get('ema_loss'),
        r.get('fewshot_3shot'),
      )
      for r in metrics.read(d)
      if r['split'] == 'eval'
    }
    for name, d in [('straight', straight), ('resumed', resumed)]
  }
  assert evals['resumed'][8] == evals['straight'][8]
  assert evals['resumed'][12] == evals['straight'][12]
  assert (evals['straight'][12][2] is None) == ('ema_decay' not in recipe)
  assert (evals['straight'][12][4] is None) == ('fewshot_in_evaluations' not in recipe)


def test_plateau_rule_and_its_counters():
  from configs import default

  c = default.get_config()
  c.plateau_patience, c.plateau_min_delta, c.plateau_cooldown = 1, 0.01, 1
  state = optim.initial_schedule_state()
  scales = []
  for err in [0.5, 0.45, 0.445, 0.444, 0.3, 0.299, 0.298, 0.297, 0.296]:
    state = optim.plateau_update(c, state, err)
    scales.append(float(state.lr_scale))
  # 0.445 and 0.444 do not improve 0.45 by 0.01: more than patience=1 bad evals -> drop at 0.444.
  # The cooldown eval (0.3, an improvement) resets the count; 0.299 and 0.298 are bad again ->
  # drop at 0.298; then cooldown, and 0.296 is the first bad eval of a new count.
  assert scales == pytest.approx([1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01])
  c.plateau_min_lr = 0.1 * optim.peak_learning_rate(c) * 0.05
  for _ in range(10):
    state = optim.plateau_update(c, state, 1.0)
  assert float(state.lr_scale) == pytest.approx(0.005)


def test_step_schedule_warmup_and_warmup_until_error():
  from configs import cifar10

  c = cifar10.get_config('110')
  base = optim.schedule_fn(c, steps_per_epoch=390, total_steps=64_000)
  s = optim.initial_schedule_state()
  lr = lambda step, st: float(optim.learning_rate(c, base, st._replace(count=step)))  # noqa: E731
  assert lr(0, s) == pytest.approx(0.01)  # the paper's ResNet-110 warm start
  c.warmup_error_window = 4
  for error in (0.9, 0.9, 0.7, 0.7):  # window mean 0.8: not below 0.8
    s = optim.warmup_after_step(c, s, np.float32(error))
  assert lr(100, s) == pytest.approx(0.01) and int(s.warmup_window_steps) == 0
  for error in (0.9, 0.7, 0.7):  # below after 3 steps, but the window is not full yet
    s = optim.warmup_after_step(c, s, np.float32(error))
  assert lr(100, s) == pytest.approx(0.01)
  s = optim.warmup_after_step(c, s, np.float32(0.8))  # mean 0.775
  assert lr(100, s) == pytest.approx(0.1)
  assert lr(32_000, s) == pytest.approx(0.01) and lr(48_000, s) == pytest.approx(0.001)
  c.warmup_epochs = 5
  ramp = optim.schedule_fn(c, 390, 64_000)
  assert float(ramp(975)) == pytest.approx(0.5) and float(ramp(1950)) == pytest.approx(1.0)


@pytest.mark.slow
@pytest.mark.parametrize('policy', ['none', 'autoaugment'])
def test_a_step_on_uint8_crops_equals_a_step_on_the_host_pipelines_images(tmp_path, policy):
  """pixel_ops='device' moves the pixel ops, nothing else: at 8 px (no resize, so uint8 loses
  nothing) a train step from the batch tf.data sends equals, bitwise, one from the host
  pipeline's float images, with lighting, a mean image, pad-crop, flips, random erasing and an
  augmentation policy all drawn."""
  params = {}
  for where in ('host', 'device'):
    config = tiny(
      tmp_path,
      pixel_ops=where,
      pad=2,
      random_flip=True,
      lighting_std=0.1,
      random_erasing=0.5,
      augment_policy=policy,
    )
    run = experiment.Experiment(config, str(tmp_path / where))
    state = run.initial_state()
    local = input_pipeline.train_dataset(config, run.train_source, run.layout, 0, run.pixel_mean())
    batch = next(local.as_numpy_iterator())
    assert batch['image'].dtype == (np.uint8 if where == 'device' else np.float32)
    state, _ = run.train_fn(state, run.data_parallel.put_batch(batch))
    params[where] = experiment.flat_params(state)
    run.checkpointer.close()
  for name, value in params['host'].items():
    np.testing.assert_array_equal(params['device'][name], value, err_msg=name)


@pytest.mark.slow
def test_a_checkpoint_of_the_older_layout_is_converted_on_restore(tmp_path):
  """Before the learning-rate state moved into the optimiser, TrainState had a 'schedule' dict
  beside an opt_state of (weight decay, momentum); such a checkpoint resumes with its values."""
  config = tiny(tmp_path, schedule='plateau')
  run = experiment.Experiment(config, str(tmp_path / 'old'))
  fresh = jax.device_get(network.fresh_state(config, run.model, run.tx, run.data_parallel))
  rng = np.random.default_rng(0)
  distinct = lambda tree: jax.tree.map(lambda x: rng.standard_normal(x.shape, x.dtype), tree)  # noqa: E731
  params, trace = distinct(fresh.params), distinct(fresh.params)
  older = {
    'step': np.int32(7),
    'params': params,
    'batch_stats': fresh.batch_stats,
    'opt_state': [fresh.opt_state[0], fresh.opt_state[1]._replace(trace=trace)],
    'schedule': {  # the first layout: no warm-up window counters yet
      'lr_scale': np.float32(0.1),
      'best': np.float32(0.25),
      'bad_evals': np.int32(1),
      'cooldown': np.int32(2),
      'warmup_done': np.int32(1),
    },
    'loss_scale': {},
  }
  run.checkpointer.save(7, older, run.meta)
  run.checkpointer.wait()

  state = run.initial_state()
  host = jax.device_get(state)
  assert int(host.step) == 7
  saved_params = experiment.flat_params(fresh.replace(params=params))
  for name, value in experiment.flat_params(host).items():
    np.testing.assert_array_equal(value, saved_params[name], err_msg=name)
  same_trace = jax.tree.map(np.array_equal, host.opt_state[1].trace, trace)
  assert all(jax.tree.leaves(same_trace))
  schedule = optim.schedule_state(host.opt_state)
  assert (int(schedule.count), schedule.lr_scale, schedule.best) == (7, np.float32(0.1), 0.25)
  assert (int(schedule.bad_evals), int(schedule.cooldown), int(schedule.warmup_done)) == (1, 2, 1)
  assert int(schedule.warmup_window_steps) == 0
  assert run.learning_rate(state) == pytest.approx(0.1 * optim.peak_learning_rate(config))
  batch = device_pixels.example_batch(config, config.batch_size, rng)  # as pixel_ops='device'
  batch['label'] = np.zeros(config.batch_size, np.int32)
  state, metrics = run.train_fn(state, run.data_parallel.put_batch(batch))  # and it trains on
  assert int(jax.device_get(state.step)) == 8
  lr = float(run.data_parallel.host(metrics)['learning_rate'])
  assert lr == pytest.approx(0.1 * optim.peak_learning_rate(config))


@pytest.mark.slow
def test_warmup_until_error_ends_at_the_same_step_whatever_the_log_cadence(tmp_path):
  """The warm-up phase is decided on the devices every step: logging must not move it."""
  runs = {}
  for log_every in (1, 5):
    config = tiny(
      tmp_path,
      log_every=log_every,
      lr_boundaries=(1000,),
      warmup_until_train_error=0.9,
      warmup_error_window=2,
    )
    workdir = str(tmp_path / f'log{log_every}')
    loop.train_and_evaluate(config, workdir)
    runs[log_every] = final_params(workdir, config)[0]
    if log_every == 1:
      rates = [r['learning_rate'] for r in metrics.read(workdir) if r['split'] == 'train']
  peak = optim.peak_learning_rate(config)
  # Warm start at 0.1x, then the full rate from a step in the middle of the run.
  assert rates[0] == pytest.approx(0.1 * peak) and rates[-1] == pytest.approx(peak)
  assert 2 <= rates.index(pytest.approx(peak)) < len(rates) - 1
  for name, value in runs[1].items():
    np.testing.assert_array_equal(value, runs[5][name], err_msg=name)


@pytest.mark.slow
def test_init_from_another_run_with_a_new_head(tmp_path):
  config = tiny(tmp_path, num_train_steps=6, eval_every=6)
  source = str(tmp_path / 'source')
  loop.train_and_evaluate(config, source)
  src_params, _ = final_params(source, config)
  new = tiny(tmp_path, num_train_steps=1, num_classes=7, init_from=source)
  run = experiment.Experiment(new, str(tmp_path / 'new'))
  state = run.initial_state()
  run.checkpointer.close()
  params = experiment.flat_params(state)
  assert np.array_equal(params['conv1/kernel'], src_params['conv1/kernel'])
  assert params['fc/kernel'].shape == (64, 7)


@pytest.mark.slow
def test_restore_on_fewer_devices(tmp_path):
  """Also: --config.compilation_cache_dir keeps the compiled steps where the user says."""
  workdir, cache = str(tmp_path / 'run'), tmp_path / 'xla_cache'
  flags = [f'--config.compilation_cache_dir={cache}', '--config.checkpoint_every=4']
  first = run_main(workdir, *tiny_flags(tmp_path, num_train_steps=4), *flags)
  assert first.returncode == 0, first.stdout + first.stderr
  cached = len(os.listdir(cache))
  assert cached >= 2  # at least the train and eval steps
  second = run_main(workdir, *tiny_flags(tmp_path, num_train_steps=8), *flags, devices=4)
  assert second.returncode == 0, second.stdout + second.stderr
  assert 'Resuming from step 4' in second.stdout
  # The changed field is named, not continued silently (the device count is not config).
  changed = [line for line in second.stdout.splitlines() if 'config field(s) changed' in line]
  assert len(changed) == 1 and changed[0].endswith('num_train_steps: 4 -> 8'), second.stdout
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['4', '8']
  assert len(os.listdir(cache)) > cached  # 4 devices: other programs, compiled and kept too


@pytest.mark.slow
def test_sigterm_saves_before_exiting(tmp_path):
  workdir = str(tmp_path / 'run')
  proc = run_main(
    workdir,
    *tiny_flags(
      tmp_path, num_train_steps=100000, checkpoint_every=100000, eval_every=100000, log_every=1
    ),
    wait=False,
  )
  deadline = time.time() + 300
  for line in proc.stdout:  # wait until training is really under way
    if b'step 3/' in line or time.time() > deadline:
      break
  proc.send_signal(signal.SIGTERM)
  out = proc.communicate(timeout=300)[0].decode()
  assert proc.returncode == 0, out
  steps = [int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')) if s.isdigit()]
  assert len(steps) == 1 and 3 <= steps[0] < 100000


@pytest.mark.slow
def test_kill_9_during_save_leaves_the_previous_checkpoint(tmp_path):
  script = f"""
import sys, jax, jax.numpy as jnp
sys.path.insert(0, {REPO!r})
from resnet_jax.train import checkpoint
ck = checkpoint.Checkpointer(sys.argv[1], keep=5, keep_best=0, async_save=False)
big = {{'w': jnp.arange(64 * 1024 * 1024, dtype=jnp.float32)}}
ck.save(1, big, {{'model': 'x'}}); ck.wait()
print('saved 1', flush=True)
for step in range(2, 1000):
  ck.save(step, {{'w': big['w'] + step}}, {{'model': 'x'}})
"""
  for delay in (0.3, 1.0):
    directory = str(tmp_path / f'ck{delay}')
    proc = subprocess.Popen([sys.executable, '-c', script, directory], stdout=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b'saved 1')
    time.sleep(delay)
    proc.kill()
    proc.wait()
    ck = checkpoint.Checkpointer(directory, keep=5, keep_best=0, async_save=False)
    latest = ck.latest_step()
    abstract = {'w': jax.ShapeDtypeStruct((64 * 1024 * 1024,), np.float32)}
    state, meta = ck.restore(abstract, {'model': 'x'})
    assert meta['model'] == 'x'
    assert float(state['w'][1]) == 1.0 + (latest if latest > 1 else 0)
    ck.close()


@pytest.mark.slow
@pytest.mark.parametrize('half_dtype', ['bfloat16', 'float16'])
def test_half_precision_trains_with_float32_state(tmp_path, half_dtype):
  config = tiny(
    tmp_path,
    half_precision=True,
    half_dtype=half_dtype,
    num_train_steps=16,
    eval_every=16,
    lr_boundaries=(1000,),
  )
  workdir = str(tmp_path / half_dtype)
  result = loop.train_and_evaluate(config, workdir)
  losses = [r['loss'] for r in metrics.read(workdir) if r['split'] == 'train']
  assert losses[-1] < 0.8 * losses[0] and result['num_examples'] == 360
  run = experiment.Experiment(config, workdir)
  state = run.initial_state()
  run.checkpointer.close()
  momentum = state.opt_state[:-1]  # the last is the schedule's counters (optim.ScheduleState)
  dtypes = {x.dtype for x in jax.tree.leaves((state.params, state.batch_stats, momentum))}
  assert dtypes == {np.dtype('float32')}
  assert optim.schedule_state(state.opt_state).lr_scale.dtype == np.float32
  if half_dtype == 'float16':
    assert float(state.loss_scale['scale']) > 1 and int(state.loss_scale['good_steps']) == 16
  else:
    assert state.loss_scale == {}


@pytest.mark.slow
def test_checkpoints_keep_the_latest_and_the_best(tmp_path):
  ck = checkpoint.Checkpointer(str(tmp_path / 'ck'), keep=2, keep_best=1, async_save=False)
  for step, err in enumerate([0.5, 0.2, 0.4, 0.45, 0.48], start=1):
    ck.save(step, {'w': np.full(4, step, np.float32)}, {'model': 'x'}, {'top1_err': err})
  ck.wait()
  assert sorted(ck.manager.all_steps()) == [2, 4, 5]
  abstract = {'w': jax.ShapeDtypeStruct((4,), np.float32)}
  state, _ = ck.restore(abstract, {'model': 'x'}, step=2)
  assert state['w'].tolist() == [2.0] * 4
  ck.close()


# A run of main at 862918f, before the modules moved into packages: cifar_resnet8 on digits,
# 4 steps on one device, its checkpoint at step 4, and that state's parameters as params.npz.
BEFORE_THE_MOVE = os.path.join(REPO, 'tests', 'data', 'checkpoint_before_subpackages')
BEFORE_THE_MOVE_FLAGS = [
  *(f'--config.{k}={v}' for k, v in dict(TINY, eval_every=4, checkpoint_every=4).items()),
  *('--config.log_every=2', '--config.async_checkpoints=False', '--config.schedule=step'),
  *('--config.lr_boundaries=(2,)', '--config.lr_boundaries_unit=steps', '--config.warmup_epochs=0'),
]


@pytest.mark.slow
def test_a_checkpoint_written_before_the_package_move_resumes(tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(BEFORE_THE_MOVE, workdir)
  with open(os.path.join(workdir, 'config.json')) as f:
    saved = json.load(f)
  config = default.get_config()
  config.update({k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})

  params, step = final_params(workdir, config)
  assert step == 4
  with np.load(os.path.join(BEFORE_THE_MOVE, 'params.npz')) as written:
    assert sorted(written) == sorted(params) and len(params) == 23
    for name in written:
      np.testing.assert_array_equal(params[name], written[name], err_msg=name)
  # The restored state scores the test split as the run that wrote it did (360 examples).
  then = [r for r in metrics.read(workdir) if r['split'] == 'eval'][-1]
  now = evaluate.evaluate_workdir(config, workdir)
  assert now['step'] == 4 and now['num_examples'] == then['num_examples'] == 360
  assert now['top1_err'] == pytest.approx(then['top1_err'], abs=1.01 / 360)
  assert now['loss'] == pytest.approx(then['loss'], rel=1e-4)

  # The same command, two steps longer, resumes it.
  resumed = run_main(workdir, *BEFORE_THE_MOVE_FLAGS, '--config.num_train_steps=6', devices=1)
  assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
  assert 'Resuming from step 4' in resumed.stdout + resumed.stderr
  train_steps = [r['step'] for r in metrics.read(workdir) if r['split'] == 'train']
  assert train_steps == [2, 4, 6]
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['4', '6']


@pytest.mark.slow
def test_stochastic_depth_draws_are_keyed_on_the_step_and_the_global_row(tmp_path):
  """The train step's drop-path keys: a fixed function of (seed, step, global row) -- the same
  step twice gives the same loss; another step (the same weights and batch) changes it."""
  data_parallel = parallel.DataParallel(parallel.make_mesh(), 'shard_map')

  def first_loss(step=0, **options):
    config = tiny(tmp_path, batch_size=16, **options)
    train_step, state = network.example_train_step(config, 10, data_parallel)
    state = state.replace(step=jax.numpy.int32(step))
    batch = network.example_batch(data_parallel, config, 10)
    return float(data_parallel.host(train_step(state, batch)[1])['loss'])

  dropping = first_loss(drop_path_rate=0.5)
  assert first_loss(drop_path_rate=0.5) == dropping
  assert first_loss(drop_path_rate=0.0) != dropping
  assert first_loss(step=1, drop_path_rate=0.5) != dropping
