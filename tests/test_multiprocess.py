"""Real multi-process runs: 2 processes x 2 CPU devices through launch.sh local, beside one
process with the same 4 devices."""

import os
import re
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
from flax import traverse_util
from helpers import REPO, digits_config, final_params, run_main, tiny, tiny_flags

from resnet_jax.train import experiment, metrics

pytestmark = pytest.mark.slow


def launch_local(tmp_path, workdir, flags, port, wait=True):
  env = dict(os.environ, DEVICES_PER_PROCESS='2', PORT=str(port))
  env.pop('XLA_FLAGS', None)
  env['PYTHONPATH'] = REPO
  cmd = [
    'bash',
    'launch.sh',
    'local',
    '2',
    '--',
    '--config=configs/digits.py',
    f'--workdir={workdir}',
    *flags,
  ]
  if not wait:
    return subprocess.Popen(
      cmd,
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      start_new_session=True,
    )
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_two_processes_match_one_process_and_restore_anywhere(tmp_path):
  # Evaluations use multi-scale testing: its bucket counts are gathered across processes.
  # Stochastic depth is on: each example's draws must not depend on which process trains it.
  # So are mixup and CutMix (each row mixed with its global predecessor, across processes),
  # accumulation, repeated augmentation and the weights' average. (Augmentation policies and
  # random erasing: their batches are compared bitwise in test_auto_augment.py; through 12
  # steps of their noisier training the collectives' float rounding grows past 1e-4.)
  steps = dict(
    drop_path_rate=0.3,
    repeated_augmentation=2,
    mixup_alpha=0.2,
    cutmix_alpha=1.0,
    grad_accum_steps=2,
    ema_decay=0.9,
    num_train_steps=12,
    eval_every=6,
    checkpoint_every=6,
    eval_mode='multiscale',
    multiscale_sizes=(8, 12),
    freeze='conv1,bn1',  # a fine-tune's controls: no state for the stem, per-tensor rates
    lr_mults='fc=2',
    layer_decay=0.9,
    fewshot_in_evaluations=True,  # features gathered across processes, in the global order
    fewshot_shots=(1, 5),
    fewshot_seeds=2,
    attention='se',  # squeeze-and-excitation in every block
  )
  multi, single = str(tmp_path / 'multi'), str(tmp_path / 'single')
  result = launch_local(tmp_path, multi, tiny_flags(tmp_path, **steps), port=12421)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert 'no such job' not in result.stderr  # bash's wait on processes already reaped
  result = run_main(single, *tiny_flags(tmp_path, **steps), devices=4)
  assert result.returncode == 0, result.stderr[-3000:]
  evals = [r for r in metrics.read(multi) if r['split'] == 'eval']
  assert [e['num_examples'] for e in evals] == [360, 360]
  config = tiny(tmp_path, **steps)
  config.mean_image_path = str(tmp_path / 'mean.npy')
  multi_params, multi_step = final_params(multi, config)  # restored in this 1-process session
  single_params, single_step = final_params(single, config)
  assert multi_step == single_step == 12
  for key, value in single_params.items():
    np.testing.assert_allclose(multi_params[key], value, rtol=1e-4, atol=1e-5, err_msg=key)
  single_evals = [r for r in metrics.read(single) if r['split'] == 'eval']
  for ours, theirs in zip(evals, single_evals, strict=True):
    assert abs(ours['top1_err'] - theirs['top1_err']) <= 1 / 360 + 1e-9
    assert ours['loss'] == pytest.approx(theirs['loss'], rel=1e-3)
    assert abs(ours['ema_top1_err'] - theirs['ema_top1_err']) <= 1 / 360 + 1e-9
    assert abs(ours['fewshot_5shot'] - theirs['fewshot_5shot']) <= 2 / 360 + 1e-9


def _process_ids(pattern: str, launcher_pid: int) -> dict[int, int]:
  """JAX process id -> pid of the workers whose command line matches ``pattern``."""
  pids = subprocess.run(['pgrep', '-f', pattern], capture_output=True, text=True).stdout.split()
  workers = {}
  for pid in map(int, pids):
    try:
      with open(f'/proc/{pid}/environ', 'rb') as f:
        env = dict(v.split(b'=', 1) for v in f.read().split(b'\0') if b'=' in v)
    except OSError:
      continue
    if pid != launcher_pid and b'JAX_PROCESS_ID' in env:
      workers[int(env[b'JAX_PROCESS_ID'])] = pid
  return workers


def test_a_killed_process_ends_the_job_in_seconds_with_one_line(tmp_path):
  killed = 0  # the process that holds the workdir's lock and JAX's coordination service
  workdir = str(tmp_path / 'run')
  flags = tiny_flags(
    tmp_path, num_train_steps=100000, eval_every=100000, checkpoint_every=10, log_every=1
  )
  launcher = launch_local(tmp_path, workdir, flags, port=12431, wait=False)
  try:
    deadline = time.time() + 300
    while not os.path.isdir(os.path.join(workdir, 'checkpoints', '10')) and time.time() < deadline:
      time.sleep(0.2)
    workers = _process_ids(f'workdir={workdir}', launcher.pid)
    assert sorted(workers) == [0, 1]
    os.kill(workers[killed], signal.SIGKILL)
    start = time.time()
    out = launcher.communicate(timeout=180)[0].decode()
  finally:  # a failed assertion must not leave a 100,000-step job behind
    if launcher.poll() is None:
      os.killpg(launcher.pid, signal.SIGKILL)
  assert time.time() - start < 20, out[-3000:]
  assert launcher.returncode == 128 + signal.SIGKILL, out[-3000:]
  # The last line names the process that died. The survivor cannot go on alone: it ends by
  # itself (with our one line when its collective fails first, or terminated by JAX's
  # coordination service, "another task died") or, blocked in a collective or a checkpoint
  # barrier, is stopped by the launcher after STOP_GRACE_SECONDS (10).
  checkpoints = sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')))
  assert checkpoints and checkpoints[-1] >= 10  # what was saved stays
  assert out.strip().splitlines()[-1] == (
    f'launch.sh: the job stopped: process {killed} (pid {workers[killed]}) was killed by SIGKILL.'
    f' Its last checkpoint (step {checkpoints[-1]}) is kept: run the same command to resume.'
  ), out[-3000:]
  # The survivor, whose coordinator died, says nothing more: no abort report, stack or dump.
  noise = ('Terminating process', 'Check failure', 'Fatal Python error', 'Aborted', 'Thread 0x')
  assert not [n for n in noise if n in out], out[-3000:]
  assert ' Killed ' not in out and 'no such job' not in out  # bash's own job reports
  assert not os.path.exists(os.path.join(workdir, 'run.lock'))
  alive = subprocess.run(['pgrep', '-f', f'workdir={workdir}'], capture_output=True).stdout
  assert not alive


def test_a_process_that_dies_before_any_checkpoint_is_not_said_to_keep_one(tmp_path):
  workdir = str(tmp_path / 'run')
  flags = tiny_flags(tmp_path, num_train_steps=100000, eval_every=100000, checkpoint_every=100000)
  launcher = launch_local(tmp_path, workdir, flags, port=12451, wait=False)
  try:
    deadline = time.time() + 300
    while len(_process_ids(f'workdir={workdir}', launcher.pid)) < 2 and time.time() < deadline:
      time.sleep(0.2)
    workers = _process_ids(f'workdir={workdir}', launcher.pid)
    os.kill(workers[1], signal.SIGKILL)
    out = launcher.communicate(timeout=180)[0].decode()
  finally:
    if launcher.poll() is None:
      os.killpg(launcher.pid, signal.SIGKILL)
  assert out.strip().splitlines()[-1] == (
    f'launch.sh: the job stopped: process 1 (pid {workers[1]}) was killed by SIGKILL.'
    ' It had saved no checkpoint yet: run the same command to start again.'
  ), out[-3000:]
  assert not os.path.exists(os.path.join(workdir, 'checkpoints')) or not os.listdir(
    os.path.join(workdir, 'checkpoints')
  )


def test_sigterm_to_one_process_checkpoints_both_and_exits(tmp_path):
  workdir = str(tmp_path / 'run')
  flags = tiny_flags(
    tmp_path, num_train_steps=100000, eval_every=100000, checkpoint_every=20, log_every=100000
  )
  launcher = launch_local(tmp_path, workdir, flags, port=12441, wait=False)
  first = os.path.join(workdir, 'checkpoints', '20')
  deadline = time.time() + 300
  while not os.path.isdir(first) and time.time() < deadline and launcher.poll() is None:
    time.sleep(0.2)
  assert os.path.isdir(first), 'training did not reach step 20'
  workers = subprocess.run(
    ['pgrep', '-f', f'workdir={workdir}'], capture_output=True, text=True
  ).stdout.split()
  workers = sorted(int(p) for p in workers if int(p) != launcher.pid)
  assert len(workers) >= 2
  signalled = time.time()
  os.kill(workers[-1], signal.SIGTERM)  # as a preempted host: one process is told
  out = launcher.communicate(timeout=300)[0].decode()
  assert launcher.returncode == 0, out[-3000:]
  assert time.time() - signalled < 90, out[-3000:]
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')) if s.isdigit())
  saved = {int(s) for s in re.findall(r'Saved step (\d+) after SIGTERM', out)}
  assert saved == {steps[-1]} and steps[-1] > 20, (saved, steps)  # both processes, one step
  assert not os.path.exists(os.path.join(workdir, 'run.lock'))


def test_googlenet_with_its_auxiliary_heads_resumes_bitwise_and_two_processes_match_one(tmp_path):
  """The auxiliary classifiers (their parameters, BatchNorm statistics and dropout draws, 0.7)
  through an interruption and across processes: one process interrupted after step 1 and resumed
  equals its straight run bit for bit; two processes equal one to the collectives' rounding."""
  flags = [
    '--config.model=googlenet',  # image_size 16 (configs/digits.py): above its 15-pixel minimum
    '--config.learning_rate=0.02',
    '--config.schedule=step',  # a rate that does not depend on num_train_steps: the interrupted
    '--config.lr_boundaries=(100,)',  # run compiles the straight run's program (the tests'
    '--config.lr_boundaries_unit=steps',  # compilation cache)
    '--config.warmup_epochs=0',
    '--config.batch_size=32',
    '--config.num_train_steps=2',
    '--config.checkpoint_every=1',
    '--config.eval_every=2',
    '--config.log_every=1',
    '--config.async_checkpoints=False',
    f'--config.mean_image_path={tmp_path / "mean.npy"}',
  ]
  straight, resumed, multi = (str(tmp_path / name) for name in ('straight', 'resumed', 'multi'))
  for workdir, extra in ((straight, []), (resumed, ['--config.num_train_steps=1']), (resumed, [])):
    result = run_main(workdir, *flags, *extra, devices=4)
    assert result.returncode == 0, result.stderr[-3000:]
  result = launch_local(tmp_path, multi, flags, port=12461)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

  config = digits_config(tmp_path, model='googlenet', batch_size=32, num_train_steps=2)
  config.mean_image_path = str(tmp_path / 'mean.npy')
  ours, steps = {}, {}
  for name in ('initial', 'straight', 'resumed', 'multi'):
    run = experiment.Experiment(config, str(tmp_path / name))  # 'initial': a new workdir, step 0
    state = run.data_parallel.host(run.initial_state())
    run.checkpointer.close()
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    ours[name] = traverse_util.flatten_dict(jax.device_get(variables), sep='/')
    steps[name] = int(state.step)
  assert steps == {'initial': 0, 'straight': 2, 'resumed': 2, 'multi': 2}
  assert {'params/aux1/fc2/kernel', 'batch_stats/aux2/conv/bn/mean'} <= set(ours['straight'])
  for key, value in ours['straight'].items():
    assert np.array_equal(ours['resumed'][key], value), key
  # Two processes compile each device's program for fewer threads, so its sums round in another
  # order. The heads and the forward pass agree to a ten-thousandth of how far two steps moved
  # them, element by element (a dropout key or an auxiliary weight taken differently would move
  # them by their whole step). The trunk's gradients pass backwards through BatchNorm over 8 rows
  # of 1x1 maps, which subtracts nearly equal sums: there the same rounding grows, most in a few
  # elements (the largest one 5.8% and 11.1% of its tensor's largest move in two runs), so the
  # trunk is held to a tenth of its move as a whole tensor (norm-wise; 2.2% at most in the 11.1%
  # run, inception5a.branch3_1's kernel).
  for key, value in ours['straight'].items():
    moved = value - ours['initial'][key]
    off = ours['multi'][key] - value
    rounding = 2 * np.spacing(np.abs(value).max())  # float32's step at the stored values
    assert np.abs(moved).max() > 0, key
    if key.startswith(('batch_stats/', 'params/aux', 'params/fc/')):  # the heads
      assert np.abs(off).max() <= 1e-4 * np.abs(moved).max() + rounding, key
    else:
      assert np.linalg.norm(off) <= 0.1 * np.linalg.norm(moved) + rounding * np.sqrt(off.size), key
  losses = {  # the last evaluation (the interrupted run evaluated at step 1 too)
    name: [r['loss'] for r in metrics.read(str(tmp_path / name)) if r['split'] == 'eval'][-1]
    for name in ('straight', 'resumed', 'multi')
  }
  assert losses['resumed'] == losses['straight']
  assert losses['multi'] == pytest.approx(losses['straight'], rel=1e-4)
