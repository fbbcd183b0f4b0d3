"""Per-example random draws in training, each a function of the example's own PRNG key (which the
train step derives from the run seed, the step and the example's row in the global batch), so
1 and N processes and resumed runs draw alike: stochastic depth and dropout."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def drop_path(y, keys, block_index, rate):
  """timm's ``DropPath`` (stochastic depth, Huang et al. 2016) on a block's residual branch: each
  example keeps it with probability ``1 - rate``, scaled by ``1 / (1 - rate)``, or loses it. An
  example's draw is a function of its key and ``block_index`` alone (``rate`` may be traced)."""
  keep = 1.0 - rate
  draws = jax.vmap(lambda key: jax.random.uniform(jax.random.fold_in(key, block_index)))(keys)
  scale = jnp.where(draws < keep, 1.0 / keep, 0.0).astype(y.dtype)
  return y * scale.reshape(-1, *(1,) * (y.ndim - 1))


def drop_path_rates(stage_sizes, rate: float) -> list[float]:
  """Each block's rate: linear in its index over the whole net, 0 for the first, ``rate`` for the
  last (timm's ``drop_path_rate * block / (blocks - 1)``)."""
  blocks = sum(stage_sizes)
  return [rate * b / max(blocks - 1, 1) for b in range(blocks)]


def dropout(x, keys, index: int, rate: float):
  """torch's ``Dropout(rate)`` in training, each example's mask a function of its key and the
  layer ``index`` alone: kept units scaled by 1 / (1 - rate)."""
  if rate == 0.0:
    return x
  keep = 1.0 - rate

  def mask(key):
    return jax.random.bernoulli(jax.random.fold_in(key, index), keep, x.shape[1:])

  masks = jax.vmap(mask)(keys)
  return jnp.where(masks, x / keep, 0.0).astype(x.dtype)
