"""Fault injection through the command line: what is on disk after a diverging run, a resumed
keep-best run, Ctrl-C, a killed process, a full or read-only disk; the exit code and the one last
line of each."""

import collections
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import jax
import numpy as np
import pytest
from helpers import REPO, run_main, tiny, tiny_flags

from resnet_jax import report
from resnet_jax.train import divergence, experiment, metrics, workdir_lock


def steps_on_disk(workdir) -> list[int]:
  directory = os.path.join(workdir, 'checkpoints')
  return sorted(int(s) for s in os.listdir(directory) if s.isdigit())


def last_line(text: str) -> str:
  return text.strip().splitlines()[-1]


def train_eval_records(workdir) -> list[dict]:
  return [r for r in metrics.read(workdir) if r['split'] in ('train', 'eval')]


@pytest.mark.slow
def test_a_nonfinite_step_is_never_applied(tmp_path):
  config = tiny(tmp_path, pixel_ops='host')
  run = experiment.Experiment(config, str(tmp_path / 'run'))
  state = run.initial_state()
  before = run.data_parallel.host(state)
  rows = config.batch_size
  batch = {
    'image': np.full((rows, 8, 8, 3), np.nan, np.float32),
    'label': np.zeros((rows,), np.int32),
  }
  state, step_metrics = run.train_fn(state, run.data_parallel.put_batch(batch))
  after, flags = run.data_parallel.host((state, step_metrics))
  assert int(after.step) == 1  # the batch is consumed
  assert flags['nonfinite'] == divergence.NONFINITE_LOSS
  for name in ('params', 'batch_stats', 'opt_state'):  # bitwise the old state, the lr's count too
    pairs = zip(_leaves(before, name), _leaves(after, name), strict=True)
    assert all(np.array_equal(a, b) for a, b in pairs), name
  batch['image'] = np.zeros_like(batch['image'])
  state, step_metrics = run.train_fn(state, run.data_parallel.put_batch(batch))
  assert run.data_parallel.host(step_metrics)['nonfinite'] == 0
  run.checkpointer.close()


def _leaves(state, name):
  return jax.tree.leaves(getattr(state, name))


def _run(workdir, tmp_path, **flags):
  result = run_main(workdir, *tiny_flags(tmp_path, **flags), devices=2)
  return result, result.stdout + result.stderr


@pytest.mark.slow
def test_divergence_stops_without_a_save_and_keep_best_survives_resumes(tmp_path):
  workdir = str(tmp_path / 'run')
  common = dict(eval_every=6, checkpoint_every=6, keep_checkpoints=1, keep_best=1)
  first, out = _run(workdir, tmp_path, num_train_steps=12, **common)
  assert first.returncode == 0, out
  kept = steps_on_disk(workdir)
  files_before = {s: sorted(os.listdir(os.path.join(workdir, 'checkpoints', str(s)))) for s in kept}

  # Resumed with a learning rate that diverges at once: exit 3, one line, nothing saved or deleted.
  diverged, out = _run(workdir, tmp_path, num_train_steps=30, learning_rate=1e4, **common)
  assert diverged.returncode == divergence.DIVERGED_EXIT_CODE, out
  line = last_line(diverged.stderr)
  assert line.startswith('error: training diverged: step '), out
  assert f'Last checkpoint: step 12 in {workdir}' in line, line
  assert 'Traceback' not in out
  assert steps_on_disk(workdir) == kept
  for s in kept:
    assert sorted(os.listdir(os.path.join(workdir, 'checkpoints', str(s)))) == files_before[s]
  events = [r for r in metrics.read(workdir) if r['split'] == divergence.SPLIT]
  assert [e['action'] for e in events] == ['stopped'] and events[0]['step'] > 12
  rows = report.run_rows(workdir)
  assert f'diverged at step {events[0]["step"]}' in rows[0]['run']

  # Resumed again with a rate that trains badly but finitely, through skipped steps if any: the
  # best evaluation of all, saved before the resume, stays on disk beside the latest step.
  resumed, out = _run(
    workdir,
    tmp_path,
    num_train_steps=24,
    learning_rate=3.0,
    on_nonfinite='skip',
    nonfinite_skip_limit=1000,
    **common,
  )
  assert resumed.returncode == 0, out
  evals = {r['step']: r['top1_err'] for r in metrics.read(workdir) if r['split'] == 'eval'}
  assert sorted(evals) == [6, 12, 18, 24]  # the diverged attempt's records were dropped
  best = min(evals.values())
  best_steps = [s for s, e in evals.items() if e == best]
  assert max(best_steps) <= 12, evals  # the best is from before the resume: the case at stake
  on_disk = steps_on_disk(workdir)
  assert 24 in on_disk and set(best_steps) & set(on_disk), (on_disk, evals)
  assert len(on_disk) == 2
  pairs = collections.Counter((r['step'], r['split']) for r in train_eval_records(workdir))
  assert max(pairs.values()) == 1, pairs
  assert 'diverged' not in report.run_rows(workdir)[0]['run']


@pytest.mark.slow
def test_skip_mode_skips_then_stops_after_the_limit(tmp_path):
  workdir = str(tmp_path / 'run')
  result, out = _run(
    workdir,
    tmp_path,
    num_train_steps=40,
    learning_rate=1e4,
    on_nonfinite='skip',
    nonfinite_skip_limit=3,
    checkpoint_every=40,
    eval_every=40,
  )
  assert result.returncode == divergence.DIVERGED_EXIT_CODE, out
  assert '3 steps in a row' in last_line(result.stderr)
  events = [r for r in metrics.read(workdir) if r['split'] == divergence.SPLIT]
  assert [e['action'] for e in events[-3:]] == ['skipped', 'skipped', 'stopped']
  assert [e['step'] for e in events[-3:]] == list(range(events[-3]['step'], events[-1]['step'] + 1))
  assert not os.path.exists(os.path.join(workdir, 'checkpoints'))  # nothing after a NaN is saved


@pytest.mark.slow
def test_skip_mode_says_what_a_checkpoint_saved_while_skipping_holds(tmp_path):
  """Checkpoints saved during a run of skipped steps are kept (resume goes on from there), and
  the stop line says whose weights they hold: the last applied step's."""
  workdir = str(tmp_path / 'run')
  result, out = _run(
    workdir,
    tmp_path,
    num_train_steps=40,
    learning_rate=1e4,
    on_nonfinite='skip',
    nonfinite_skip_limit=6,
    checkpoint_every=2,
    eval_every=40,
    keep_checkpoints=10,
  )
  assert result.returncode == divergence.DIVERGED_EXIT_CODE, out
  line = last_line(result.stderr)
  match = re.search(
    r'no update after step (\d+) was applied\. Last checkpoint: step (\d+) in \S+ \(saved '
    r'during the skipped steps: its weights are those of step (\d+)\)',
    line,
  )
  assert match, line
  applied, saved, holds = map(int, match.groups())
  assert holds == applied < saved and saved == max(steps_on_disk(workdir)), (line, workdir)
  assert 'saved nothing after' not in line
  events = [r for r in metrics.read(workdir) if r['split'] == divergence.SPLIT]
  assert [e['step'] for e in events[-6:]] == list(range(applied + 1, applied + 7))
  assert [e['action'] for e in events[-6:]] == ['skipped'] * 5 + ['stopped']


@pytest.fixture
def started():
  """Starts runs in the background; whatever is still running at the end is killed (a failed
  assertion must not leave a 100,000-step run behind)."""
  procs = []

  def start(workdir, tmp_path, **flags):
    procs.append(run_main(workdir, *tiny_flags(tmp_path, **flags), devices=2, wait=False))
    return procs[-1]

  yield start
  for proc in procs:
    if proc.poll() is None:
      proc.kill()
      proc.wait()


def _wait_for(condition, proc, seconds=300):
  deadline = time.time() + seconds
  while not condition() and time.time() < deadline and proc.poll() is None:
    time.sleep(0.1)
  assert condition(), 'the run did not get there'


@pytest.mark.slow
def test_a_killed_run_resumes_with_one_record_per_step_and_ctrl_c_saves(tmp_path, started):
  workdir = str(tmp_path / 'run')
  long_run = dict(
    num_train_steps=100000, checkpoint_every=20, eval_every=100000, log_every=2, keep_checkpoints=9
  )

  def logged(step):
    return lambda: (
      os.path.exists(os.path.join(workdir, 'metrics.jsonl'))
      and any(r['step'] >= step for r in train_eval_records(workdir))
    )

  # Killed (-9) after it logged past its last checkpoint (20): those records are written again
  # by the resumed run, which drops them first, so every (step, split) is recorded once.
  proc = started(workdir, tmp_path, **long_run)
  _wait_for(logged(30), proc)
  proc.kill()
  proc.wait()
  assert steps_on_disk(workdir)[-1] < max(r['step'] for r in train_eval_records(workdir))

  # Resumed, then Ctrl-C: a checkpoint at the next step, one line, exit code 130, lock released.
  proc = started(workdir, tmp_path, **long_run)
  restored = steps_on_disk(workdir)[-1]
  _wait_for(lambda: steps_on_disk(workdir)[-1] > restored, proc)
  proc.send_signal(signal.SIGINT)
  out = proc.communicate(timeout=120)[0].decode()
  assert proc.returncode == 130, out
  assert 'Traceback' not in out and 'KeyboardInterrupt' not in out
  saved = steps_on_disk(workdir)[-1]
  assert last_line(out).endswith(f'Saved step {saved} after SIGINT; exiting.'), out
  assert not os.path.exists(os.path.join(workdir, workdir_lock.LOCK_NAME))
  records = train_eval_records(workdir)
  pairs = collections.Counter((r['step'], r['split']) for r in records)
  assert max(pairs.values()) == 1, [p for p, n in pairs.items() if n > 1]
  assert min(r['step'] for r in records) == 2  # the first run's history is still there
  assert f'Resuming from step {restored}' in out


def test_a_second_ctrl_c_quits_at_once():
  """Two real SIGINTs to a process holding the training loop's handlers (the second must not
  wait for the checkpoint the first asked for)."""
  code = (
    'import os, signal, time\n'
    'from resnet_jax import console\n'
    'from resnet_jax.train.stop_signals import StopSignals\n'
    'console.setup()\n'
    'stop = StopSignals()\n'
    'stop.reached(7)\n'
    'os.kill(os.getpid(), signal.SIGINT)\n'
    'time.sleep(0.5)\n'
    'assert stop.received == "SIGINT" and stop.reached(8)\n'
    'os.kill(os.getpid(), signal.SIGINT)\n'
    'time.sleep(5)\n'
    'print("still running")\n'
  )
  result = subprocess.run(
    [sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 130, result.stdout + result.stderr
  assert 'SIGINT at step 7' in result.stdout
  assert last_line(result.stderr) == (
    'interrupted: a second Ctrl-C; exiting at step 8 without a checkpoint.'
  )
  assert 'still running' not in result.stdout


def _mount_tmpfs(path, options) -> bool:
  os.makedirs(path, exist_ok=True)
  return subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', path]).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
  """A real 2 MB filesystem (tmpfs; needs root, as CI runs): about two tiny checkpoints."""
  mount = str(tmp_path / f'disk_{uuid.uuid4().hex[:6]}')
  if not _mount_tmpfs(mount, 'size=2m'):
    pytest.skip('cannot mount a tmpfs here (needs root)')
  yield mount
  subprocess.run(['umount', '-l', mount])


@pytest.mark.slow
def test_a_full_disk_ends_in_one_line_and_keeps_the_last_checkpoint(tmp_path, small_disk):
  workdir = os.path.join(small_disk, 'run')
  flags = dict(num_train_steps=200, checkpoint_every=4, eval_every=8, keep_checkpoints=5)
  result, out = _run(workdir, tmp_path, **flags)
  assert result.returncode == 2, out
  line = last_line(result.stderr)
  assert line.startswith('error: No room for checkpoint step '), out
  assert 'Traceback' not in out
  kept = steps_on_disk(workdir)
  assert kept and f'the last checkpoint is step {kept[-1]}.' in line
  leftovers = [n for n in os.listdir(os.path.join(workdir, 'checkpoints')) if not n.isdigit()]
  assert leftovers == []  # no orphaned temporary checkpoint
  for step in kept:  # each complete: orbax's commit marker is written last
    assert os.path.exists(os.path.join(workdir, 'checkpoints', str(step), '_CHECKPOINT_METADATA'))
  assert not os.path.exists(os.path.join(workdir, workdir_lock.LOCK_NAME))

  # The same command again stops before training, not at the same wall after retraining.
  again, out = _run(workdir, tmp_path, **flags)
  assert again.returncode == 2, out
  assert 'No room for the next checkpoint' in last_line(again.stderr)
  assert f'Resuming from step {kept[-1]}' in out
  assert not re.search(r'step \d+/\d+', out), out  # no training step ran
  assert steps_on_disk(workdir) == kept


@pytest.mark.slow
def test_a_read_only_workdir_is_one_line(tmp_path):
  mount = str(tmp_path / 'read_only')
  if not _mount_tmpfs(mount, 'size=1m,ro'):
    pytest.skip('cannot mount a tmpfs here (needs root)')
  try:
    result, out = _run(os.path.join(mount, 'run'), tmp_path, num_train_steps=2)
  finally:
    subprocess.run(['umount', '-l', mount])
  assert result.returncode == 2, out
  assert 'cannot write there (Read-only file system' in last_line(result.stderr), out
  assert 'Traceback' not in out
