"""Evaluation: the per-device scoring of each test protocol, the loop over a split, and a CLI.

Scores are softmax probabilities averaged over the views of an example (10 crops; or scales,
flips and the positions of the fully-convolutional output map), as in the paper's section 3.4.
Sums of errors and losses over real examples (mask) are reduced across devices, so the result is
over exactly the split's examples.

  python -m resnet_jax.evaluate --config=configs/r50.py --workdir=DIR --config.eval_mode=10crop
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
from jax import lax

from resnet_jax import input_pipeline, steps, storage
from resnet_jax.parallel import AXIS


def _multiscale_probs(model, variables, image, hw, flip: bool):
  """Mean softmax over the valid positions of the fully-convolutional map of padded canvases."""
  batch, side = image.shape[0], image.shape[1]
  if flip:  # mirror each image inside its own valid width, keeping the padding on the right
    cols = jnp.arange(side)[None, :]
    source = jnp.where(cols < hw[:, 1:2], hw[:, 1:2] - 1 - cols, cols)
    image = jnp.take_along_axis(image, source[:, None, :, None], axis=2)
  logits = model.apply(variables, image, train=False, spatial_logits=True)
  stride = side // logits.shape[1]
  rows_valid = jnp.arange(logits.shape[1])[None, :] < -(-hw[:, 0:1] // stride)
  cols_valid = jnp.arange(logits.shape[2])[None, :] < -(-hw[:, 1:2] // stride)
  valid = (rows_valid[:, :, None] & cols_valid[:, None, :]).astype(jnp.float32)
  probs = jax.nn.softmax(logits, axis=-1) * valid[..., None]
  return probs.sum(axis=(1, 2)) / valid.sum(axis=(1, 2)).reshape(batch, 1)


def view_probs(model, variables, batch, config):
  """Per-example class probabilities for ``config.eval_mode``."""
  if config.eval_mode == 'center':
    return jax.nn.softmax(model.apply(variables, batch['image'], train=False), axis=-1)
  if config.eval_mode == '10crop':
    views = batch['image']
    logits = model.apply(variables, views.reshape(-1, *views.shape[2:]), train=False)
    return jax.nn.softmax(logits, axis=-1).reshape(*views.shape[:2], -1).mean(axis=1)
  probs = [
    _multiscale_probs(model, variables, batch[f'image_{s}'], batch[f'hw_{s}'], flip)
    for s in config.multiscale_sizes
    for flip in (False, True)
  ]
  return sum(probs) / len(probs)


def eval_step(state, batch, *, model, config):
  """Sums over this step's real examples, reduced over all devices."""
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  probs = view_probs(model, variables, batch, config)
  mask = batch['mask'].astype(jnp.float32)
  top1, top5 = steps.topk_errors(probs, batch['label'], mask)
  picked = jnp.take_along_axis(probs, batch['label'][:, None], axis=-1)[:, 0]
  loss = -jnp.log(jnp.maximum(picked, 1e-12)) * mask
  sums = {'loss': loss.sum(), 'top1_err': top1.sum(), 'top5_err': top5.sum(), 'n': mask.sum()}
  return lax.psum(sums, AXIS)


def run_evaluation(dp, state, eval_fn, config, source, mean=None) -> dict[str, float]:
  """Scores a whole split; returns mean loss/errors and ``num_examples`` actually scored.

  ``mean``: the training split's mean image (pixel_mean normalisation), if already loaded.
  """
  layout = input_pipeline.Layout.current(config.eval_batch_size or config.batch_size)
  ds, num_steps = input_pipeline.eval_dataset(config, source, layout, mean)
  totals = None
  start = time.time()
  for batch in dp.batches(input_pipeline.numpy_batches(ds, source)):
    sums = eval_fn(state, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = dp.host(totals)
  n = float(totals['n'])
  return {
    'loss': float(totals['loss']) / n,
    'top1_err': float(totals['top1_err']) / n,
    'top5_err': float(totals['top5_err']) / n,
    'num_examples': round(n),
    'eval_steps': num_steps,
    'eval_time_s': time.time() - start,
  }


def main(argv):
  del argv
  from resnet_jax import distributed, train  # the run's set-up lives in train

  distributed.initialize()
  distributed.hide_accelerators_from_tensorflow()
  config = FLAGS.config
  result = train.evaluate_workdir(config, FLAGS.workdir, FLAGS.checkpoint_step)
  line = json.dumps({'eval_mode': config.eval_mode, **result})
  print(line)
  if jax.process_index() == 0:
    records = storage.path(FLAGS.workdir) / f'eval_{config.eval_mode}.jsonl'
    storage.AppendOnlyText(records).append(line + '\n')


def run():
  from resnet_jax import cli

  cli.run(main)


if __name__ == '__main__':
  from absl import flags
  from ml_collections import config_flags

  FLAGS = flags.FLAGS
  config_flags.DEFINE_config_file('config', None, 'Config file of the run.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Workdir of the run to evaluate.')
  flags.DEFINE_integer('checkpoint_step', None, 'Step to restore; default the latest.')
  flags.mark_flags_as_required(['config', 'workdir'])
  run()
