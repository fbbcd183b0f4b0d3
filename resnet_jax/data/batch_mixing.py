"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) on the devices, over the global batch.

As torchvision's reference scripts (``RandomMixup``, ``RandomCutmix`` under ``RandomChoice``) and
timm's ``Mixup`` in its 'batch' mode: one draw per step for the whole global batch (whether to
mix, mixup or CutMix, the ratio, CutMix's box), and each row mixed with the row before it in the
global batch (torch's ``batch.roll(1, 0)``: row 0 takes the last row). The draws come from the
run seed and the step alone, and the partner is a global row (a device's first row is its
neighbour's last, passed by ``lax.ppermute``), so 1 and N processes, or devices, mix alike and a
resumed run mixes as the uninterrupted one.

The targets are the rows' (smoothed) one-hot labels mixed with the same ratio; CutMix's ratio is
the box's exact share of the image after clipping at the borders (torchvision's).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

# Folded into the run seed's key: the per-step mixing draws.
MIX_STREAM = 0x313C


class MixDraw(NamedTuple):
  """One step's draw: the ratio of the row itself and, for CutMix, the pasted box."""

  lam: jax.Array  # weight of each row's own image and target (1.0: not mixed)
  cutmix: jax.Array  # bool: paste a box of the partner instead of blending
  box: jax.Array  # int32 (y1, y2, x1, x2): rows y1..y2-1, columns x1..x2-1


def enabled(config) -> bool:
  return config.mixup_alpha > 0 or config.cutmix_alpha > 0


def cutmix_box(lam, center_y, center_x, height: int, width: int):
  """torchvision's RandomCutmix box: half-sides ``0.5 * sqrt(1 - lam)`` of each side, truncated to
  whole pixels, around the drawn centre and clipped at the borders; and the ratio the clipped box
  leaves the row."""
  r = 0.5 * jnp.sqrt(1.0 - lam)
  half_w = (r * width).astype(jnp.int32)
  half_h = (r * height).astype(jnp.int32)
  x1, x2 = jnp.maximum(center_x - half_w, 0), jnp.minimum(center_x + half_w, width)
  y1, y2 = jnp.maximum(center_y - half_h, 0), jnp.minimum(center_y + half_h, height)
  area = ((x2 - x1) * (y2 - y1)).astype(jnp.float32)
  return jnp.stack([y1, y2, x1, x2]).astype(jnp.int32), 1.0 - area / (height * width)


def draw(config, seed: int, step, height: int, width: int) -> MixDraw:
  """The step's draw, a function of (seed, step) only."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), MIX_STREAM), step)
  k_apply, k_switch, k_mixup, k_cutmix, k_y, k_x = jax.random.split(key, 6)
  apply = jax.random.uniform(k_apply) < config.mix_prob
  if config.mixup_alpha > 0 and config.cutmix_alpha > 0:
    cutmix = jax.random.uniform(k_switch) < config.mix_switch_prob
  else:
    cutmix = jnp.asarray(config.cutmix_alpha > 0)
  beta = lambda k, a: jax.random.beta(k, a, a) if a > 0 else jnp.float32(1.0)  # noqa: E731
  lam_mixup, lam_cutmix = beta(k_mixup, config.mixup_alpha), beta(k_cutmix, config.cutmix_alpha)
  center_y = jax.random.randint(k_y, (), 0, height)
  center_x = jax.random.randint(k_x, (), 0, width)
  box, lam_box = cutmix_box(lam_cutmix, center_y, center_x, height, width)
  lam = jnp.where(cutmix, lam_box, lam_mixup)
  return MixDraw(jnp.where(apply, lam, 1.0).astype(jnp.float32), cutmix & apply, box)


def previous_rows(x, axis_name: str):
  """Each row's predecessor in the global batch (row 0 of device d is device d-1's last row;
  the global first row takes the global last): torch's ``roll(1, 0)`` over all devices."""
  n = lax.axis_size(axis_name)
  last = lax.ppermute(x[-1:], axis_name, [(d, (d + 1) % n) for d in range(n)])
  return jnp.concatenate([last, x[:-1]], axis=0)


def mix(images, targets, mix_draw: MixDraw, axis_name: str):
  """This device's rows mixed with their predecessors: (images, targets)."""
  other_images = previous_rows(images, axis_name)
  other_targets = previous_rows(targets, axis_name)
  lam = mix_draw.lam
  y1, y2, x1, x2 = mix_draw.box
  rows = jnp.arange(images.shape[1])[:, None]
  cols = jnp.arange(images.shape[2])[None, :]
  inside = (rows >= y1) & (rows < y2) & (cols >= x1) & (cols < x2)
  pasted = jnp.where(inside[None, :, :, None], other_images, images)
  blended = lam * images + (1.0 - lam) * other_images
  mixed_images = jnp.where(mix_draw.cutmix, pasted, blended).astype(images.dtype)
  return mixed_images, lam * targets + (1.0 - lam) * other_targets
