"""The augmentation policies' ops as one C++ TensorFlow op (``cpu/policy_ops.cc``), built on first
use: an example's drawn ops in one call, pixel for pixel PIL's, as ``policy_ops``' graphs are.

Why: as TensorFlow graphs each op is a dozen kernels over the whole crop (switch_case between the
op branches, float64 index arithmetic materialised per pixel, gathers), and tf.data runs every
branch's set-up; timm's RandAugment then cost ~2.5 ms per 224 px crop on one core, more than
decoding, cropping and flipping together, and the pipeline ran at 0.60x timm's own PIL loader.
One loop nest per op in C++ does the same arithmetic without the intermediate tensors
(PERFORMANCE.md has the figures).

``policy_kernel`` (config field): 'auto' uses the op where it builds (a C++ compiler and
TensorFlow's headers, which its wheel ships) and logs once why not otherwise; 'native' requires it
(a ``UserError`` saying what is missing); 'tensorflow' keeps the graphs.
"""

from __future__ import annotations

import functools
import subprocess

from resnet_jax.cpu import native

NAME = "the augmentation policies' ops in C++"
INSTALL_HINT = (
  'install a C++ compiler (Debian/Ubuntu: apt-get install g++), '
  'or set --config.policy_kernel=tensorflow'
)


def library() -> native.Library:
  """The op's library, compiled against the installed TensorFlow's headers and framework."""
  import tensorflow as tf

  flags = (
    *tf.sysconfig.get_compile_flags(),
    *tf.sysconfig.get_link_flags(),
    # PIL rounds each product and sum; a fused multiply-add would round once.
    '-ffp-contract=off',
  )
  return native.Library('policy_ops', ('policy_ops.cc',), (), flags, (tf.__version__,))


@functools.cache
def _loaded():
  """(the op, '') once built and loaded in this process, else (None, why not)."""
  import tensorflow as tf

  try:
    path = native.built(library())
    return tf.load_op_library(str(path)).resnet_jax_policy, ''
  except (OSError, subprocess.TimeoutExpired, tf.errors.NotFoundError) as e:
    return None, str(e)


def unavailable_reason() -> str:
  """'' when the op builds and loads, else what went wrong."""
  return _loaded()[1]


def enabled(mode: str) -> bool:
  """Whether the policies run as the C++ op under ``policy_kernel=mode`` ('auto', 'native' or
  'tensorflow')."""
  return native.choose(
    'policy_kernel',
    mode,
    'native',
    'tensorflow',
    NAME,
    unavailable_reason,
    INSTALL_HINT,
    "TensorFlow's graphs of the same ops",
  )


def apply(image, drawn, fill):
  """The example's drawn ops (``auto_augment.draw``'s 'op', 'magnitude', 'matrix' [S, 6] and
  'resample', a row per slot), in order, on its uint8 [H, W, 3] crop; ``fill`` the geometric
  ops' uncovered pixels (uint8 [3]), as ``policy_ops.apply``."""
  args = (drawn[k] for k in ('op', 'magnitude', 'matrix', 'resample'))
  return _loaded()[0](image, *args, fill)
