"""An exponential moving average of the weights (parameters and BatchNorm statistics), updated
inside the train step and saved in the TrainState (``state.ema``; {} when off).

Every ``ema_every`` steps ``ema = decay * ema + (1 - decay) * weights``. With ``ema_warmup`` the
decay of the n-th update (n from 0) is ``min(ema_decay, 1 - (1 + n) ** (-2/3))``, timm's
ModelEmaV3 warm-up: the average starts as the weights and lengthens its memory as they settle.
The BatchNorm running statistics are averaged as torchvision's ``ExponentialMovingAverage`` with
``use_buffers=True`` does, so the averaged weights are evaluated with averaged statistics.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

WARMUP_POWER = 2.0 / 3.0  # timm's ModelEmaV3 default (warmup_gamma 1)


def enabled(config) -> bool:
  return config.ema_decay > 0


def initial(params, batch_stats) -> dict:
  """The average before any update: the initial weights (copies, so none alias the state's)."""
  copy = lambda tree: jax.tree.map(jnp.array, tree)  # noqa: E731
  return {'params': copy(params), 'batch_stats': copy(batch_stats)}


def decay(config, update_index):
  """The decay of the ``update_index``-th update (0-based)."""
  if not config.ema_warmup:
    return jnp.float32(config.ema_decay)
  warm = 1.0 - (1.0 + update_index.astype(jnp.float32)) ** -WARMUP_POWER
  return jnp.minimum(jnp.float32(config.ema_decay), warm)


def update(config, average: dict, params, batch_stats, step) -> dict:
  """The average after train step ``step`` (1-based) made ``params`` and ``batch_stats``."""
  due = step % config.ema_every == 0
  d = jnp.where(due, decay(config, step // config.ema_every - 1), 1.0)
  blend = lambda a, w: (d * a + (1.0 - d) * w).astype(a.dtype)  # noqa: E731
  new = {'params': params, 'batch_stats': batch_stats}
  return jax.tree.map(blend, average, new)


def averaged(state):
  """``state`` with its average in place of its weights (for evaluation)."""
  return state.replace(params=state.ema['params'], batch_stats=state.ema['batch_stats'])
