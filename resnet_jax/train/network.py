"""The network, its freshly initialised training state and example batches, as a config asks for
them.

Free of data and of TensorFlow, so the device-step benchmark runs on an accelerator image that has
only JAX; ``train.experiment`` builds a run's model and state with the same two functions.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import config_check
from resnet_jax.data import device_pixels
from resnet_jax.models import param_groups, registry
from resnet_jax.train import ema, optim, parallel, steps


def build_model(config, num_classes: int, *, train_bn_axis: bool = True):
  """The config's network; ``train_bn_axis=False`` for evaluation (no cross-device BN axis)."""
  overrides = dict(
    config_check.architecture_overrides(config),
    zero_init_residual=config.zero_init_residual,
    scan_blocks=config.scan_blocks,
    bn_momentum=config.bn_momentum,
    cpu_convolution=config.cpu_convolution,
    cpu_kernels=config.cpu_kernels,
  )
  if config.bn_epsilon:  # 0: the net's own
    overrides['bn_epsilon'] = config.bn_epsilon
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
  model = registry.get_model(config.model, num_classes=num_classes, dtype=dtype, **overrides)
  if config.freeze and config.freeze_bn_stats:
    frozen = param_groups.frozen_norms(variable_shapes(config, model)['params'], config.freeze)
    model = model.clone(frozen_norms=frozen)
  return model


def variable_shapes(config, model) -> dict:
  """The model's variables as shapes (nothing computed)."""
  image = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), image, train=False))


def fresh_state(config, model, tx, data_parallel) -> steps.TrainState:
  """A newly initialised TrainState (seeded by config.seed), replicated over the mesh."""
  init = functools.partial(
    steps.create_train_state,
    model,
    tx,
    (config.image_size, config.image_size, 3),
    fp16_loss_scale=config.half_precision and config.half_dtype == 'float16',
    with_ema=ema.enabled(config),
  )
  return jax.jit(init, out_shardings=data_parallel.replicated)(jax.random.key(config.seed))


def example_batch(data_parallel, config, num_classes: int, mode: str = 'train'):
  """A random global batch in the form the train (or eval) step takes, on the devices: for
  measuring a step's speed or memory without data."""
  rng = np.random.default_rng(0)
  local = config.batch_size // jax.process_count()
  shape = (local, config.image_size, config.image_size, 3)
  batch = {
    'image': rng.standard_normal(shape, dtype=np.float32),
    'label': rng.integers(0, num_classes, local).astype(np.int32),
  }
  if mode == 'eval':
    batch['mask'] = np.ones(local, bool)
  elif config.pixel_ops == 'device':  # the train step finishes uint8 crops itself
    batch.update(device_pixels.example_batch(config, local, rng))
  return data_parallel.put_batch(batch)


def example_pixel_ops(config):
  """The train step's device_pixels.PixelOps, with a stand-in mean image (its values cost
  nothing), or None when the host finishes the pixels."""
  if config.pixel_ops != 'device':
    return None
  mean = np.full((config.image_size, config.image_size, 3), 120.0, np.float32)
  return device_pixels.PixelOps(config, mean)


# The schedule's horizon for a train step built without a run (its learning rate is immaterial).
EXAMPLE_STEPS_PER_EPOCH, EXAMPLE_TOTAL_STEPS = 1000, 10_000


def example_train_step(config, num_classes: int, data_parallel):
  """The config's train step wrapped for the devices, and a fresh state for it: for measuring
  the step's speed or memory without data."""
  model = build_model(config, num_classes)
  schedule = optim.schedule_fn(config, EXAMPLE_STEPS_PER_EPOCH, EXAMPLE_TOTAL_STEPS)
  tx = optim.create_optimizer(config, schedule)
  state = data_parallel.put_state(fresh_state(config, model, tx, data_parallel))
  step = functools.partial(
    steps.train_step,
    model=model,
    tx=tx,
    config=config,
    base_schedule=schedule,
    num_classes=num_classes,
    pixel_ops=example_pixel_ops(config),
  )
  return data_parallel.wrap(step), state
