"""Released weights by name (``torchvision:resnet50.IMAGENET1K_V2``, ``timm:resnet50.a1_in1k``,
``bit:M-R50x1``) or by URL: downloaded once into a cache, checked, converted once, and given to
``init_from``, ``evaluate``, ``export``, ``convert`` and ``resnet_jax.create_model`` as a converted
checkpoint.

- The cache is ``$RESNET_JAX_WEIGHTS_CACHE``, else ``~/.cache/resnet_jax/weights``
  (``$RESNET_JAX_CACHE/weights``): ``downloads/`` holds the files as published, ``converted/``
  the checkpoints made from them.
- A download goes to a temporary name beside its target and is renamed into place only once
  complete and checked, so an interrupted or refused download is never used. The check is torch
  hub's: the SHA-256 of a file whose name ends ``-<hex>.<ext>`` (torchvision's) starts with that
  hex; a file without one (timm's hub files) has its SHA-256 recorded beside it on download and
  checked at each later use, so a cached file changed afterwards is refused too.
- ``$RESNET_JAX_WEIGHTS_MIRROR`` (``http://host:port``) replaces the scheme and host of every
  URL: a mirror inside a cluster, or a test server.
- Offline, one line names the URL and the path to put the file at by hand.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request

from resnet_jax import storage, torch_files
from resnet_jax.errors import UserError
from resnet_jax.models import bit_weights, releases, torchvision_weights
from resnet_jax.train import checkpoint

LOG = logging.getLogger(__name__)
DOWNLOAD_TIMEOUT_S = 20  # per network read: a dead network fails in seconds, not minutes
_HASH_IN_NAME = re.compile(r'-([a-f0-9]+)\.')  # torch.hub's HASH_REGEX


def cache_dir() -> str:
  """``$RESNET_JAX_WEIGHTS_CACHE``, else ``weights/`` in the project's cache
  (``$RESNET_JAX_CACHE``, default ``~/.cache/resnet_jax``, where the CPU kernels are too)."""
  if os.environ.get('RESNET_JAX_WEIGHTS_CACHE'):
    return os.environ['RESNET_JAX_WEIGHTS_CACHE']
  root = os.path.expanduser(os.environ.get('RESNET_JAX_CACHE', '~/.cache/resnet_jax'))
  return os.path.join(root, 'weights')


def resolve(reference: str, model: str | None) -> str:
  """The converted checkpoint of named weights or a URL (downloaded and converted on first
  use), or ``reference`` itself when it is a path. ``model``: the net the weights are for (a
  URL's net; for named weights, checked against theirs)."""
  if not releases.is_reference(reference):
    return reference
  if reference.startswith(('http://', 'https://')):
    if not model:
      raise UserError(f'{reference}: weights from a URL need the net they are for (a model name).')
    tag = hashlib.sha256(reference.encode()).hexdigest()[:8]  # two URLs, one file name
    url, net, label = reference, model, f'{_safe(reference.rsplit("/", 1)[-1])}-{tag}-{model}'
  else:
    weights = releases.lookup(reference)
    if model and model != weights.model:
      raise UserError(
        f'{reference} are weights of {weights.model}, not of {model}: use '
        f'--config.model={weights.model} (or weights of {model}).'
      )
    url, net, label = weights.url, weights.model, _safe(reference)
  converted = os.path.join(cache_dir(), 'converted', label)
  file = download(url)
  if os.path.isdir(converted):
    return converted
  _convert(file, url, net, converted)
  return converted


def _safe(text: str) -> str:
  return re.sub(r'[^A-Za-z0-9_.-]+', '_', text)


def download(url: str) -> str:
  """The local path of ``url``'s file in the cache: downloaded (once), checked, renamed into
  place; a cached file is checked again at each use."""
  name = _safe(urllib.parse.urlparse(url).path.rsplit('/', 1)[-1]) or 'weights'
  if 'huggingface.co/' in url:  # every hub file is model.safetensors: the repository names it
    name = _safe(url.split('huggingface.co/', 1)[1].split('/resolve/')[0]) + '.safetensors'
  target = os.path.join(cache_dir(), 'downloads', name)
  if os.path.exists(target):
    _check(target, url, cached=True)
    return target
  os.makedirs(os.path.dirname(target), exist_ok=True)
  source = _mirrored(url)
  partial = f'{target}.{os.getpid()}.part'
  try:
    _fetch(source, partial, url, target)
    _check(partial, url, cached=False)
    os.replace(partial, target)
  finally:
    if os.path.exists(partial):
      os.remove(partial)
  if not _HASH_IN_NAME.search(os.path.basename(target)):
    with open(target, 'rb') as f:
      digest = hashlib.file_digest(f, 'sha256').hexdigest()
    storage.write_text_atomic(storage.path(target + '.sha256'), digest + '\n')
  return target


def _mirrored(url: str) -> str:
  mirror = os.environ.get('RESNET_JAX_WEIGHTS_MIRROR', '').rstrip('/')
  if not mirror:
    return url
  parts = urllib.parse.urlparse(url)
  return mirror + parts.path + (f'?{parts.query}' if parts.query else '')


def _fetch(source: str, partial: str, url: str, target: str):
  """``source`` streamed into ``partial`` with a progress line every 10%."""
  by_hand = f'Offline: download {url} on a machine with network and put it at {target}.'
  try:
    response = urllib.request.urlopen(source, timeout=DOWNLOAD_TIMEOUT_S)
  except urllib.error.HTTPError as e:
    raise UserError(f'Cannot download {source}: HTTP {e.code} {e.reason}. {by_hand}') from None
  except (urllib.error.URLError, OSError) as e:
    reason = getattr(e, 'reason', e)
    raise UserError(f'Cannot download {source} ({reason}). {by_hand}') from None
  total = int(response.headers.get('Content-Length') or 0)
  done, shown, start = 0, 0, time.monotonic()
  LOG.info('Downloading %s (%s) to %s', source, _megabytes(total) if total else '? MB', target)
  try:
    with response, open(partial, 'wb') as out:
      while chunk := response.read(1 << 20):
        out.write(chunk)
        done += len(chunk)
        if total and done * 10 // total > shown:
          shown = done * 10 // total
          rate = done / max(time.monotonic() - start, 1e-6)
          LOG.info(
            '  %3d%% %s of %s, %s/s',
            shown * 10,
            _megabytes(done),
            _megabytes(total),
            _megabytes(rate),
          )
  except (OSError, ValueError) as e:  # a dropped connection, a read timeout
    raise UserError(
      f'The download of {source} broke off after {_megabytes(done)} ({e}); nothing was kept. '
      f'Run the command again to retry. {by_hand}'
    ) from None
  if total and done != total:
    raise UserError(
      f'The download of {source} ended after {_megabytes(done)} of {_megabytes(total)}; nothing '
      f'was kept. Run the command again to retry. {by_hand}'
    )


def _megabytes(count: float) -> str:
  return f'{count / 1e6:.1f} MB'


def _check(path: str, url: str, *, cached: bool):
  """torch hub's check of the name's hash prefix, or the SHA-256 recorded at download."""
  with open(path, 'rb') as f:
    digest = hashlib.file_digest(f, 'sha256').hexdigest()
  match = _HASH_IN_NAME.search(os.path.basename(url))
  recorded = path + '.sha256'
  if match:
    expected = match.group(1)
  elif cached and os.path.exists(recorded):
    with open(recorded) as f:
      expected = f.read().strip()
  else:
    return
  if digest.startswith(expected):
    return
  what = f'The cached file {path}' if cached else f'The download of {url}'
  advice = (
    'Delete it (or put the published file there) and run again.'
    if cached
    else 'It was not kept: check the URL or the mirror.'
  )
  raise UserError(
    f'{what} has SHA-256 {digest[:16]}..., not the published {expected[:16]}...: it is not the '
    f'released file. {advice}'
  )


def variables_of_file(data: bytes, source: str, model: str) -> dict:
  """A weights file's bytes as ``model``'s variables: BiT's ``.npz`` by its key names, else a
  torch file (``.pth``, ``.safetensors``) of torchvision's or timm's.

  Raises:
    torch_files.NotWeights: not a weights file; ValueError: weights of another net.
  """
  if bit_weights.is_npz(data):
    return bit_weights.from_bit(bit_weights.read_npz(data), model)
  return torchvision_weights.from_torchvision(torch_files.read(data, source), model)


def _convert(file: str, url: str, model: str, converted: str):
  """The downloaded file as a checkpoint of ``model``, written under a temporary name, then
  renamed into place (another process may have done it first)."""
  with open(file, 'rb') as f:
    data = f.read()
  try:
    variables = variables_of_file(data, file, model)
  except (torch_files.NotWeights, ValueError) as e:
    raise UserError(f'{url} ({file}): {e}') from None
  partial = f'{converted}.{os.getpid()}.part'
  shutil.rmtree(partial, ignore_errors=True)
  checkpoint.save_variables(partial, variables)
  try:
    os.replace(partial, converted)
  except OSError:
    if not os.path.isdir(converted):
      raise
    shutil.rmtree(partial, ignore_errors=True)
  LOG.info('Converted %s to %s (%s)', os.path.basename(file), converted, model)
