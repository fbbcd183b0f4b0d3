"""Test set-up: 8 simulated CPU devices, TensorFlow kept off accelerators, quiet logs."""

import os

os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
).strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import sys

# tests/ holds helpers (torch_resnet) imported by name.
sys.path.insert(0, os.path.dirname(__file__))
