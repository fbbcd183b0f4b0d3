"""A run's set-up, shared by training and evaluation: everything derived from a config.

``Experiment`` builds the data sources, the model, the optimiser, the device mesh and the
checkpoint manager once, loads (or computes) the mean image once, and restores the state a run
starts from. ``train.loop`` runs the loop on it; ``resnet_jax.evaluate`` scores a checkpoint
with it.
"""

from __future__ import annotations

import functools
import logging

import jax
from flax import traverse_util

from resnet_jax import storage
from resnet_jax.data import device_pixels, eval_sets, input_pipeline, mean_image, sources
from resnet_jax.errors import UserError
from resnet_jax.models import param_groups
from resnet_jax.train import (
  checkpoint,
  ema,
  fewshot,
  network,
  optim,
  parallel,
  pretrained,
  scoring,
  steps,
)

LOG = logging.getLogger(__name__)


class Experiment:
  """Everything derived from a config: data sources, model, optimiser, mesh, checkpoints."""

  def __init__(self, config, workdir: str, *, reader: bool = False):
    self.config, self.workdir = config, workdir
    self.mesh = parallel.make_mesh()
    self.data_parallel = parallel.DataParallel(self.mesh, config.parallelism)
    parallel.check_batch(config.batch_size, jax.device_count(), jax.process_count())
    if config.eval_batch_size:
      parallel.check_batch(config.eval_batch_size, jax.device_count(), jax.process_count())
    self.train_source = sources.get_source(config, config.train_split)
    if self.train_source.label_width:
      raise sources.source.DatasetError(
        f'{self.train_source.name} gives each image a set of labels (ReaL): it is an evaluation '
        f"set (--config.eval_sets='real={config.dataset}@{config.train_split}'), not training data."
      )
    self.eval_source = sources.get_source(config, config.eval_split)
    if config.hyperrule_train_examples:  # the schedule the recipe picked fits this split
      from configs.recipes import bit_hyperrule

      bit_hyperrule.check_training_split(
        config.hyperrule_train_examples, self.train_source.num_examples, self.train_source.name
      )
    self.num_classes = config.num_classes or self.train_source.num_classes
    self.eval_sets = eval_sets.get_sources(config)  # scored beside eval_split, by name
    eval_sets.check_classes(self.eval_sets, self.num_classes)
    self.mean_image = None  # pixel_mean normalisation: loaded (or computed) once, on first use
    self.layout = input_pipeline.Layout.current(config.batch_size)
    self.steps_per_epoch = input_pipeline.train_steps_per_epoch(self.train_source, self.layout)
    self.total_steps = optim.total_steps(config, self.steps_per_epoch)
    self.base_schedule = optim.schedule_fn(config, self.steps_per_epoch, self.total_steps)
    self.model = network.build_model(config, self.num_classes)
    eval_model = network.build_model(config, self.num_classes, train_bn_axis=False)
    self.tx = optim.create_optimizer(config, self.base_schedule)
    self.eval_fn = self.data_parallel.wrap(
      functools.partial(scoring.eval_step, model=eval_model, config=config), donate_state=False
    )
    self.checkpointer = checkpoint.Checkpointer(
      storage.path(workdir) / 'checkpoints',
      keep=config.keep_checkpoints,
      keep_best=config.keep_best,
      best_metric=config.best_metric,
      async_save=config.async_checkpoints,
      reader=reader,
    )
    # A checkpoint restores only into the same net and optimiser (the state's shapes and types).
    self.meta = {
      'model': config.model,
      'num_classes': self.num_classes,
      'optimizer': config.optimizer,
      'freeze': config.freeze,  # frozen tensors have no optimiser state
    }

  @functools.cached_property
  def train_fn(self):
    """The wrapped train step: (state, device batch) -> (state, metrics). Built on first use,
    since with pixel_ops='device' it holds the mean image."""
    pixel_ops = None
    if self.config.pixel_ops == 'device':
      pixel_ops = device_pixels.PixelOps(self.config, self.pixel_mean())
    return self.data_parallel.wrap(
      functools.partial(
        steps.train_step,
        model=self.model,
        tx=self.tx,
        config=self.config,
        base_schedule=self.base_schedule,
        num_classes=self.num_classes,
        pixel_ops=pixel_ops,
      )
    )

  def initial_state(self, step: int | None = None) -> steps.TrainState:
    """The latest checkpoint of the workdir (or ``step``), else init_from weights, else a fresh
    seeded state; in the form the wrapped steps take."""
    state = network.fresh_state(self.config, self.model, self.tx, self.data_parallel)
    restored = self.checkpointer.restore(state, self.meta, step, steps.upgrade_saved_state)
    if restored is not None:
      LOG.info('Resuming from step %d of %s', int(restored[0].step), self.workdir)
      state = restored[0]
    else:
      if self.config.init_from:
        state = self._init_from(state)
      state = _scale_head(state, self.config.head_init_scale)
    return self.data_parallel.put_state(state)

  def save(self, step: int, state, metric: dict | None = None):
    """Checkpoints ``state`` (asynchronously if configured); ``metric`` ranks the best ones."""
    self.checkpointer.save(step, self.data_parallel.for_checkpoint(state), self.meta, metric)

  def check_checkpoint_space(self, state):
    """Stops a run at start-up whose disk cannot take its next checkpoint (rather than after
    training up to it)."""
    self.checkpointer.check_space(self.data_parallel.for_checkpoint(state), 'the next checkpoint')

  def after_evaluation(self, state, record: dict):
    """``state`` with its reduce-on-plateau state updated by an evaluation's result."""
    schedule = self.data_parallel.host(optim.schedule_state(state.opt_state))
    schedule = optim.plateau_update(self.config, schedule, record[self.config.plateau_metric])
    opt_state = optim.with_schedule_state(state.opt_state, self.data_parallel.put_state(schedule))
    return state.replace(opt_state=opt_state)

  def learning_rate(self, state) -> float:
    """The learning rate of ``state``'s next step."""
    schedule = self.data_parallel.host(optim.schedule_state(state.opt_state))
    return float(optim.learning_rate(self.config, self.base_schedule, schedule))

  def _init_from(self, state):
    abstract = {'params': state.params, 'batch_stats': state.batch_stats}
    loaded = checkpoint.load_variables(
      pretrained.resolve(self.config.init_from, self.config.model),
      abstract,
      self.data_parallel.replicated,
      self.config.init_from_skip,
      relayout=checkpoint.relayout_like,
      use_ema=self.config.init_from_ema,
    )
    merged = jax.tree.map(
      lambda new, old: old if new is None else new, loaded, abstract, is_leaf=lambda x: x is None
    )
    state = state.replace(params=merged['params'], batch_stats=merged['batch_stats'])
    if state.ema:  # this run's own average starts from the weights it starts from
      state = state.replace(ema=ema.initial(state.params, state.batch_stats))
    return state

  def evaluate(self, state) -> dict:
    """Scores the eval split, then each of ``eval_sets`` (its figures prefixed ``NAME/``);
    ``state`` as ``initial_state`` returns it. With a moving average of the weights, scores it
    too: its figures are the ``ema_``-prefixed ones."""
    result = self._score(state, self.eval_source)
    for name, eval_source in self.eval_sets:
      scored = self._score(state, eval_source)
      result['eval_time_s'] += scored.pop('eval_time_s')
      result.update({f'{name}/{k}': v for k, v in scored.items() if k != 'eval_steps'})
    if self.config.fewshot_in_evaluations:
      result.update(self.fewshot(state))
    return result

  def _score(self, state, split_source) -> dict:
    """One split's figures, and the moving average's (``ema_``) where there is one."""
    score = lambda s: scoring.score_split(  # noqa: E731
      self.data_parallel, s, self.eval_fn, self.config, split_source, self.pixel_mean()
    )
    result = score(state)
    if ema.enabled(self.config):
      averaged = score(ema.averaged(state))
      metrics = ('loss', 'top1_err', 'top5_err')
      result.update({f'ema_{k}': averaged[k] for k in metrics if k in averaged})
      result['eval_time_s'] += averaged['eval_time_s']
    return result

  def fewshot(self, state) -> dict:
    """The few-shot probe of ``state``'s net (train/fewshot.py)."""
    try:
      return fewshot.run(self, state)
    except ValueError as e:  # a class with fewer examples than the shots
      raise UserError(str(e)) from None

  @functools.cached_property
  def feature_fn(self):
    """The wrapped pre-logit feature step of the few-shot probe (compiled once per shape)."""
    model = network.build_model(self.config, self.num_classes, train_bn_axis=False)
    step = functools.partial(fewshot.feature_step, model=model)
    return self.data_parallel.wrap(step, donate_state=False)

  def pixel_mean(self):
    """The training split's mean image (None unless normalization is 'pixel_mean')."""
    if self.config.normalization == 'pixel_mean' and self.mean_image is None:
      self.mean_image = mean_image.load_or_compute(self.config, self.train_source)
    return self.mean_image


def _scale_head(state, scale: float):
  """The classifier's weights and bias times ``head_init_scale`` (timm's; 0: BiT's zero head), as
  a run starts (after init_from)."""
  if scale == 1.0:
    return state
  head = param_groups.head_prefix(state.params)
  params = {**state.params, head: jax.tree.map(lambda w: w * scale, state.params[head])}
  state = state.replace(params=params)
  if state.ema:  # the average starts from the weights the run starts from
    state = state.replace(ema=ema.initial(state.params, state.batch_stats))
  return state


def flat_params(state) -> dict:
  """Parameters as a flat {path: numpy} dict (for comparisons in tests and tools)."""
  return traverse_util.flatten_dict(jax.device_get(state.params), sep='/')
