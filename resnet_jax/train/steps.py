"""TrainState and the per-device train and eval steps (named-axis collectives over 'data').

Both steps are written once and run under parallel.DataParallel (shard_map or pmap).
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from resnet_jax.models import block_layout
from resnet_jax.train import optim
from resnet_jax.train.divergence import NONFINITE_GRADIENTS, NONFINITE_LOSS
from resnet_jax.train.parallel import AXIS


class TrainState(flax.struct.PyTreeNode):
  """Everything a run needs to continue exactly.

  Attributes:
    step: optimisation steps taken.
    params, batch_stats: model variables (float32).
    opt_state: optax state: momentum buffers, then optim.ScheduleState (the learning rate's
      update count, plateau factor and counters, warmup phase).
    loss_scale: {'scale', 'good_steps'} for float16 dynamic loss scaling, else {}.
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  loss_scale: dict


LOSS_SCALE_PERIOD = 2000  # Steps of finite gradients before the float16 loss scale doubles.
INITIAL_LOSS_SCALE = 2.0**15  # float16 gradients of typical losses stay finite at this scale.


def create_train_state(model, tx, image_shape, rng, *, fp16_loss_scale: bool) -> TrainState:
  variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  params = variables['params']
  loss_scale = {}
  if fp16_loss_scale:
    loss_scale = {'scale': jnp.float32(INITIAL_LOSS_SCALE), 'good_steps': jnp.int32(0)}
  return TrainState(
    step=jnp.int32(0),
    params=params,
    batch_stats=variables.get('batch_stats', {}),  # none under GroupNorm
    opt_state=tx.init(params),
    loss_scale=loss_scale,
  )


def cross_entropy(logits, labels, num_classes: int, label_smoothing: float = 0.0):
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def topk_errors(scores, labels, mask=None):
  """Per-example top-1 and top-5 errors (1.0 = wrong) from scores of any monotone kind."""
  top5 = lax.top_k(scores, min(5, scores.shape[-1]))[1]
  hit = top5 == labels[:, None]
  top1_err = 1.0 - hit[:, 0].astype(jnp.float32)
  top5_err = 1.0 - jnp.any(hit, axis=-1).astype(jnp.float32)
  if mask is not None:
    top1_err, top5_err = top1_err * mask, top5_err * mask
  return top1_err, top5_err


# Folded into the run seed's key: the net's own draws (stochastic depth, dropout).
MODEL_DRAWS_STREAM = 0x5D3F


def example_keys(seed: int, step, images):
  """One PRNG key per example of this device's rows, a function of the run seed, the step and the
  example's row in the global batch only (device i of the data axis holds rows i * n ...
  (i + 1) * n - 1): the same whichever process or device trains it, and after a resume."""
  local = images.shape[0]
  rows = lax.axis_index(AXIS) * local + jnp.arange(local)
  base = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), MODEL_DRAWS_STREAM), step)
  return jax.vmap(lambda row: jax.random.fold_in(base, row))(rows)


def train_step(
  state: TrainState, batch, *, model, tx, config, base_schedule, num_classes, pixel_ops=None
):
  """One SGD step on this device's rows; gradients and BN running averages averaged over AXIS.

  ``pixel_ops`` (device_pixels.PixelOps) finishes batches sent as uint8 crops with their draws
  (pixel_ops='device'); without it ``batch['image']`` is the finished float32 images.
  """
  scale = state.loss_scale.get('scale', 1.0)
  images = batch['image'] if pixel_ops is None else pixel_ops(batch)

  # Only BatchNorm updates statistics in training. GroupNorm has none, and a frozen BatchNorm's
  # must stay bitwise as loaded (a mean over devices of equal values can round them).
  running_statistics = config.norm == 'batch' and bool(state.batch_stats)  # VGG-11 has no norms

  apply = functools.partial(model.apply, train=True)
  if model.random_in_training:  # stochastic depth, dropout
    apply = functools.partial(apply, example_keys=example_keys(config.seed, state.step, images))

  def loss_fn(params):
    variables = {'params': params, 'batch_stats': state.batch_stats}
    if not running_statistics:
      logits, batch_stats = apply(variables, images), state.batch_stats
    else:
      logits, updates = apply(variables, images, mutable=['batch_stats'])
      batch_stats = updates['batch_stats']
    loss = cross_entropy(logits, batch['label'], num_classes, config.label_smoothing).mean()
    return loss * scale, (batch_stats, logits, loss)

  grads, (batch_stats, logits, loss) = jax.grad(loss_fn, has_aux=True)(state.params)
  grads = lax.pmean(grads, AXIS)
  grads = jax.tree.map(lambda g: g / scale, grads)
  if running_statistics:
    # Running averages are linear in the batch statistics, so averaging them every step equals
    # averaging per-device averages at the end: one consistent set to evaluate and save.
    batch_stats = lax.pmean(batch_stats, AXIS)
  top1, top5 = topk_errors(logits, batch['label'])
  metrics = {'loss': loss, 'top1_err': top1.mean(), 'top5_err': top5.mean()}
  metrics = lax.pmean(metrics, AXIS)
  schedule = optim.schedule_state(state.opt_state)
  metrics['learning_rate'] = optim.learning_rate(config, base_schedule, schedule)

  updates, opt_state = tx.update(
    grads, state.opt_state, state.params, train_error=metrics['top1_err']
  )
  new_state = state.replace(
    step=state.step + 1,
    params=optax.apply_updates(state.params, updates),
    batch_stats=batch_stats,
    opt_state=opt_state,
  )
  # A step whose loss or gradients are not finite is never applied: the state stays the last
  # finite one (only the step count, i.e. the batch consumed, advances), so no checkpoint can
  # hold NaNs. Gradients and loss are averaged over AXIS, so every device decides alike. Under
  # float16 loss scaling an overflowing gradient is routine (the scale halves); only a non-finite
  # loss counts as a divergence there.
  grads_finite = _all_finite(grads)
  loss_finite = jnp.isfinite(metrics['loss'])
  new_state = _keep_old_unless(grads_finite & loss_finite, state, new_state)
  bad_gradients = jnp.where(grads_finite, 0.0, NONFINITE_GRADIENTS)
  if state.loss_scale:
    new_state = new_state.replace(loss_scale=_next_loss_scale(state.loss_scale, grads_finite))
    bad_gradients = 0.0
  metrics['nonfinite'] = jnp.where(loss_finite, bad_gradients, NONFINITE_LOSS)
  return new_state, metrics


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _keep_old_unless(apply, old: TrainState, new: TrainState) -> TrainState:
  """``new`` where ``apply``, else ``old`` but for the step count (the batch is consumed).

  A step left out keeps the old optimiser state, so it does not advance the learning rate. One
  ``lax.cond`` on the whole state: an elementwise select per leaf doubled the step's compile
  time (PERFORMANCE.md).
  """
  parts = lambda s: (s.params, s.opt_state, s.batch_stats)  # noqa: E731
  params, opt_state, batch_stats = lax.cond(apply, lambda: parts(new), lambda: parts(old))
  return new.replace(params=params, opt_state=opt_state, batch_stats=batch_stats)


def _next_loss_scale(loss_scale: dict, grads_finite) -> dict:
  """float16 dynamic loss scaling: halve the scale on overflow; double it after a calm period."""
  good = jnp.where(grads_finite, loss_scale['good_steps'] + 1, 0)
  scale = jnp.where(grads_finite, loss_scale['scale'], loss_scale['scale'] / 2)
  grow = good >= LOSS_SCALE_PERIOD
  return {'scale': jnp.where(grow, scale * 2, scale), 'good_steps': jnp.where(grow, 0, good)}


def upgrade_saved_state(saved: dict, current: TrainState) -> TrainState | None:
  """A TrainState saved in another layout, converted to ``current``'s; None if not recognised.

  Two differences are bridged: the block layout (a run saved with or without ``scan_blocks``
  resumes with the other setting), and checkpoints of resnet_jax before the learning-rate state
  moved into the optimiser (a top-level ``schedule`` dict, with or without the warm-up window
  counters; the update count is then the saved step).

  Args:
    saved: the checkpoint as restored in its own layout (nested dicts, lists and arrays).
    current: this run's freshly initialised state (structure, shapes and shardings).
  """
  like = lambda tree: block_layout.relayout_like(tree, current.params)  # noqa: E731
  momentum = saved['opt_state'][1]['trace']
  if 'schedule' in saved:
    old = jax.device_get({**saved['schedule'], 'count': saved['step']})  # host copies: no aliasing
  elif len(saved['opt_state']) == len(current.opt_state):
    old = saved['opt_state'][-1]
  else:
    return None
  fresh = optim.initial_schedule_state()._asdict()
  schedule = optim.ScheduleState(
    **{k: np.asarray(old.get(k, v), v.dtype) for k, v in fresh.items()}
  )
  opt_state = (
    *current.opt_state[:-2],
    current.opt_state[-2]._replace(trace=like(momentum)),
    schedule,
  )
  upgraded = current.replace(
    step=saved['step'],
    params=like(saved['params']),
    batch_stats=like(saved['batch_stats']),
    opt_state=opt_state,
    loss_scale=saved['loss_scale'] or current.loss_scale,
  )
  shapes = lambda tree: jax.tree.map(lambda x: x.shape, tree)  # noqa: E731
  if shapes(upgraded) != shapes(current):
    return None
  return jax.tree.map(lambda new, c: jax.device_put(new, c.sharding), upgraded, current)
