"""SGD with momentum and weight decay, and the learning-rate schedules of the paper and after.

The learning rate of a step is ``learning_rate(...)``, the one place it is assembled:
``peak * schedule(step) * schedule_state['lr_scale'] * warm``, where ``schedule`` is the step /
cosine shape with optional linear warmup (a pure function of the step), and ``schedule_state``
(kept in the TrainState, so in every checkpoint) carries what depends on training itself: the
reduce-on-plateau factor and its counters (``plateau_update``, on the host after an evaluation),
and the paper's warmup-until-train-error phase (ResNet-110; ``warmup_after_step``, on the devices
inside every train step, so it ends at the same step whatever the logging cadence).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util


def peak_learning_rate(config) -> float:
  """The linear scaling rule: learning_rate at lr_reference_batch, scaled to batch_size."""
  return config.learning_rate * config.batch_size / config.lr_reference_batch


def schedule_fn(config, steps_per_epoch: int, total_steps: int) -> Callable:
  """Step -> multiplier of the peak learning rate (the parts that depend on the step alone)."""
  warmup = round(config.warmup_epochs * steps_per_epoch)
  if config.schedule == 'step':
    unit = steps_per_epoch if config.lr_boundaries_unit == 'epochs' else 1
    if config.lr_boundaries_unit not in ('epochs', 'steps'):
      raise ValueError("lr_boundaries_unit must be 'epochs' or 'steps'.")
    boundaries = [round(b * unit) for b in config.lr_boundaries]
    main = optax.piecewise_constant_schedule(1.0, {b: config.lr_decay_factor for b in boundaries})
  elif config.schedule == 'cosine':
    main = optax.cosine_decay_schedule(1.0, max(total_steps - warmup, 1))
  elif config.schedule == 'plateau':
    main = optax.constant_schedule(1.0)  # decays come from schedule_state['lr_scale']
  else:
    raise ValueError(f"schedule must be 'step', 'plateau' or 'cosine', got {config.schedule!r}.")
  if warmup <= 0:
    return main
  if config.schedule == 'cosine':
    return optax.join_schedules([optax.linear_schedule(0.0, 1.0, warmup), main], [warmup])
  ramp = optax.linear_schedule(0.0, 1.0, warmup)
  return lambda step: jnp.where(step < warmup, ramp(step), main(step))


def initial_schedule_state() -> dict[str, np.ndarray]:
  return {
    'lr_scale': np.float32(1.0),
    'best': np.float32(np.inf),
    'bad_evals': np.int32(0),
    'cooldown': np.int32(0),
    'warmup_done': np.int32(0),
    'warmup_error_sum': np.float32(0.0),  # training error summed over the current window
    'warmup_window_steps': np.int32(0),
  }


def learning_rate(config, base_schedule, step, schedule_state):
  """The learning rate of ``step`` (works on traced and host values alike)."""
  lr = peak_learning_rate(config) * base_schedule(step) * schedule_state['lr_scale']
  if config.warmup_until_train_error > 0:
    lr = lr * jnp.where(schedule_state['warmup_done'] > 0, 1.0, config.warmup_lr_factor)
  return lr


def plateau_update(config, state: dict, metric: float) -> dict:
  """Reduce-on-plateau after an evaluation (as torch's ReduceLROnPlateau, mode 'min', 'abs').

  The factor drops by ``lr_decay_factor`` once ``metric`` has failed to improve on the best value
  by ``plateau_min_delta`` for more than ``plateau_patience`` evaluations in a row; then
  ``plateau_cooldown`` evaluations pass before counting again. The rate never goes below
  ``plateau_min_lr``.
  """
  state = {k: np.asarray(v).copy() for k, v in state.items()}
  if config.schedule != 'plateau':
    return state
  if metric < state['best'] - config.plateau_min_delta:
    state['best'] = np.float32(metric)
    state['bad_evals'] = np.int32(0)
  else:
    state['bad_evals'] = np.int32(state['bad_evals'] + 1)
  if state['cooldown'] > 0:
    state['cooldown'] = np.int32(state['cooldown'] - 1)
    state['bad_evals'] = np.int32(0)
  if state['bad_evals'] > config.plateau_patience:
    floor = config.plateau_min_lr / peak_learning_rate(config)
    state['lr_scale'] = np.float32(max(state['lr_scale'] * config.lr_decay_factor, floor))
    state['cooldown'] = np.int32(config.plateau_cooldown)
    state['bad_evals'] = np.int32(0)
  return state


def warmup_after_step(config, state: dict, train_error) -> dict:
  """Ends the warmup-until-train-error phase when a window's mean training error is below the
  threshold. Windows are ``warmup_error_window`` steps, counted from the run's first step; the
  new phase starts with the next step. Pure jnp: runs inside the train step."""
  if config.warmup_until_train_error <= 0:
    return state
  total = state['warmup_error_sum'] + train_error
  count = state['warmup_window_steps'] + 1
  full = count >= config.warmup_error_window
  below = total / count.astype(jnp.float32) < config.warmup_until_train_error
  return {
    **state,
    'warmup_done': jnp.where(full & below, 1, state['warmup_done']).astype(jnp.int32),
    'warmup_error_sum': jnp.where(full, 0.0, total).astype(jnp.float32),
    'warmup_window_steps': jnp.where(full, 0, count).astype(jnp.int32),
  }


def _decay_mask(params, include_bn_and_bias: bool):
  flat = traverse_util.flatten_dict(params)
  mask = {path: include_bn_and_bias or path[-1] == 'kernel' for path in flat}
  return traverse_util.unflatten_dict(mask)


def create_optimizer(config) -> optax.GradientTransformation:
  """Direction of the update (before -learning_rate): torch's SGD with weight decay and momentum.

  torch adds ``weight_decay * w`` to the gradient and then applies momentum, which is what this
  chain does; the learning rate is applied by the train step (it depends on schedule state).
  """
  decay = optax.add_decayed_weights(
    config.weight_decay,
    mask=lambda params: _decay_mask(params, config.weight_decay_bn_and_bias),
  )
  return optax.chain(decay, optax.trace(decay=config.momentum, nesterov=config.nesterov))


def total_steps(config, steps_per_epoch: int) -> int:
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return math.ceil(config.num_epochs * steps_per_epoch)


def apply_updates(params, updates, lr):
  return jax.tree.map(lambda p, u: p - lr * u, params, updates)
