"""Field-ready runs: preemption promptness, one run per workdir, damaged and refused checkpoints,
init_from across topologies. Driven through the command line where a user drives it."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import REPO, final_params, run_main, tiny, tiny_flags

from resnet_jax.train import checkpoint, loop, workdir_lock


@pytest.mark.slow
def test_sigterm_checkpoints_within_two_steps_whatever_log_every(tmp_path):
  workdir = str(tmp_path / 'run')
  proc = run_main(
    workdir,
    *tiny_flags(
      tmp_path,
      num_train_steps=100000,
      checkpoint_every=20,
      eval_every=100000,
      log_every=100000,  # before the bound, the loop ran up to this many steps ahead
      keep_checkpoints=100,
    ),
    devices=2,  # the bound is per step, whatever the device count; two keep the step cheap
    wait=False,
  )
  first = os.path.join(workdir, 'checkpoints', '20')
  deadline = time.time() + 300
  while not os.path.isdir(first) and time.time() < deadline and proc.poll() is None:
    time.sleep(0.2)
  assert os.path.isdir(first), 'training did not reach step 20'
  signalled = time.time()
  proc.send_signal(signal.SIGTERM)
  out = proc.communicate(timeout=300)[0].decode()
  assert proc.returncode == 0, out
  assert time.time() - signalled < 60, out
  at = re.search(r'SIGTERM at step (\d+) \(devices finished step (\d+)\)', out)
  assert at, out
  loop_step, finished = int(at[1]), int(at[2])
  saved = max(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')) if s.isdigit())
  assert loop_step - finished <= 2
  assert finished <= saved <= loop_step + 2, (finished, loop_step, saved)
  assert not os.path.exists(os.path.join(workdir, workdir_lock.LOCK_NAME))  # released


@pytest.mark.slow
def test_a_second_run_on_a_locked_workdir_is_refused_then_an_abandoned_lock_is_taken(tmp_path):
  workdir = tmp_path / 'run'
  holder = workdir_lock.WorkdirLock(workdir, stale_seconds=120, heartbeat_seconds=30)
  holder.acquire()  # a live run on this host: this test's own process
  flags = tiny_flags(tmp_path, num_train_steps=2, eval_every=2, checkpoint_every=2)
  refused = run_main(str(workdir), *flags)
  assert refused.returncode == 2
  assert 'Traceback' not in refused.stderr
  last = refused.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and f'pid {os.getpid()}' in last, last
  assert os.listdir(workdir) == [workdir_lock.LOCK_NAME]  # nothing else written
  holder.release()

  assert not workdir.exists()  # the holder created it, wrote nothing: released with the lock
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  workdir.mkdir()
  lock = workdir / workdir_lock.LOCK_NAME
  lock.write_text(json.dumps(dict(host=socket.gethostname(), pid=dead.pid, heartbeat=time.time())))
  taken = run_main(str(workdir), *flags, devices=2)
  assert taken.returncode == 0, taken.stderr[-3000:]
  assert 'Taking over the abandoned lock' in taken.stdout
  assert not lock.exists()


@pytest.mark.parametrize(('age', 'refused'), [(10, True), (1000, False)])
def test_a_lock_from_another_host_is_abandoned_only_after_its_heartbeat_goes_stale(
  tmp_path, age, refused
):
  (tmp_path / workdir_lock.LOCK_NAME).write_text(
    json.dumps(dict(host='other-host', pid=1, started='x', heartbeat=time.time() - age))
  )
  lock = workdir_lock.WorkdirLock(tmp_path, stale_seconds=120, heartbeat_seconds=30)
  if refused:
    with pytest.raises(workdir_lock.WorkdirLockedError, match='host other-host, pid 1'):
      lock.acquire()
  else:
    lock.acquire()
    assert json.loads((tmp_path / workdir_lock.LOCK_NAME).read_text())['pid'] == os.getpid()
    lock.release()


@pytest.mark.slow
def test_damaged_latest_checkpoint_is_set_aside_and_the_previous_one_resumes(tmp_path):
  config = tiny(tmp_path, num_train_steps=6, eval_every=6, checkpoint_every=3, keep_checkpoints=5)
  workdir = str(tmp_path / 'run')
  loop.train_and_evaluate(config, workdir)
  reference, _ = final_params(workdir, config)
  # A run of another model is refused, and the workdir's config is untouched by it.
  other = tiny(tmp_path, model='cifar_resnet14', num_train_steps=6)
  with pytest.raises(checkpoint.CheckpointError, match="model: saved 'cifar_resnet8'"):
    loop.train_and_evaluate(other, workdir)
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['model'] == 'cifar_resnet8'
  # Truncate every data file of step 6.
  for root, _, files in os.walk(os.path.join(workdir, 'checkpoints', '6', 'state')):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) // 2)
  loop.train_and_evaluate(config, workdir)  # resumes from 3, trains 4..6 again
  assert os.path.isdir(os.path.join(workdir, checkpoint.DAMAGED_DIR, '6', 'state'))
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3', '6']
  assert sorted(f for f in os.listdir(workdir) if f.startswith('config')) == [
    'config.0.json',
    'config.3.json',
    'config.json',
  ]
  resumed, step = final_params(workdir, config)
  assert step == 6
  for key, value in reference.items():  # the same steps again: the same weights, bitwise
    np.testing.assert_array_equal(resumed[key], value, err_msg=key)
  # With no readable step left: one error naming every step, and nothing moved.
  for step_dir in ('3', '6'):
    metadata = os.path.join(workdir, 'checkpoints', step_dir, 'meta', 'metadata')
    with open(metadata, 'w') as f:
      f.write('{not json')
  with pytest.raises(checkpoint.CheckpointError, match=r'No checkpoint .*step 6: .*step 3: '):
    loop.train_and_evaluate(config, workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3', '6']


@pytest.mark.slow
def test_init_from_an_8_device_run_into_a_4_device_run(tmp_path):
  source = str(tmp_path / 'source')
  first = run_main(source, *tiny_flags(tmp_path, num_train_steps=2, checkpoint_every=2))
  assert first.returncode == 0, first.stderr[-3000:]
  target = str(tmp_path / 'target')
  # learning_rate 0: the target's saved weights are exactly what init_from loaded.
  flags = tiny_flags(tmp_path, num_train_steps=1, eval_every=1, init_from=source, learning_rate=0)
  second = run_main(target, *flags, devices=4)
  assert second.returncode == 0, second.stderr[-3000:]
  config = tiny(tmp_path)
  src_params, _ = final_params(source, config)
  loaded, step = final_params(target, config)
  assert step == 1
  for key, value in src_params.items():
    np.testing.assert_array_equal(loaded[key], value, err_msg=key)


@pytest.mark.slow
def test_evaluate_and_export_beside_a_trainer_that_deletes_what_they_read(tmp_path):
  """A trainer saving every step and keeping one deletes the step a reader listed, often while
  it is being read: evaluate and export read the new newest step, and blame no damage. export
  runs on 1 device, the trainer on 8 (a run's weights read on another topology)."""
  workdir = str(tmp_path / 'run')
  flags = tiny_flags(
    tmp_path,
    num_train_steps=100000,
    checkpoint_every=1,
    keep_checkpoints=1,
    keep_best=0,
    eval_every=100000,
    log_every=100000,
  )
  trainer = run_main(workdir, *flags, wait=False)
  try:
    deadline = time.time() + 300
    while time.time() < deadline and not os.path.isdir(os.path.join(workdir, 'checkpoints', '5')):
      assert trainer.poll() is None, trainer.stdout.read().decode()[-3000:]
      time.sleep(0.2)
    env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS='--xla_force_host_platform_device_count=8')
    evaluate_flags = ['--config=configs/digits.py', *flags]
    for _ in range(2):
      evaluated = subprocess.run(
        [sys.executable, '-m', 'resnet_jax.evaluate', f'--workdir={workdir}', *evaluate_flags],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
      )
      assert evaluated.returncode == 0, evaluated.stderr[-3000:]
      assert 'damaged' not in evaluated.stderr, evaluated.stderr[-3000:]
      result = json.loads(evaluated.stdout.strip().splitlines()[-1])
      assert result['step'] > 5 and result['num_examples'] == 360
    one_device = dict(os.environ, PYTHONPATH=REPO)
    one_device.pop('XLA_FLAGS', None)
    exported = subprocess.run(
      [sys.executable, '-m', 'resnet_jax.export', f'--workdir={workdir}', '--out=m.onnx'],
      cwd=str(tmp_path),
      env=one_device,
      capture_output=True,
      text=True,
      timeout=300,
    )
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert 'logits within' in exported.stdout and os.path.getsize(tmp_path / 'm.onnx') > 10000
    assert trainer.poll() is None  # the trainer went on throughout
  finally:
    trainer.kill()
    trainer.wait()
