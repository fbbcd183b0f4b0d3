"""The optimisers (SGD with momentum and weight decay, LARS, LAMB) and the learning-rate schedules
of the paper and after.

The learning rate of a step is ``learning_rate(config, base_schedule, state)``, the one place it is
assembled: ``peak * base_schedule(count) * lr_scale * warm``, where ``base_schedule`` is the step
/ cosine shape with optional linear warmup (a pure function of the step) and ``state`` is the
``ScheduleState`` the optimiser owns (the last transform of its chain, so it is in every
checkpoint): the update count, the reduce-on-plateau factor and its counters (``plateau_update``,
on the host after an evaluation), and the paper's warmup-until-train-error phase (ResNet-110;
``warmup_after_step``, inside every update, so it ends at the same step whatever the logging
cadence).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from resnet_jax.models import param_groups


def peak_learning_rate(config) -> float:
  """The linear scaling rule: learning_rate at lr_reference_batch, scaled to batch_size."""
  return config.learning_rate * config.batch_size / config.lr_reference_batch


def schedule_fn(config, steps_per_epoch: int, total_steps: int) -> Callable:
  """Step -> multiplier of the peak learning rate (the parts that depend on the step alone)."""
  warmup = config.warmup_steps or round(config.warmup_epochs * steps_per_epoch)
  if config.schedule == 'step':
    unit = steps_per_epoch if config.lr_boundaries_unit == 'epochs' else 1
    if config.lr_boundaries_unit not in ('epochs', 'steps'):
      raise ValueError("lr_boundaries_unit must be 'epochs' or 'steps'.")
    boundaries = [round(b * unit) for b in config.lr_boundaries]
    main = optax.piecewise_constant_schedule(1.0, {b: config.lr_decay_factor for b in boundaries})
  elif config.schedule == 'cosine':
    main = optax.cosine_decay_schedule(1.0, max(total_steps - warmup, 1))
  elif config.schedule == 'poly':  # MLPerf's LARS reference: (1 - t / T) ** power, to 0
    main = optax.polynomial_schedule(1.0, 0.0, config.poly_power, max(total_steps - warmup, 1))
  elif config.schedule == 'plateau':
    main = optax.constant_schedule(1.0)  # decays come from ScheduleState.lr_scale
  else:
    raise ValueError(
      f"schedule must be 'step', 'plateau', 'cosine' or 'poly', got {config.schedule!r}."
    )
  if warmup <= 0:
    return main
  ramp = optax.linear_schedule(config.warmup_start_factor, 1.0, warmup)
  if config.schedule in ('cosine', 'poly'):  # the decay starts where the warm-up ends
    return optax.join_schedules([ramp, main], [warmup])
  return lambda step: jnp.where(step < warmup, ramp(step), main(step))


class ScheduleState(NamedTuple):
  """The optimiser's learning-rate state (the last element of the optax chain's state)."""

  count: jax.Array  # updates applied (a float16 step skipped for overflow does not count)
  lr_scale: jax.Array  # reduce-on-plateau factor
  best: jax.Array  # best evaluation metric so far
  bad_evals: jax.Array  # evaluations in a row without improvement
  cooldown: jax.Array  # evaluations left before bad ones count again
  warmup_done: jax.Array  # 1 once the warmup-until-train-error phase has ended
  warmup_error_sum: jax.Array  # training error summed over the current window
  warmup_window_steps: jax.Array  # steps in the current window


def initial_schedule_state() -> ScheduleState:
  return ScheduleState(
    count=np.int32(0),
    lr_scale=np.float32(1.0),
    best=np.float32(np.inf),
    bad_evals=np.int32(0),
    cooldown=np.int32(0),
    warmup_done=np.int32(0),
    warmup_error_sum=np.float32(0.0),
    warmup_window_steps=np.int32(0),
  )


def learning_rate(config, base_schedule, state: ScheduleState):
  """The learning rate of the next update (works on traced and host values alike)."""
  lr = peak_learning_rate(config) * base_schedule(state.count) * state.lr_scale
  if config.warmup_until_train_error > 0:
    lr = lr * jnp.where(state.warmup_done > 0, 1.0, config.warmup_lr_factor)
  return lr


def plateau_update(config, state: ScheduleState, metric: float) -> ScheduleState:
  """Reduce-on-plateau after an evaluation (as torch's ReduceLROnPlateau, mode 'min', 'abs').

  The factor drops by ``lr_decay_factor`` once ``metric`` has failed to improve on the best value
  by ``plateau_min_delta`` for more than ``plateau_patience`` evaluations in a row; then
  ``plateau_cooldown`` evaluations pass before counting again. The rate never goes below
  ``plateau_min_lr``. Runs on the host, on numpy values.
  """
  s = {k: np.asarray(v).copy() for k, v in state._asdict().items()}
  if config.schedule != 'plateau':
    return ScheduleState(**s)
  if metric < s['best'] - config.plateau_min_delta:
    s['best'] = np.float32(metric)
    s['bad_evals'] = np.int32(0)
  else:
    s['bad_evals'] = np.int32(s['bad_evals'] + 1)
  if s['cooldown'] > 0:
    s['cooldown'] = np.int32(s['cooldown'] - 1)
    s['bad_evals'] = np.int32(0)
  if s['bad_evals'] > config.plateau_patience:
    floor = config.plateau_min_lr / peak_learning_rate(config)
    s['lr_scale'] = np.float32(max(s['lr_scale'] * config.lr_decay_factor, floor))
    s['cooldown'] = np.int32(config.plateau_cooldown)
    s['bad_evals'] = np.int32(0)
  return ScheduleState(**s)


def warmup_after_step(config, state: ScheduleState, train_error) -> ScheduleState:
  """Ends the warmup-until-train-error phase when a window's mean training error is below the
  threshold. Windows are ``warmup_error_window`` steps, counted from the run's first step; the
  new phase starts with the next step. Pure jnp: runs inside the train step."""
  if config.warmup_until_train_error <= 0:
    return state
  total = state.warmup_error_sum + train_error
  count = state.warmup_window_steps + 1
  full = count >= config.warmup_error_window
  below = total / count.astype(jnp.float32) < config.warmup_until_train_error
  return state._replace(
    warmup_done=jnp.where(full & below, 1, state.warmup_done).astype(jnp.int32),
    warmup_error_sum=jnp.where(full, 0.0, total).astype(jnp.float32),
    warmup_window_steps=jnp.where(full, 0, count).astype(jnp.int32),
  )


def scale_by_learning_rate(config, base_schedule) -> optax.GradientTransformationExtraArgs:
  """Multiplies the update direction by ``-learning_rate(...)`` (times each tensor's multiplier:
  ``lr_mults``, ``layer_decay``) and advances the schedule state. The multipliers are a function
  of the tensors' names, fixed when the step is traced: the state is the same with or without
  them, so a run resumes with other multipliers.

  ``update`` takes ``train_error`` (this step's mean top-1 training error, all devices), which
  the warmup-until-train-error phase needs.
  """

  def init(params):
    del params
    return jax.tree.map(jnp.asarray, initial_schedule_state())

  def update(updates, state, params=None, *, train_error=None, **extra):
    del params, extra
    lr = learning_rate(config, base_schedule, state)
    multipliers = param_groups.lr_multipliers(updates, config.lr_mults, config.layer_decay)
    if multipliers is None:
      updates = jax.tree.map(lambda u: -lr * u, updates)
    else:
      updates = jax.tree.map(lambda u, m: -lr * m * u, updates, multipliers)
    state = state._replace(count=state.count + 1)
    if train_error is not None:
      state = warmup_after_step(config, state, train_error)
    return updates, state

  return optax.GradientTransformationExtraArgs(init, update)


def bn_and_bias_mask(params, include_bn_and_bias: bool):
  """True for the tensors a decay (or a trust ratio) applies to: conv and dense kernels, and with
  ``include_bn_and_bias`` every tensor (norm scales and biases, biases)."""
  flat = traverse_util.flatten_dict(params)
  mask = {path: include_bn_and_bias or path[-1] == 'kernel' for path in flat}
  return traverse_util.unflatten_dict(mask)


def create_optimizer(config, base_schedule) -> optax.GradientTransformationExtraArgs:
  """The config's optimiser (optax transforms), then the learning rate.

  - 'sgd': torch's SGD: weight decay added to the gradient, then momentum.
  - 'lars': You et al. 2017 as optax's ``lars``: decay added, the update scaled by its layer's
    trust ratio ``lars_trust_coefficient * |w| / |g + decay * w|``, then momentum. The learning
    rate scales the momentum buffer where it is used (torch's SGD and timm's LARS), not where it
    is accumulated (optax's): the same under a constant rate.
  - 'lamb': You et al. 2020 as optax's ``lamb``: Adam's direction, decoupled decay added, then the
    layer's trust ratio ``|w| / |update|``.
  - 'adamw': Loshchilov & Hutter 2019 as torch's ``AdamW`` (timm's fine-tuning optimiser): Adam's
    direction plus the decoupled decay ``weight_decay * w``, both times the learning rate.
  BN scales and shifts and biases are left out of the decay (``weight_decay_bn_and_bias``) and of
  the trust ratio (``trust_ratio_bn_and_bias``; timm and the LARS paper): their update is the
  plain direction times the learning rate. With ``grad_clip_norm`` > 0 the gradients are first
  scaled to at most that global norm (timm's LAMB does so at 1.0).

  The chain's last state is the ``ScheduleState``: ``schedule_state(opt_state)`` reads it and
  ``with_schedule_state`` replaces it (the plateau rule, between steps). With ``freeze`` the
  optimiser's transforms (all but the learning rate's) see the trained tensors only
  (``trained_only``): frozen ones have no momentum or moments, and take no part in the clip.
  """
  decay = optax.add_decayed_weights(
    config.weight_decay,
    mask=lambda params: bn_and_bias_mask(params, config.weight_decay_bn_and_bias),
  )
  trust_mask = lambda params: bn_and_bias_mask(params, config.trust_ratio_bn_and_bias)  # noqa: E731
  learning_rate = scale_by_learning_rate(config, base_schedule)
  momentum = optax.trace(decay=config.momentum, nesterov=config.nesterov)
  if config.optimizer == 'sgd':
    first, rest = decay, (momentum, learning_rate)
  elif config.optimizer == 'lars':
    trust = optax.scale_by_trust_ratio(trust_coefficient=config.lars_trust_coefficient)
    first, rest = decay, (optax.masked(trust, trust_mask), momentum, learning_rate)
  elif config.optimizer in ('lamb', 'adamw'):
    b1, b2 = config.adam_betas
    first = optax.scale_by_adam(b1=b1, b2=b2, eps=adam_eps(config))
    rest = (decay, learning_rate)
    if config.optimizer == 'lamb':
      rest = (decay, optax.masked(optax.scale_by_trust_ratio(), trust_mask), learning_rate)
  else:
    raise ValueError(
      f"optimizer must be 'sgd', 'lars', 'lamb' or 'adamw', got {config.optimizer!r}."
    )
  first = clipped_first(first, config.grad_clip_norm)
  if config.freeze:
    frozen = lambda tree: param_groups.frozen_mask(tree, config.freeze)  # noqa: E731
    return optax.chain(trained_only(optax.chain(first, *rest[:-1]), frozen), rest[-1])
  return optax.chain(first, *rest)


# adam_eps 0 takes the optimiser's own: timm's Lamb 1e-6, torch's (and timm's) AdamW 1e-8.
DEFAULT_ADAM_EPS = {'lamb': 1e-6, 'adamw': 1e-8}


def adam_eps(config) -> float:
  return config.adam_eps or DEFAULT_ADAM_EPS[config.optimizer]


def trained_only(tx, frozen_mask_fn) -> optax.GradientTransformationExtraArgs:
  """``tx`` on the tensors ``frozen_mask_fn(tree)`` leaves out: its state holds them alone (as a
  frozen tensor's ``requires_grad=False`` in torch), and the frozen tensors' updates are 0."""

  def split(tree, frozen):
    flat = traverse_util.flatten_dict(tree)
    return traverse_util.unflatten_dict({k: v for k, v in flat.items() if not frozen[k]})

  def init(params):
    return tx.init(split(params, traverse_util.flatten_dict(frozen_mask_fn(params))))

  def update(updates, state, params=None, **extra):
    frozen = traverse_util.flatten_dict(frozen_mask_fn(updates))
    trained_params = None if params is None else split(params, frozen)
    new, state = tx.update(split(updates, frozen), state, trained_params, **extra)
    new = traverse_util.flatten_dict(new)
    flat = traverse_util.flatten_dict(updates)
    out = {k: jnp.zeros_like(u) if frozen[k] else new[k] for k, u in flat.items()}
    return traverse_util.unflatten_dict(out), state

  return optax.GradientTransformationExtraArgs(init, update)


def frozen_mask(config, tree) -> dict | None:
  """True for each tensor ``freeze`` names (None when nothing is frozen)."""
  return param_groups.frozen_mask(tree, config.freeze) if config.freeze else None


def apply_updates(config, params, updates):
  """``params + updates``, frozen tensors kept as they are (bit for bit: even a -0.0 stays)."""
  new = optax.apply_updates(params, updates)
  frozen = frozen_mask(config, params)
  if frozen is None:
    return new
  return jax.tree.map(lambda p, n, f: p if f else n, params, new, frozen)


def clipped_first(tx, max_norm: float) -> optax.GradientTransformation:
  """``tx`` on the gradients scaled to at most ``max_norm`` global norm (optax's
  ``clip_by_global_norm``; 0: unclipped). Clipping inside the first transform, rather than as a
  transform of its own, keeps the chain's state the same with and without it: a run resumes with
  either setting, and checkpoints from before the option load."""
  if max_norm <= 0:
    return tx
  clip = optax.clip_by_global_norm(max_norm)

  def update(updates, state, params=None):
    updates, _ = clip.update(updates, clip.init(updates))
    return tx.update(updates, state, params)

  return optax.GradientTransformation(tx.init, update)


def schedule_state(opt_state) -> ScheduleState:
  return opt_state[-1]


def with_schedule_state(opt_state, state: ScheduleState):
  return (*opt_state[:-1], state)


def total_steps(config, steps_per_epoch: int) -> int:
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return math.ceil(config.num_epochs * steps_per_epoch)
