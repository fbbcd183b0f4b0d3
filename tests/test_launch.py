"""launch.sh: syntax, lint, and the exact commands each mode runs (DRY_RUN=1)."""

import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(*args, dry=True):
  env = dict(os.environ, DRY_RUN='1' if dry else '0')
  return subprocess.run(
    ['bash', 'launch.sh', *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
  )


def test_syntax_and_shellcheck():
  assert subprocess.run(['bash', '-n', 'launch.sh'], cwd=REPO).returncode == 0
  if shutil.which('shellcheck') is None:
    pytest.skip('shellcheck not installed')
  result = subprocess.run(['shellcheck', 'launch.sh'], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stdout


def test_tpu_mode_runs_on_every_worker():
  out = launch(
    'tpu', 'r50', 'us-central2-b', 'v4-32', '--', '--config=configs/r50.py', '--workdir=gs://b/r50'
  ).stdout
  assert (
    'gcloud compute tpus tpu-vm create r50 --zone us-central2-b --accelerator-type v4-32' in out
  )
  assert out.count('--worker=all') == 3  # copy, install, run
  assert 'python3\\ -m\\ resnet_jax.main\\ --config=configs/r50.py\\ --workdir=gs://b/r50' in out


def test_slurm_mode_one_task_per_gpu():
  out = launch('slurm', '4', '8', '--', '--config=configs/r50.py', '--workdir=/w').stdout
  assert '#SBATCH --nodes=4' in out and '#SBATCH --ntasks-per-node=8' in out
  assert '#SBATCH --gpus-per-node=8' in out and '#SBATCH --signal=TERM@120' in out
  assert (
    'srun --kill-on-bad-exit=1 python3 -m resnet_jax.main --config=configs/r50.py --workdir=/w'
    in out
  )


def test_local_mode_sets_the_coordinator_for_each_process():
  result = launch('local', '3', '--', '--workdir=/tmp/x')
  assert result.returncode == 0, result.stderr
  out = result.stdout.splitlines()
  assert len(out) == 3
  for i, line in enumerate(out):
    assert f'JAX_COORDINATOR_ADDRESS=127.0.0.1:12355 JAX_NUM_PROCESSES=3 JAX_PROCESS_ID={i}' in line


def test_bad_usage_explains():
  result = launch('bogus')
  assert result.returncode == 2 and "unknown mode 'bogus'" in result.stderr
  result = launch('local', '2', '--workdir=/tmp/x')
  assert result.returncode == 2 and 'after --' in result.stderr
  help_text = launch('--help').stdout
  for mode in ('tpu', 'slurm', 'local', 'DRY_RUN'):
    assert mode in help_text
