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
from jax import lax

from resnet_jax.data import batch_mixing
from resnet_jax.models import block_layout, param_groups
from resnet_jax.train import ema, losses, optim
from resnet_jax.train.divergence import NONFINITE_GRADIENTS, NONFINITE_LOSS
from resnet_jax.train.parallel import AXIS


class TrainState(flax.struct.PyTreeNode):
  """Everything a run needs to continue exactly.

  Attributes:
    step: optimisation steps taken.
    params, batch_stats: model variables (float32).
    opt_state: optax state: the optimiser's (momentum buffers; Adam's moments), then
      optim.ScheduleState (the learning rate's update count, plateau factor and counters, warmup
      phase).
    loss_scale: {'scale', 'good_steps'} for float16 dynamic loss scaling, else {}.
    ema: {'params', 'batch_stats'}, the moving average of the weights (train/ema.py), else {}.
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  loss_scale: dict
  ema: dict = flax.struct.field(default_factory=dict)


LOSS_SCALE_PERIOD = 2000  # Steps of finite gradients before the float16 loss scale doubles.
INITIAL_LOSS_SCALE = 2.0**15  # float16 gradients of typical losses stay finite at this scale.


def create_train_state(
  model, tx, image_shape, rng, *, fp16_loss_scale: bool, with_ema: bool = False
) -> TrainState:
  variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  params = variables['params']
  batch_stats = variables.get('batch_stats', {})  # none under GroupNorm
  loss_scale = {}
  if fp16_loss_scale:
    loss_scale = {'scale': jnp.float32(INITIAL_LOSS_SCALE), 'good_steps': jnp.int32(0)}
  return TrainState(
    step=jnp.int32(0),
    params=params,
    batch_stats=batch_stats,
    opt_state=tx.init(params),
    loss_scale=loss_scale,
    ema=ema.initial(params, batch_stats) if with_ema else {},
  )


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


def _micro_batches(tree, k: int):
  """Each leaf's rows as k consecutive micro-batches (a new leading axis of k)."""
  return jax.tree.map(lambda x: x.reshape(k, x.shape[0] // k, *x.shape[1:]), tree)


def train_step(
  state: TrainState, batch, *, model, tx, config, base_schedule, num_classes, pixel_ops=None
):
  """One optimiser step on this device's rows; gradients and BN running averages averaged over
  AXIS.

  ``pixel_ops`` (device_pixels.PixelOps) finishes batches sent as uint8 crops with their draws
  (pixel_ops='device'); without it ``batch['image']`` is the finished float32 images. Mixup /
  CutMix (data/batch_mixing.py) then mix the global batch's rows and their targets. With
  ``grad_accum_steps`` k > 1 the rows are k micro-batches run one after another: the gradient is
  the mean of theirs, and BatchNorm normalises each micro-batch by its own statistics and updates
  its running averages once per micro-batch (as k forward passes in torch do).
  """
  scale = state.loss_scale.get('scale', 1.0)
  images = batch['image'] if pixel_ops is None else pixel_ops(batch)
  targets = losses.one_hot_targets(batch['label'], num_classes, config.label_smoothing)
  if batch_mixing.enabled(config):
    height, width = images.shape[1:3]
    mix_draw = batch_mixing.draw(config, config.seed, state.step, height, width)
    images, targets = batch_mixing.mix(images, targets, mix_draw, AXIS)
  inputs = {'image': images, 'target': targets}
  if getattr(model, 'random_in_training', False):  # stochastic depth, dropout
    inputs['keys'] = example_keys(config.seed, state.step, images)

  # Only BatchNorm updates statistics in training. GroupNorm has none, and a frozen BatchNorm's
  # must stay bitwise as loaded (a mean over devices of equal values can round them).
  running_statistics = config.norm == 'batch' and bool(state.batch_stats)  # VGG-11 has no norms

  # GoogLeNet's auxiliary classifiers sow their logits; their losses join the main one, weighted.
  aux_weight = config.aux_loss_weight if getattr(model, 'aux_logits', False) else 0.0
  mutable = ['batch_stats'] * running_statistics + ['intermediates'] * bool(aux_weight)

  def loss_fn(params, batch_stats, micro):
    variables = {'params': params, 'batch_stats': batch_stats}
    apply = functools.partial(model.apply, train=True)
    if 'keys' in micro:
      apply = functools.partial(apply, example_keys=micro['keys'])
    if not mutable:
      logits = apply(variables, micro['image'])
    else:
      logits, updates = apply(variables, micro['image'], mutable=mutable)
      batch_stats = updates['batch_stats'] if running_statistics else batch_stats
    loss = losses.loss(config, logits, micro['target']).mean()
    if aux_weight:
      for aux_logits in updates['intermediates']['aux_logits']:
        loss += aux_weight * losses.loss(config, aux_logits, micro['target']).mean()
    return loss * scale, (batch_stats, logits, loss)

  gradient = jax.grad(loss_fn, has_aux=True)
  k = config.grad_accum_steps
  if k == 1:
    grads, (batch_stats, logits, loss) = gradient(state.params, state.batch_stats, inputs)
  else:

    def micro_step(carry, micro):
      grad_sum, batch_stats = carry
      grads, (batch_stats, logits, loss) = gradient(state.params, batch_stats, micro)
      return (jax.tree.map(jnp.add, grad_sum, grads), batch_stats), (logits, loss)

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (grad_sum, batch_stats), (logits, micro_losses) = lax.scan(
      micro_step, (zeros, state.batch_stats), _micro_batches(inputs, k)
    )
    grads = jax.tree.map(lambda g: g / k, grad_sum)
    logits, loss = logits.reshape(-1, logits.shape[-1]), micro_losses.mean()
  frozen = optim.frozen_mask(config, grads)
  if frozen is not None:  # a frozen tensor's gradient is never used: XLA then never computes it
    grads = jax.tree.map(lambda g, f: jnp.zeros_like(g) if f else g, grads, frozen)
  grads = lax.pmean(grads, AXIS)
  grads = jax.tree.map(lambda g: g / scale, grads)
  if running_statistics:
    # Running averages are linear in the batch statistics, so averaging them every step equals
    # averaging per-device averages at the end: one consistent set to evaluate and save.
    batch_stats = lax.pmean(batch_stats, AXIS)
    # A frozen BatchNorm's statistics stay bit for bit (a mean of equal values can round them).
    batch_stats = _keep_frozen_norms(config, state.params, state.batch_stats, batch_stats)
  # Errors against each row's own label (with mixup: the label of the image it was mixed into).
  top1, top5 = topk_errors(logits, batch['label'])
  metrics = {'loss': loss, 'top1_err': top1.mean(), 'top5_err': top5.mean()}
  metrics = lax.pmean(metrics, AXIS)
  schedule = optim.schedule_state(state.opt_state)
  metrics['learning_rate'] = optim.learning_rate(config, base_schedule, schedule)

  updates, opt_state = tx.update(
    grads, state.opt_state, state.params, train_error=metrics['top1_err']
  )
  params = optim.apply_updates(config, state.params, updates)
  metrics['relative_update'] = _relative_update(updates, state.params)
  new_state = state.replace(
    step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
  )
  if state.ema:
    new_state = new_state.replace(
      ema=ema.update(config, state.ema, params, batch_stats, new_state.step)
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


def _keep_frozen_norms(config, params, old_stats, new_stats):
  """``new_stats`` with the frozen BatchNorms' statistics (``freeze``, ``freeze_bn_stats``) taken
  from ``old_stats``."""
  if not (config.freeze and config.freeze_bn_stats):
    return new_stats
  norms = set(param_groups.frozen_norms(params, config.freeze))
  old = flax.traverse_util.flatten_dict(old_stats)
  new = flax.traverse_util.flatten_dict(new_stats)
  kept = {key: old[key] if '/'.join(key[:-1]) in norms else value for key, value in new.items()}
  return flax.traverse_util.unflatten_dict(kept)


def _relative_update(updates, params) -> jax.Array:
  """The mean over conv and dense kernels of |update| / |weight|: LAMB's trust ratio makes it
  the learning rate for every kernel, LARS's its trust coefficient times the rate (before
  momentum); a diagnostic of any optimiser's step size per layer."""
  kernels = jax.tree.leaves(optim.bn_and_bias_mask(params, False))
  ratios = [
    jnp.linalg.norm(u) / jnp.maximum(jnp.linalg.norm(p), 1e-12)
    for u, p, kernel in zip(jax.tree.leaves(updates), jax.tree.leaves(params), kernels, strict=True)
    if kernel
  ]
  return jnp.mean(jnp.stack(ratios))


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _keep_old_unless(apply, old: TrainState, new: TrainState) -> TrainState:
  """``new`` where ``apply``, else ``old`` but for the step count (the batch is consumed).

  A step left out keeps the old optimiser state, so it does not advance the learning rate. One
  ``lax.cond`` on the whole state: an elementwise select per leaf doubled the step's compile
  time (PERFORMANCE.md).
  """
  parts = lambda s: (s.params, s.opt_state, s.batch_stats, s.ema)  # noqa: E731
  params, opt_state, batch_stats, average = lax.cond(apply, lambda: parts(new), lambda: parts(old))
  return new.replace(params=params, opt_state=opt_state, batch_stats=batch_stats, ema=average)


def _next_loss_scale(loss_scale: dict, grads_finite) -> dict:
  """float16 dynamic loss scaling: halve the scale on overflow; double it after a calm period."""
  good = jnp.where(grads_finite, loss_scale['good_steps'] + 1, 0)
  scale = jnp.where(grads_finite, loss_scale['scale'], loss_scale['scale'] / 2)
  grow = good >= LOSS_SCALE_PERIOD
  return {'scale': jnp.where(grow, scale * 2, scale), 'good_steps': jnp.where(grow, 0, good)}


def upgrade_saved_state(saved: dict, current: TrainState) -> TrainState | None:
  """A TrainState saved in another layout, converted to ``current``'s; None if not recognised.

  Three differences are bridged: the block layout (a run saved with or without ``scan_blocks``
  resumes with the other setting); checkpoints of resnet_jax before the learning-rate state
  moved into the optimiser (a top-level ``schedule`` dict, with or without the warm-up window
  counters; the update count is then the saved step); and the weights' moving average switched
  on at a resume (it starts from the restored weights) or off (it is dropped).

  Args:
    saved: the checkpoint as restored in its own layout (nested dicts, lists and arrays).
    current: this run's freshly initialised state (structure, shapes and shardings).
  """
  like = lambda tree: block_layout.relayout_like(tree, current.params)  # noqa: E731
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
  transforms = zip(saved['opt_state'], current.opt_state[:-1], strict=False)
  opt_state = (*(_state_like(s, c, like) for s, c in transforms), schedule)
  params, batch_stats = like(saved['params']), like(saved['batch_stats'])
  average = {}
  if current.ema:
    saved_ema = saved.get('ema') or {'params': params, 'batch_stats': batch_stats}
    # Host copies: an average started from the weights must not share their buffers (donated).
    average = {k: jax.tree.map(np.array, like(saved_ema[k])) for k in ('params', 'batch_stats')}
  upgraded = current.replace(
    step=saved['step'],
    params=params,
    batch_stats=batch_stats,
    opt_state=opt_state,
    loss_scale=saved['loss_scale'] or current.loss_scale,
    ema=average,
  )
  shapes = lambda tree: jax.tree.map(lambda x: x.shape, tree)  # noqa: E731
  if shapes(upgraded) != shapes(current):
    return None
  return jax.tree.map(lambda new, c: jax.device_put(new, c.sharding), upgraded, current)


def _state_like(saved, current, like):
  """An optax transform's saved state (NamedTuples restored as dicts, tuples as lists) in
  ``current``'s types, its parameter-shaped trees in this model's block layout."""
  if isinstance(current, tuple) and hasattr(current, '_fields'):
    return type(current)(
      *(_state_like(saved[f], getattr(current, f), like) for f in current._fields)
    )
  if isinstance(current, tuple | list):
    return type(current)(_state_like(s, c, like) for s, c in zip(saved, current, strict=True))
  if isinstance(current, dict):
    return like(saved)
  return saved
