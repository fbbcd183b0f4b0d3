"""The network and its freshly initialised training state, as a config asks for them.

Free of data and of TensorFlow, so the device-step benchmark runs on an accelerator image that has
only JAX; ``train.experiment`` builds a run's model and state with the same two functions.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.models import resnet
from resnet_jax.train import parallel, steps


def build_model(config, num_classes: int, *, train_bn_axis: bool = True):
  """The config's network; ``train_bn_axis=False`` for evaluation (no cross-device BN axis)."""
  overrides = dict(
    zero_init_residual=config.zero_init_residual,
    stride_in_1x1=config.stride_in_1x1,
    scan_blocks=config.scan_blocks,
    bn_momentum=config.bn_momentum,
    bn_epsilon=config.bn_epsilon,
    cpu_convolution=config.cpu_convolution,
    cpu_kernels=config.cpu_kernels,
  )
  if config.shortcut:
    overrides['shortcut'] = config.shortcut
  for field in ('groups', 'width_per_group'):  # 0: the named model's own
    if config[field]:
      overrides[field] = config[field]
  if any(config.replace_stride_with_dilation):
    overrides['replace_stride_with_dilation'] = tuple(config.replace_stride_with_dilation)
  if train_bn_axis and config.bn_group_size != 1:
    overrides['bn_axis_name'] = parallel.AXIS
    if config.bn_group_size > 1:
      n = jax.device_count()
      if n % config.bn_group_size:
        raise ValueError(f'bn_group_size={config.bn_group_size} does not divide {n} devices.')
      groups = np.arange(n).reshape(-1, config.bn_group_size).tolist()
      overrides['bn_axis_index_groups'] = groups
  dtype = jnp.float32
  if config.half_precision:
    dtype = {'bfloat16': jnp.bfloat16, 'float16': jnp.float16}[config.half_dtype]
  return resnet.get_model(config.model, num_classes=num_classes, dtype=dtype, **overrides)


def fresh_state(config, model, tx, data_parallel) -> steps.TrainState:
  """A newly initialised TrainState (seeded by config.seed), replicated over the mesh."""
  init = functools.partial(
    steps.create_train_state,
    model,
    tx,
    (config.image_size, config.image_size, 3),
    fp16_loss_scale=config.half_precision and config.half_dtype == 'float16',
  )
  return jax.jit(init, out_shardings=data_parallel.replicated)(jax.random.key(config.seed))
