"""Scoring a split: the per-device scores of each test protocol and the loop over a split.

Scores are softmax probabilities averaged over the views of an example, as in the paper's section
3.4: 10 crops; or, multi-scale, the whole image at each size and its flip, each scored by the
class-score map of the fully-convolutional net averaged over its positions. Sums of errors and
losses over real examples (mask) are reduced across devices, so the result is over exactly the
split's examples. The command that scores a run's checkpoint is ``resnet_jax.evaluate``.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from jax import lax

from resnet_jax.data import input_pipeline
from resnet_jax.data.source import numpy_batches
from resnet_jax.train import steps
from resnet_jax.train.parallel import AXIS

# Floor of the true class's probability in the loss: a confident miss costs log(1e12) = 27.6
# nats instead of an infinite mean.
MIN_PROBABILITY = 1e-12


def _fully_convolutional_probs(model, variables, image):
  """Softmax of the class-score map averaged over positions (VGG's dense evaluation, which the
  paper follows). The head is linear, so this is the network with its global average pool over
  the whole image."""
  logits = model.apply(variables, image, train=False, spatial_logits=True)
  return jax.nn.softmax(logits.mean(axis=(1, 2)), axis=-1)


def view_probs(model, variables, batch, config):
  """Per-example class probabilities for ``config.eval_mode``."""
  if config.eval_mode == 'center':
    return jax.nn.softmax(model.apply(variables, batch['image'], train=False), axis=-1)
  if config.eval_mode == '10crop':
    views = batch['image']
    logits = model.apply(variables, views.reshape(-1, *views.shape[2:]), train=False)
    return jax.nn.softmax(logits, axis=-1).reshape(*views.shape[:2], -1).mean(axis=1)
  probs = [
    _fully_convolutional_probs(model, variables, view)
    for s in config.multiscale_sizes
    for view in (batch[f'image_{s}'], batch[f'image_{s}'][:, :, ::-1])
  ]
  return sum(probs) / len(probs)


def label_set_errors(probs, label_sets, mask):
  """ReaL's scoring: per-example top-1 and top-5 errors where a prediction is right when it is
  one of the example's labels ([batch, width], padded with -1), and the mask that leaves out
  examples without any label."""
  present = label_sets >= 0
  mask = mask * present.any(axis=-1)
  top5 = lax.top_k(probs, min(5, probs.shape[-1]))[1]
  hit = (top5[:, :, None] == label_sets[:, None, :]) & present[:, None, :]
  top1_err = 1.0 - hit[:, 0].any(axis=-1).astype(jnp.float32)
  top5_err = 1.0 - hit.any(axis=(1, 2)).astype(jnp.float32)
  return top1_err * mask, top5_err * mask, mask


def eval_step(state, batch, *, model, config):
  """Sums over this step's real examples, reduced over all devices. Label sets (ReaL) have no
  loss: only their errors are summed."""
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  probs = view_probs(model, variables, batch, config)
  mask = batch['mask'].astype(jnp.float32)
  if batch['label'].ndim == 2:
    top1, top5, mask = label_set_errors(probs, batch['label'], mask)
    return lax.psum({'top1_err': top1.sum(), 'top5_err': top5.sum(), 'n': mask.sum()}, AXIS)
  top1, top5 = steps.topk_errors(probs, batch['label'], mask)
  picked = jnp.take_along_axis(probs, batch['label'][:, None], axis=-1)[:, 0]
  loss = -jnp.log(jnp.maximum(picked, MIN_PROBABILITY)) * mask
  sums = {'loss': loss.sum(), 'top1_err': top1.sum(), 'top5_err': top5.sum(), 'n': mask.sum()}
  return lax.psum(sums, AXIS)


def score_split(data_parallel, state, eval_fn, config, source, mean=None) -> dict[str, float]:
  """Scores a whole split; returns mean loss/errors and ``num_examples`` actually scored.

  ``mean``: the training split's mean image (pixel_mean normalisation), if already loaded.
  """
  layout = input_pipeline.Layout.current(config.eval_batch_size or config.batch_size)
  ds, num_steps = input_pipeline.eval_dataset(config, source, layout, mean)
  totals = None
  start = time.time()
  for batch in data_parallel.batches(numpy_batches(ds, source)):
    sums = eval_fn(state, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = data_parallel.host(totals)
  n = float(totals.pop('n'))
  return {
    **{k: float(v) / n for k, v in totals.items()},  # loss (not for label sets), errors
    'num_examples': round(n),
    'eval_steps': num_steps,
    'eval_time_s': time.time() - start,
  }
