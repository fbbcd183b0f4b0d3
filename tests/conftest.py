"""Test set-up: 8 simulated CPU devices with the commands' XLA:CPU options, TensorFlow kept off
accelerators, quiet logs, one XLA compilation cache for the session, and TensorFlow imported
without Keras.

Most slow tests start fresh processes that compile the same tiny train and eval steps; JAX's
persistent cache (inherited by every child through the environment) compiles each program once
per test session. A cache hit loads the executable XLA compiled, so results are bitwise the same.
"""

import atexit
import os
import re
import shutil
import tempfile

os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
).strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:  # the first process of the session makes it
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='resnet_jax_tests_xla_cache_')
  # ... and removes it at exit (pytest-xdist's workers and the tests' children inherit it).
  atexit.register(shutil.rmtree, os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.2')
# `import tensorflow` loads Keras 3 (and scikit-learn through Keras's wrappers) only to alias its
# modules, ~2 s of CPU in each of the ~100 processes the tests start; the project never uses Keras.
# Pointing TF at the legacy tf_keras package, which is not installed, makes TF skip that alias.
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import sys

import pytest

from resnet_jax import distributed

# In-process tests compile with the XLA:CPU options the commands use (their child processes
# inherit them too), so the two give the same numbers.
distributed.set_cpu_xla_flags()

# tests/ holds helpers (torch_resnet) imported by name.
sys.path.insert(0, os.path.dirname(__file__))


# The longest files first: the suite runs on two workers a file at a time (pytest-xdist,
# --dist loadfile in pyproject.toml), and a long file taken last would run on alone.
LONGEST_FIRST = (
  'test_readme.py',
  'test_train.py',
  'test_faults.py',
  'test_recipe.py',
  'test_multiprocess.py',
  'test_study_report.py',
  'test_field.py',
  'test_bad_input.py',
  'test_cloud_storage.py',
  'test_scan.py',
)


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  """A test that skips for want of torch must carry the ``torch`` marker: CI's torch phase runs
  ``-m torch`` only, so an unmarked one would be skipped in both phases and never run."""
  outcome = yield
  report = outcome.get_result()
  if report.skipped and isinstance(report.longrepr, tuple) and not item.get_closest_marker('torch'):
    reason = report.longrepr[2]
    if re.search(r"could not import 'torch|No module named 'torch'", reason):
      report.outcome = 'failed'
      report.longrepr = (
        f'{item.nodeid} skips without torch ({reason}) but has no @pytest.mark.torch: '
        "CI's torch phase (pytest -m torch) would never run it."
      )
