"""One run per workdir: ``WORKDIR/run.lock`` names the holder (host, pid, start time).

A second run on a locked workdir stops at once with a message naming the holder, before it has
touched anything. A lock whose holder is gone is taken over with a warning: on the same host the
holder's pid is checked; from another host the holder's heartbeat (rewritten every
``lock_heartbeat_seconds`` by a background thread) must be older than ``lock_stale_seconds``. A
run that ends (finished, failed, or saved after SIGTERM) removes its lock, so a resubmitted job
starts at once. In a multi-process run process 0 holds the lock for all processes.

Local workdirs are locked with an exclusive create (atomic); object stores have no such
operation, so there the lock is written, read back after a pause and kept only if it is still
ours (two runs started within that pause of each other on a bucket can both lose, never both win
silently: the later writer wins and the earlier one sees a foreign lock).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

from resnet_jax import storage
from resnet_jax.errors import UserError

LOG = logging.getLogger(__name__)

LOCK_NAME = 'run.lock'
CLOUD_SETTLE_SECONDS = 2.0  # read-back delay that makes a racing writer on a bucket visible


class WorkdirLockedError(UserError):
  """Another live run holds the workdir; the message names it and what to do."""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, owned by someone else
    return True
  return True


class WorkdirLock:
  """Holds ``workdir/run.lock`` from ``acquire`` to ``release``.

  Args:
    workdir: the run's workdir (local or cloud).
    stale_seconds: a lock from another host whose heartbeat is older than this is abandoned.
    heartbeat_seconds: how often the holder refreshes its heartbeat.
  """

  def __init__(self, workdir, *, stale_seconds: float, heartbeat_seconds: float):
    self.path = storage.path(workdir) / LOCK_NAME
    self.stale_seconds, self.heartbeat_seconds = stale_seconds, heartbeat_seconds
    self.record = {
      'host': socket.gethostname(),
      'pid': os.getpid(),
      'started': time.strftime('%Y-%m-%d %H:%M:%S %Z'),
      'token': uuid.uuid4().hex,
    }
    self._stop = threading.Event()
    self._thread = None
    self._created_workdir = False

  def _payload(self) -> str:
    return json.dumps({**self.record, 'heartbeat': time.time()})

  def _read(self) -> dict | None:
    try:
      return json.loads(self.path.read_text())
    except FileNotFoundError:
      return None
    except (ValueError, OSError):  # half-written or unreadable: treat as a foreign, stale lock
      return {'host': '?', 'pid': -1, 'started': '?', 'heartbeat': 0.0, 'token': ''}

  def _is_abandoned(self, holder: dict) -> bool:
    if holder.get('host') == self.record['host']:
      return not _pid_alive(int(holder.get('pid', -1)))
    return time.time() - float(holder.get('heartbeat', 0.0)) > self.stale_seconds

  def _describe(self, holder: dict) -> str:
    age = time.time() - float(holder.get('heartbeat', 0.0))
    return (
      f'host {holder.get("host")}, pid {holder.get("pid")}, started {holder.get("started")}, '
      f'last heartbeat {age:.0f} s ago'
    )

  def _try_create(self) -> bool:
    if not storage.is_cloud(self.path) and not self.path.parent.exists():
      self._created_workdir = True
    self.path.parent.mkdir(parents=True, exist_ok=True)
    if storage.is_cloud(self.path):
      if self.path.exists():
        return False
      self.path.write_text(self._payload())
      time.sleep(CLOUD_SETTLE_SECONDS)
      holder = self._read()
      return holder is not None and holder.get('token') == self.record['token']
    try:
      fd = os.open(os.fspath(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, 'w') as f:
      f.write(self._payload())
    return True

  def acquire(self):
    """Takes the lock, or raises WorkdirLockedError naming the live holder."""
    for _ in range(3):  # a takeover may race another takeover: retry a few times
      if self._try_create():
        self._start_heartbeat()
        return
      holder = self._read()
      if holder is None:
        continue  # released between our attempt and the read
      if not self._is_abandoned(holder):
        raise WorkdirLockedError(
          f'{self.path.parent} is in use by another run ({self._describe(holder)}). Wait for it '
          f'to finish, stop it, or use another --workdir. If that run is gone, its lock counts '
          f'as abandoned {self.stale_seconds:.0f} s after its last heartbeat (on its own host: '
          f'at once); deleting {self.path} also releases it.'
        )
      LOG.warning(
        'Taking over the abandoned lock of %s (%s)', self.path.parent, self._describe(holder)
      )
      self.path.unlink(missing_ok=True)
    raise WorkdirLockedError(f'Could not take {self.path}: other runs keep racing for it.')

  def _start_heartbeat(self):
    def beat():
      while not self._stop.wait(self.heartbeat_seconds):
        try:
          self.path.write_text(self._payload())
        except OSError as e:  # a storage hiccup must not kill training
          LOG.warning('Lock heartbeat to %s failed: %s', self.path, e)

    self._thread = threading.Thread(target=beat, name='workdir-lock-heartbeat', daemon=True)
    self._thread.start()

  def release(self):
    """Stops the heartbeat and removes the lock if it is still ours."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
      holder = self._read()
      if holder is not None and holder.get('token') == self.record['token']:
        self.path.unlink(missing_ok=True)
      if self._created_workdir and not any(self.path.parent.iterdir()):
        self.path.parent.rmdir()  # a run that stopped before writing anything leaves no trace


def acquire_everywhere(workdir, *, stale_seconds: float, heartbeat_seconds: float):
  """Process 0 takes the workdir's lock for the whole job; every process learns the outcome.

  Returns:
    The held lock on process 0, None on the other processes.

  Raises:
    WorkdirLockedError: on every process, when the workdir belongs to another live run or
      cannot be written (a file, read-only, full, unreachable).
  """
  import jax
  import numpy as np
  from jax.experimental import multihost_utils

  lock, refusal = None, ''
  if jax.process_index() == 0:
    lock = WorkdirLock(workdir, stale_seconds=stale_seconds, heartbeat_seconds=heartbeat_seconds)
    try:
      storage.check_writable_dir(workdir)
      lock.acquire()
    except UserError as e:  # locked, or not a writable directory
      lock, refusal = None, str(e)
  if jax.process_count() > 1:
    held = multihost_utils.broadcast_one_to_all(np.int32(not refusal))
    if not held and not refusal:
      refusal = f'{workdir}: process 0 could not lock it (its log says why).'
  if refusal:
    raise WorkdirLockedError(refusal)
  return lock
