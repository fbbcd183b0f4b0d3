"""Released weights by name or URL (train/pretrained.py), against a real HTTP server on 127.0.0.1:
downloaded once and reused, equal to what was served, SHA-256 checked as torch hub checks it, an
interrupted or tampered download never used, offline in seconds with one line, through `main`,
`convert` and the Python API."""

import hashlib
import http.server
import os
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
from flax import traverse_util
from helpers import REPO, run_main, tiny_flags

import resnet_jax
from resnet_jax import torch_files
from resnet_jax.errors import UserError
from resnet_jax.models import registry, releases, torchvision_weights
from resnet_jax.train import pretrained


class Server:
  """Serves ``files`` (path -> bytes) on 127.0.0.1; ``truncate`` paths send half their bytes
  under the full Content-Length, then close. Counts the requests per path."""

  def __init__(self):
    self.files, self.truncate, self.requests = {}, set(), {}
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_GET(self):
        server.requests[self.path] = server.requests.get(self.path, 0) + 1
        data = server.files.get(self.path)
        if data is None:
          self.send_error(404)
          return
        self.send_response(200)
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2] if self.path in server.truncate else data)

      def log_message(self, *args):
        pass

    self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}'
    threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()


@pytest.fixture
def server():
  s = Server()
  yield s
  s.close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
  path = tmp_path / 'cache'
  monkeypatch.setenv('RESNET_JAX_WEIGHTS_CACHE', str(path))
  monkeypatch.delenv('RESNET_JAX_WEIGHTS_MIRROR', raising=False)
  return path


def released_file(seed=0):
  """A cifar_resnet8 (10 classes) as timm publishes nets: safetensors of torchvision's keys; its
  variables; and its file name with torch hub's hash prefix."""
  _, variables = resnet_jax.create_model('cifar_resnet8', num_classes=10, image_size=8, seed=seed)
  variables = jax.device_get(variables)
  data = torch_files.write_safetensors(torchvision_weights.to_torchvision(variables))
  return data, variables, f'cifar_resnet8-{hashlib.sha256(data).hexdigest()[:8]}.safetensors'


def _files(tree) -> dict:
  return {
    f'{c}/{k}': np.asarray(v)
    for c in ('params', 'batch_stats')
    for k, v in traverse_util.flatten_dict(tree[c], sep='/').items()
  }


def _on_disk(cache) -> list[str]:
  return sorted(
    os.path.relpath(os.path.join(root, f), cache)
    for root, _, files in os.walk(cache)
    for f in files
    if '/converted/' not in f'/{os.path.relpath(root, cache)}/'
  )


@pytest.mark.slow  # two runs through main
def test_init_from_a_url_downloads_once_and_trains(tmp_path, server, cache):
  data, variables, name = released_file()
  server.files[f'/weights/{name}'] = data
  url = f'{server.url}/weights/{name}'
  flags = [*tiny_flags(tmp_path, num_train_steps=2, eval_every=2), f'--config.init_from={url}']
  first = run_main(tmp_path / 'first', *flags)
  assert first.returncode == 0, first.stderr[-3000:]
  assert 'Downloading' in first.stdout and '100%' in first.stdout
  second = run_main(tmp_path / 'second', *flags)
  assert second.returncode == 0, second.stderr[-3000:]
  assert 'Downloading' not in second.stdout
  assert server.requests == {f'/weights/{name}': 1}  # the cache served the second run
  assert _on_disk(cache) == [f'downloads/{name}']
  converted = os.listdir(cache / 'converted')
  assert len(converted) == 1 and converted[0].endswith('-cifar_resnet8')
  # What was converted is what was served, bit for bit.
  loaded = jax.device_get(resnet_jax.load_variables(url, model='cifar_resnet8'))
  expected, got = _files(variables), _files(loaded)
  assert got.keys() == expected.keys()
  for key, value in expected.items():
    assert np.array_equal(got[key], value), key


def test_a_download_whose_hash_differs_is_refused_and_not_kept(server, cache):
  data, _, name = released_file()
  wrong = name.replace(name.split('-')[1][:8], '00000000')
  server.files[f'/{wrong}'] = data
  mismatch = r'has SHA-256 [0-9a-f]{16}\.\.\., not the published 00000000'
  with pytest.raises(UserError, match=mismatch):
    pretrained.resolve(f'{server.url}/{wrong}', 'cifar_resnet8')
  assert _on_disk(cache) == []  # no partial file, nothing converted
  assert not (cache / 'converted').exists()


def test_an_interrupted_download_is_never_used(server, cache):
  data, _, name = released_file()
  server.files[f'/{name}'] = data
  server.truncate.add(f'/{name}')
  with pytest.raises(UserError, match=r'nothing was kept\. Run the command again'):
    pretrained.resolve(f'{server.url}/{name}', 'cifar_resnet8')
  assert _on_disk(cache) == []
  server.truncate.clear()  # the next try downloads it whole
  assert os.path.isdir(pretrained.resolve(f'{server.url}/{name}', 'cifar_resnet8'))
  assert server.requests[f'/{name}'] == 2


@pytest.mark.parametrize('hash_in_name', [True, False])
def test_a_cached_file_changed_afterwards_is_refused(server, cache, monkeypatch, hash_in_name):
  """torchvision's files by their name's hash prefix; a hub file (no hash in its name) by the
  SHA-256 recorded when it was downloaded."""
  data, _, name = released_file()
  path = f'/{name}' if hash_in_name else '/timm/tiny.test/resolve/main/model.safetensors'
  server.files[path] = data
  url = f'http://huggingface.co{path}' if not hash_in_name else f'{server.url}{path}'
  if not hash_in_name:  # as named hub weights reach a mirror
    monkeypatch.setenv('RESNET_JAX_WEIGHTS_MIRROR', server.url)
  pretrained.resolve(url, 'cifar_resnet8')
  (cached,) = [f for f in _on_disk(cache) if not f.endswith('.sha256')]
  with open(cache / cached, 'r+b') as f:
    f.seek(200)
    f.write(b'\x00\x01\x02\x03')
  with pytest.raises(UserError, match=r'The cached file .* is not the released file\. Delete it'):
    pretrained.resolve(url, 'cifar_resnet8')
  assert server.requests[path] == 1


def test_offline_fails_in_seconds_with_the_url_and_the_path(cache):
  with socket_closed() as port:
    start = time.monotonic()
    with pytest.raises(UserError) as error:
      pretrained.resolve(f'http://127.0.0.1:{port}/resnet18-f37072fd.pth', 'resnet18')
  assert time.monotonic() - start < 10
  message = str(error.value)
  assert f'http://127.0.0.1:{port}/resnet18-f37072fd.pth' in message
  assert f'put it at {cache}/downloads/resnet18-f37072fd.pth' in message
  assert _on_disk(cache) == []


class socket_closed:
  """A port on 127.0.0.1 that nothing listens on."""

  def __enter__(self):
    import socket

    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    self.port = s.getsockname()[1]
    s.close()
    return self.port

  def __exit__(self, *exc):
    return False


def test_named_weights_go_through_the_mirror_and_their_published_hash(tmp_path, server, cache):
  """`convert` of torchvision's resnet18 by name (no torch): the mirror serves a file that is not
  the released one, so the check of its name's hash refuses it with one line, exit 2."""
  server.files['/models/resnet18-f37072fd.pth'] = b'PK\x03\x04 not the released weights'
  env = dict(
    os.environ,
    PYTHONPATH=REPO,
    RESNET_JAX_WEIGHTS_CACHE=str(cache),
    RESNET_JAX_WEIGHTS_MIRROR=server.url,
  )
  out = tmp_path / 'r18'
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'resnet_jax.convert',
      '--torchvision=torchvision:resnet18.IMAGENET1K_V1',
      f'--out={out}',
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2, result.stderr
  assert 'Traceback' not in result.stderr
  assert lines[-1].startswith('error: The download of https://download.pytorch.org/models/')
  assert 'not the published f37072fd' in lines[-1]
  assert server.requests == {'/models/resnet18-f37072fd.pth': 1}
  assert not out.exists() and _on_disk(cache) == []


def test_convert_reads_a_url_without_torch(tmp_path, server, cache):
  data, variables, name = released_file(seed=3)
  server.files[f'/{name}'] = data
  env = dict(os.environ, PYTHONPATH=REPO, RESNET_JAX_WEIGHTS_CACHE=str(cache))
  out = tmp_path / 'converted'
  result = subprocess.run(
    [
      sys.executable,
      '-c',
      'import sys; sys.modules["torch"] = None; from resnet_jax import cli, convert; '
      'cli.run(convert.main)',
      f'--torchvision={server.url}/{name}',
      '--model=cifar_resnet8',
      f'--out={out}',
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert (
    'Wrote cifar_resnet8 (75,290 parameters)' in result.stdout
  )  # 464 + 4,672 + 13,952 + 55,552 + 650
  got = _files(jax.device_get(resnet_jax.load_variables(str(out))))
  for key, value in _files(variables).items():
    assert np.array_equal(got[key], value), key


def test_every_named_release_fits_its_net_and_names_its_published_top1():
  assert len(releases.TORCHVISION) == 27 and len(releases.TIMM) == 6 and len(releases.BIT) == 19
  for name in releases.names():
    weights = releases.lookup(name)
    if weights.top1 is None:  # BiT's files but its distilled ResNet-50; timm's SE-ResNets
      assert name.startswith(('bit:', 'timm:seresnet50.')), name
      assert name != 'bit:FunMatch-224px-i1k82.8'
    else:
      assert 50 < weights.top1 < 90, name
    assert releases.published_top1(name) == weights.top1
    assert registry.model_config(weights.model), name
    if name.startswith('torchvision:'):  # torch hub's check needs the hash in the file name
      assert pretrained._HASH_IN_NAME.search(weights.url.rsplit('/', 1)[-1]), name
  assert releases.lookup('torchvision:resnet50.IMAGENET1K_V2').top1 == 80.858
  with pytest.raises(UserError, match=r'closest: torchvision:resnet50\.IMAGENET1K_V2'):
    releases.lookup('torchvision:resnet50.IMAGENET1K_V3')
