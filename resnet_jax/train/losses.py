"""Training losses on (possibly mixed) soft targets: softmax cross-entropy and timm's binary
cross-entropy ("ResNet strikes back")."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def one_hot_targets(labels, num_classes: int, label_smoothing: float = 0.0):
  """Smoothed one-hot rows: ``1 - s + s / K`` on the label, ``s / K`` elsewhere (torch's and
  timm's smoothing alike)."""
  return optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)


def softmax_cross_entropy(logits, targets):
  """Per-example cross-entropy of the softmax against target distributions."""
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def binary_cross_entropy(logits, targets, target_threshold: float = 0.0):
  """Per-example mean over classes of the sigmoid cross-entropy (timm's BinaryCrossEntropy,
  whose batch mean is torch's ``binary_cross_entropy_with_logits(reduction='mean')``). With a
  threshold > 0, targets above it count as 1 and the rest as 0 (timm's ``target_threshold``)."""
  if target_threshold > 0:
    targets = (targets > target_threshold).astype(jnp.float32)
  return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets).mean(axis=-1)


def loss(config, logits, targets):
  """The config's per-example training loss."""
  if config.loss == 'bce':
    return binary_cross_entropy(logits, targets, config.bce_target_threshold)
  return softmax_cross_entropy(logits, targets)
