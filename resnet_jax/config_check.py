"""The rule of every config field, checked before any work (workdir, data, devices).

``configs/default.py`` documents each field; ``RULES`` here holds its check, one entry per field
(a test fails when a field has no rule, so a new field cannot be added without one). A broken
value ends the command with one line naming the field, what it must be and what it was.
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Callable, Iterable

from resnet_jax.errors import UserError

LOG = logging.getLogger(__name__)


class ConfigError(UserError):
  """A config value (or a combination of values) that cannot work."""


Rule = Callable[[str, object], None]


def _fail(name: str, value, must: str):
  raise ConfigError(f'--config.{name}={value!r}: must be {must}.')


def _is_number(value) -> bool:
  return isinstance(value, int | float) and not isinstance(value, bool)


def number(lo: float | None = None, hi: float | None = None, *, integer=False, open_lo=False):
  """A number in [lo, hi] (or (lo, hi] with open_lo); an integer when ``integer``."""

  def check(name, value):
    kind = 'an integer' if integer else 'a number'
    ok = isinstance(value, int) and not isinstance(value, bool) if integer else _is_number(value)
    if not ok or (not integer and not math.isfinite(value)):
      _fail(name, value, kind)
    if lo is not None and (value <= lo if open_lo else value < lo):
      _fail(name, value, f'{kind} {">" if open_lo else ">="} {lo}')
    if hi is not None and value > hi:
      _fail(name, value, f'{kind} <= {hi}')

  return check


def or_the_nets_own(rule: Rule) -> Rule:
  """-1 (the net's own value), or a value ``rule`` takes."""

  def check(name, value):
    if value != -1:
      rule(name, value)

  return check


def one_of(*choices) -> Rule:
  def check(name, value):
    if value not in choices:
      _fail(name, value, 'one of ' + ', '.join(repr(c) for c in choices))

  return check


def boolean(name, value):
  if not isinstance(value, bool):
    _fail(name, value, 'True or False')


def text(*, required=False) -> Rule:
  def check(name, value):
    if not isinstance(value, str) or (required and not value.strip()):
      _fail(name, value, 'a non-empty string' if required else 'a string')

  return check


def numbers(length: int | None, element: Rule, *, increasing=False, nonempty=True) -> Rule:
  """A tuple of numbers, each passing ``element``; ``length`` fixed or any."""

  def check(name, value):
    if not isinstance(value, tuple | list) or (nonempty and not value):
      _fail(name, value, f'a tuple of {length or "one or more"} numbers, e.g. (1, 2)')
    if length is not None and len(value) != length:
      _fail(name, value, f'a tuple of {length} numbers')
    for v in value:
      element(name, v)
    if increasing and list(value) != sorted(value):
      _fail(name, value, 'in increasing order')

  return check


def booleans(length: int) -> Rule:
  def check(name, value):
    if not isinstance(value, tuple | list) or len(value) != length:
      _fail(name, value, f'a tuple of {length} True/False values')
    for v in value:
      boolean(name, v)

  return check


def model_name(name, value):
  from resnet_jax.models import registry

  try:
    registry.model_config(value)
  except (ValueError, TypeError) as e:
    raise ConfigError(f'--config.{name}={value!r}: {e}') from None


def class_ids(name, value):
  parts = [p.strip() for p in value.split(',')] if value else []
  if not all(p.isdigit() for p in parts) or len(set(parts)) != len(parts) or len(parts) == 1:
    _fail(name, value, "'' or two or more distinct comma-separated class ids, e.g. '5,6,7,8,9'")


def eval_set_list(name, value):
  from resnet_jax.data import eval_sets

  if not isinstance(value, str):
    _fail(name, value, "a string of NAME=[DATASET@]SPLIT entries, e.g. 'v2=imagenet_v2@test'")
  try:
    eval_sets.parse(value)
  except ValueError as e:
    raise ConfigError(f'--config.{name}={value!r}: {e}.') from None


def recipe_name(name, value):
  from configs.experiments.paper import PAPER

  if value and value not in PAPER:
    recipes = sorted(k for k, v in PAPER.items() if v.get('recipe'))
    _fail(name, value, f"'' or a recipe with a published number: {', '.join(recipes)}")


POSITIVE_INT = number(1, integer=True)
NONNEG_INT = number(0, integer=True)
FRACTION = number(0.0, 1.0)
PIXEL = number(0.0, 255.0)
EVAL_METRICS = ('top1_err', 'top5_err', 'loss')

RULES: dict[str, Rule] = {
  # Data
  'dataset': text(required=True),
  'data_dir': text(),
  'train_split': text(required=True),
  'eval_split': text(required=True),
  'eval_sets': eval_set_list,
  'num_classes': NONNEG_INT,
  'in_memory_max_bytes': NONNEG_INT,
  'shuffle_buffer': POSITIVE_INT,
  'prefetch_batches': POSITIVE_INT,
  'num_parallel_calls': number(-1, integer=True),
  'digits_test_fraction': number(0.0, 0.9, open_lo=True),
  'class_subset': class_ids,
  'photos_num_examples': numbers(2, POSITIVE_INT),
  'fake_num_examples': POSITIVE_INT,
  'fake_eval_examples': POSITIVE_INT,
  'skip_bad_images': boolean,
  # Augmentation
  'image_size': number(8, 4096, integer=True),
  'train_augment': one_of('scale', 'inception', 'pad_crop', 'none'),
  'scale_range': numbers(2, number(8, 8192, integer=True), increasing=True),
  'area_range': numbers(2, number(0.0, 1.0, open_lo=True), increasing=True),
  'aspect_range': numbers(2, number(0.0, open_lo=True), increasing=True),
  'pad': NONNEG_INT,
  'random_flip': boolean,
  'lighting_std': number(0.0),
  'augment_policy': one_of(
    'none', 'randaugment', 'trivialaugment', 'autoaugment', 'randaugment_timm'
  ),
  'randaugment_ops': number(1, 4, integer=True),
  'randaugment_magnitude': NONNEG_INT,
  'randaugment_bins': number(2, integer=True),
  'randaugment_magnitude_std': lambda name, value: (
    None if value == math.inf else number(0.0)(name, value)
  ),
  'randaugment_op_prob': FRACTION,
  'randaugment_increasing': boolean,
  'randaugment_interpolation': one_of('random', 'bilinear', 'bicubic'),
  'random_erasing': FRACTION,
  'erasing_scale': numbers(2, number(0.0, 1.0, open_lo=True), increasing=True),
  'erasing_ratio': numbers(2, number(0.0, open_lo=True), increasing=True),
  'repeated_augmentation': POSITIVE_INT,
  'pixel_ops': one_of('device', 'host'),
  'normalization': one_of('pixel_mean', 'channel_mean_std', 'none'),
  'channel_mean': numbers(3, PIXEL),
  'channel_std': numbers(3, number(0.0, 255.0, open_lo=True)),
  'mean_image_path': text(),
  'mean_image_examples': NONNEG_INT,
  # Evaluation views
  'eval_mode': one_of('center', '10crop', 'multiscale'),
  'eval_resize': number(8, 8192, integer=True),
  'eval_image_size': NONNEG_INT,
  'multiscale_sizes': numbers(None, number(8, 8192, integer=True)),
  'multiscale_aspects': numbers(None, number(1.0, 16.0), increasing=True),
  'eval_batch_size': NONNEG_INT,
  # Model
  'model': model_name,
  'shortcut': one_of('', 'A', 'B', 'C'),
  'stride_in_1x1': boolean,
  'zero_init_residual': boolean,
  'groups': NONNEG_INT,
  'width_per_group': NONNEG_INT,
  'replace_stride_with_dilation': booleans(3),
  'norm': one_of('batch', 'group', 'frozen_batch'),
  'norm_groups': POSITIVE_INT,
  'deep_stem': boolean,
  'stem_width': NONNEG_INT,
  'avg_down': boolean,
  'attention': one_of('', 'se', 'eca'),
  'drop_path_rate': number(0.0, 0.99),
  'dropout': or_the_nets_own(number(0.0, 0.99)),
  'aux_loss_weight': number(0.0),
  'transform_input': boolean,
  'scan_blocks': boolean,
  'cpu_convolution': one_of('auto', 'onednn', 'xla'),
  'cpu_kernels': one_of('auto', 'native', 'xla'),
  'policy_kernel': one_of('auto', 'native', 'tensorflow'),
  'bn_momentum': number(0.0, 1.0),
  'bn_epsilon': number(0.0),
  'bn_group_size': NONNEG_INT,
  'half_precision': boolean,
  'half_dtype': one_of('bfloat16', 'float16'),
  'init_from': text(),
  'init_from_ema': boolean,
  'compilation_cache_dir': text(),
  'init_from_skip': text(),
  'freeze': text(),
  'freeze_bn_stats': boolean,
  'lr_mults': text(),
  'layer_decay': number(0.0, 1.0),
  'head_init_scale': number(0.0),
  'hyperrule_train_examples': NONNEG_INT,
  'fewshot_shots': numbers(None, number(1, integer=True), increasing=True),
  'fewshot_seeds': POSITIVE_INT,
  'fewshot_l2_reg': number(0.0, open_lo=True),
  'fewshot_train_split': text(),
  'fewshot_test_split': text(),
  'fewshot_in_evaluations': boolean,
  # Optimisation
  'batch_size': POSITIVE_INT,
  'num_epochs': number(0.0, open_lo=True),
  'num_train_steps': number(-1, integer=True),
  'learning_rate': number(0.0),
  'lr_reference_batch': POSITIVE_INT,
  'momentum': number(0.0, 1.0),
  'nesterov': boolean,
  'weight_decay': number(0.0),
  'weight_decay_bn_and_bias': boolean,
  'label_smoothing': number(0.0, 1.0),
  'optimizer': one_of('sgd', 'lars', 'lamb', 'adamw'),
  'adam_betas': numbers(2, number(0.0, 1.0)),
  'adam_eps': number(0.0),
  'lars_trust_coefficient': number(0.0, open_lo=True),
  'trust_ratio_bn_and_bias': boolean,
  'grad_clip_norm': number(0.0),
  'grad_accum_steps': POSITIVE_INT,
  'loss': one_of('softmax', 'bce'),
  'bce_target_threshold': number(0.0, 1.0),
  'mixup_alpha': number(0.0),
  'cutmix_alpha': number(0.0),
  'mix_prob': FRACTION,
  'mix_switch_prob': FRACTION,
  'ema_decay': number(0.0, 1.0),
  'ema_every': POSITIVE_INT,
  'ema_warmup': boolean,
  'schedule': one_of('step', 'plateau', 'cosine', 'poly'),
  'poly_power': number(0.0, open_lo=True),
  'lr_boundaries': numbers(None, number(0.0, open_lo=True), increasing=True, nonempty=False),
  'lr_boundaries_unit': one_of('epochs', 'steps'),
  'lr_decay_factor': number(0.0, 1.0, open_lo=True),
  'plateau_metric': one_of(*EVAL_METRICS, *(f'ema_{m}' for m in EVAL_METRICS)),
  'plateau_patience': NONNEG_INT,
  'plateau_min_delta': number(0.0),
  'plateau_cooldown': NONNEG_INT,
  'plateau_min_lr': number(0.0),
  'warmup_epochs': number(0.0),
  'warmup_steps': NONNEG_INT,
  'warmup_start_factor': FRACTION,
  'warmup_until_train_error': number(0.0, 1.0),
  'warmup_lr_factor': number(0.0, 1.0, open_lo=True),
  'warmup_error_window': POSITIVE_INT,
  # Parallelism
  'parallelism': one_of('shard_map', 'pmap'),
  # Loop, logging, checkpoints
  'recipe': recipe_name,
  'seed': NONNEG_INT,
  'log_every': POSITIVE_INT,
  'eval_every': number(-1, integer=True),
  'checkpoint_every': POSITIVE_INT,
  'keep_checkpoints': POSITIVE_INT,
  'keep_best': NONNEG_INT,
  'best_metric': one_of('top1_err', 'ema_top1_err'),
  'async_checkpoints': boolean,
  'on_nonfinite': one_of('stop', 'skip'),
  'nonfinite_skip_limit': POSITIVE_INT,
  'steps_in_flight': POSITIVE_INT,
  'lock_stale_seconds': number(0.0, open_lo=True),
  'lock_heartbeat_seconds': number(0.0, open_lo=True),
  'distributed_heartbeat_seconds': number(1, 3600, integer=True),
  'distributed_shutdown_seconds': number(1, 3600, integer=True),
}


def closest(name: str, names: Iterable[str]) -> str:
  match = difflib.get_close_matches(name, list(names), n=1, cutoff=0.5)
  return f' (did you mean {match[0]}?)' if match else ''


def check(config, *, num_devices: int = 1, num_processes: int = 1, given: Iterable[str] = ()):
  """Raises ConfigError for the first field or combination that cannot work.

  ``given``: the fields the command line set (``cli.config_fields_given``). A field whose
  default means something (norm_groups 32, mix_prob 1, aux_loss_weight 0.3) counts as set when it is
  given there or differs from its default; a config file that sets one to its default value
  cannot be told from one that leaves it.
  """
  for name in config:
    if name not in RULES:
      raise ConfigError(f'Unknown config field {name!r}{closest(name, RULES)}.')
  for name, rule in RULES.items():
    if name not in config:
      raise ConfigError(f'The config has no field {name!r}: build it from configs/default.py.')
    rule(name, config[name])
  _check_combinations(config, num_devices, num_processes, _SetFields(config, given))


def check_here(config, given: Iterable[str] = ()):
  """``check`` for this process's devices and processes, then the host memory its input
  batches take (``memory_check``): what a command runs before any work."""
  import jax

  from resnet_jax import memory_check

  check(config, num_devices=jax.device_count(), num_processes=jax.process_count(), given=given)
  memory_check.check(config, jax.process_count(), cpu_backend=jax.default_backend() == 'cpu')


class _SetFields:
  """``name in set_fields``: was the field set (on the command line, or away from its default)?"""

  def __init__(self, config, given: Iterable[str]):
    from configs import default

    defaults = default.get_config()
    self.names = {n for n in config if n in defaults and config[n] != defaults[n]} | set(given)

  def __contains__(self, name: str) -> bool:
    return name in self.names


def _check_combinations(c, num_devices: int, num_processes: int, set_fields: _SetFields):
  for name in ('batch_size', 'eval_batch_size'):
    batch = c[name]
    if batch and (batch % num_devices or batch % num_processes):
      raise ConfigError(
        f'--config.{name}={batch}: must be a multiple of the {num_devices} devices '
        f'({num_processes} process{"es" if num_processes > 1 else ""}), e.g. '
        f'{max(num_devices, batch // num_devices * num_devices)}.'
      )
  if c.num_train_steps == 0:
    _fail('num_train_steps', 0, '> 0 (a step count) or -1 (use num_epochs)')
  if c.train_augment == 'pad_crop' and c.pad >= c.image_size:
    raise ConfigError(f'--config.pad={c.pad} must be smaller than image_size={c.image_size}.')
  eval_crop = c.eval_image_size or c.image_size
  if c.eval_resize < eval_crop:
    raise ConfigError(
      f'--config.eval_resize={c.eval_resize} must be >= the test crop {eval_crop} (test views '
      f'are eval_image_size, or image_size, crops of the image resized to eval_resize).'
    )
  if c.train_augment == 'scale' and c.scale_range[0] < c.image_size:
    raise ConfigError(
      f'--config.scale_range={tuple(c.scale_range)}: the shorter side must be >= image_size='
      f'{c.image_size} to take an image_size crop.'
    )
  if c.warmup_steps and c.warmup_epochs:
    raise ConfigError(
      f'--config.warmup_steps={c.warmup_steps} and --config.warmup_epochs={c.warmup_epochs} both '
      f'set the warm-up: set one, the other 0.'
    )
  if c.schedule == 'step' and not c.lr_boundaries:
    _fail('lr_boundaries', c.lr_boundaries, "non-empty with --config.schedule='step'")
  if c.bn_group_size > 1 and num_devices % c.bn_group_size:
    raise ConfigError(
      f'--config.bn_group_size={c.bn_group_size} must divide the {num_devices} devices.'
    )
  if c.multiscale_aspects[0] != 1.0:
    _fail('multiscale_aspects', tuple(c.multiscale_aspects), 'increasing from 1.0 (square images)')
  _check_model_options(c, set_fields)
  _check_recipe(c, num_devices, set_fields)
  if c.init_from_skip and not c.init_from:
    raise ConfigError('--config.init_from_skip is set but --config.init_from is empty.')
  _check_param_groups(c)
  _check_init_from(c)
  if c.cpu_convolution == 'onednn':
    from resnet_jax.cpu import onednn

    onednn.enabled(c.cpu_convolution)  # builds it once, or says what is missing
  if c.cpu_kernels == 'native':
    from resnet_jax.cpu import native

    native.kernels_enabled(c.cpu_kernels)
  if c.policy_kernel == 'native':
    from resnet_jax.data import policy_kernel

    policy_kernel.enabled(c.policy_kernel)
  if c.lock_heartbeat_seconds >= c.lock_stale_seconds:
    raise ConfigError(
      f'--config.lock_heartbeat_seconds={c.lock_heartbeat_seconds} must be shorter than '
      f'lock_stale_seconds={c.lock_stale_seconds}, or live runs would look abandoned.'
    )


def _check_init_from(c):
  """Named weights: known, and of this net (a URL's net is this run's)."""
  from resnet_jax.models import releases

  if c.init_from.split(':', 1)[0] in releases.SOURCES:
    try:
      weights = releases.lookup(c.init_from)
    except UserError as e:
      raise ConfigError(f'--config.init_from={c.init_from!r}: {e}') from None
    if weights.model != c.model:
      raise ConfigError(
        f'--config.init_from={c.init_from!r} are weights of {weights.model}, not of '
        f'--config.model={c.model}: set --config.model={weights.model}.'
      )
    unmet = [f'--config.{k}={v!r}' for k, v in weights.requires if c[k] != v]
    if unmet:
      raise ConfigError(
        f'--config.init_from={c.init_from!r} were trained on inputs that need '
        f'{" ".join(unmet)}: set {"them" if len(unmet) > 1 else "it"}.'
      )
  if c.init_from_ema and releases.is_reference(c.init_from):
    raise ConfigError('--config.init_from_ema: released weights have no moving average.')


def _check_param_groups(c):
  """freeze and lr_mults: well formed, and every pattern names a tensor of this net."""
  from resnet_jax.models import param_groups

  try:
    for pattern in param_groups.parse_patterns(c.freeze):
      param_groups.compile_pattern(pattern)
  except ValueError as e:
    raise ConfigError(f'--config.freeze={c.freeze!r}: {e}.') from None
  try:
    param_groups.parse_multipliers(c.lr_mults)
  except ValueError as e:
    raise ConfigError(f'--config.lr_mults={c.lr_mults!r}: {e}.') from None
  if not (c.freeze or c.lr_mults):
    return
  import jax
  import jax.numpy as jnp

  from resnet_jax.models import registry

  overrides = dict(architecture_overrides(c), scan_blocks=c.scan_blocks)
  model = registry.get_model(c.model, num_classes=2, **overrides)
  image = jnp.zeros((1, c.image_size, c.image_size, 3), jnp.float32)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), image, train=False))['params']
  tops = sorted({str(key[0]) for key in param_groups.names(params)})
  for name, missing in (
    ('freeze', param_groups.unmatched(params, c.freeze, '')),
    ('lr_mults', param_groups.unmatched(params, '', c.lr_mults)),
  ):
    if missing:
      raise ConfigError(
        f'--config.{name}={c[name]!r}: {", ".join(map(repr, missing))} names no tensor of '
        f'{c.model} (its layers: {", ".join(tops[:12])}{" ..." if len(tops) > 12 else ""}; '
        f'`python -m resnet_jax.summary {c.model}` lists them all).'
      )
  try:
    param_groups.frozen_mask(params, c.freeze)
  except ValueError as e:
    raise ConfigError(f'--config.freeze={c.freeze!r}: {e}.') from None


def _check_recipe(c, num_devices: int, set_fields: _SetFields):
  """The training recipe's combinations: accumulation, the loss, mixing, the weights' average."""
  rows = c.batch_size // max(num_devices, 1)
  if c.grad_accum_steps > 1 and rows % c.grad_accum_steps:
    raise ConfigError(
      f"--config.grad_accum_steps={c.grad_accum_steps} must divide each device's "
      f'{rows} rows of batch_size={c.batch_size} ({num_devices} devices): one of '
      f'{[d for d in range(1, rows + 1) if rows % d == 0][:8]}.'
    )
  _check_policy_fields(c, set_fields)
  if c.repeated_augmentation > c.batch_size:
    raise ConfigError(
      f'--config.repeated_augmentation={c.repeated_augmentation} must be at most '
      f'batch_size={c.batch_size} (each batch holds its examples about k times each).'
    )
  if c.bce_target_threshold and c.loss != 'bce':
    raise ConfigError(
      f"--config.bce_target_threshold={c.bce_target_threshold} needs --config.loss='bce'."
    )
  mixing = c.mixup_alpha > 0 or c.cutmix_alpha > 0
  if not mixing and ('mix_prob' in set_fields or 'mix_switch_prob' in set_fields):
    raise ConfigError(
      '--config.mix_prob and mix_switch_prob need --config.mixup_alpha or cutmix_alpha > 0.'
    )
  if c.ema_decay == 0:
    if 'ema_every' in set_fields or c.ema_warmup:
      raise ConfigError('--config.ema_every and ema_warmup need --config.ema_decay > 0.')
    for name in ('best_metric', 'plateau_metric'):
      if c[name].startswith('ema_'):
        raise ConfigError(
          f'--config.{name}={c[name]!r} ranks the averaged weights: set --config.ema_decay > 0 '
          f'(e.g. 0.9999), or use {c[name][4:]!r}.'
        )
  if c.ema_decay == 1.0:
    _fail('ema_decay', 1.0, 'below 1 (1 never moves the average from the initial weights)')
  if c.init_from_ema and not c.init_from:
    raise ConfigError('--config.init_from_ema is set but --config.init_from is empty.')


def architecture_overrides(c, set_fields=()) -> dict:
  """The ResNet arguments that the config's architecture fields set over its named model's own
  (unset fields, 0 or False, keep the model's; ``set_fields`` adds those set to their default,
  so that the checks see them)."""
  given = {k: c[k] for k in ('groups', 'width_per_group', 'stem_width') if c[k]}
  if c.shortcut:
    given['shortcut'] = c.shortcut
  if c.stride_in_1x1:
    given['stride_in_1x1'] = True
  if any(c.replace_stride_with_dilation):
    given['replace_stride_with_dilation'] = tuple(c.replace_stride_with_dilation)
  if c.norm != 'batch' or 'norm' in set_fields:
    given['norm'] = c.norm
  if c.norm_groups != 32 or 'norm_groups' in set_fields:
    given['norm_groups'] = c.norm_groups
  if c.deep_stem:
    given['stem'] = 'deep'
  if c.avg_down:
    given['avg_down'] = True
  if c.attention:
    given['attention'] = c.attention
  if c.drop_path_rate:
    given['drop_path_rate'] = c.drop_path_rate
  if c.dropout >= 0:  # -1: the net's own
    given['dropout'] = c.dropout
  if c.aux_loss_weight != 0.3 or 'aux_loss_weight' in set_fields:
    given['aux_logits'] = c.aux_loss_weight > 0
  if c.transform_input:
    given['transform_input'] = True
  return given


def _check_baseline_sizes(c, model):
  """VGG's five pools and AlexNet's strides need images of a least size; VGG's dense
  (multi-scale) evaluation needs its classifier's whole window."""
  if c.image_size < model.min_image_size:
    raise ConfigError(
      f'--config.image_size={c.image_size}: {c.model} needs images of at least '
      f'{model.min_image_size} pixels (its features shrink them {model.min_image_size}-fold).'
    )
  if c.eval_mode == 'multiscale' and min(c.multiscale_sizes) < model.min_dense_image_size:
    raise ConfigError(
      f'--config.multiscale_sizes={tuple(c.multiscale_sizes)}: the fully-convolutional '
      f'{c.model} scores {model.pool_size}x{model.pool_size} windows of its feature map, which '
      f'needs images of at least {model.min_dense_image_size} pixels.'
    )


# The config field that sets each model option of another name.
OPTION_FIELDS = {'stem': 'deep_stem', 'aux_logits': 'aux_loss_weight'}


def _check_model_options(c, set_fields: _SetFields):
  """The architecture fields against the model they change (basic blocks have none of them)."""
  from resnet_jax.models import registry

  given = architecture_overrides(c, set_fields)
  given |= {k: True for k in ('zero_init_residual', 'scan_blocks') if c[k]}  # VGG has neither
  fields = [OPTION_FIELDS.get(k, k) for k in given]  # the config field that set each
  flags = ' '.join(f'--config.{field}={c[field]!r}' for field in fields)
  try:
    model = registry.get_model(c.model, num_classes=1, **given)
  except ValueError as e:
    raise ConfigError(f'{flags} with --config.model={c.model}: {e}') from None
  if hasattr(model, 'min_image_size'):  # VGG, AlexNet, GoogLeNet
    _check_baseline_sizes(c, model)
  if 'norm_groups' in given and c.norm != 'group':
    raise ConfigError(
      f"--config.norm_groups={c.norm_groups} is GroupNorm's number of groups: it needs "
      f"--config.norm='group' (this run's norm is {c.norm!r})."
    )
  if c.norm != 'batch' and c.bn_group_size != 1:
    raise ConfigError(
      f'--config.bn_group_size={c.bn_group_size} shares BatchNorm statistics across devices; '
      f'--config.norm={c.norm!r} has none to share. Leave bn_group_size at 1.'
    )
  if c.norm == 'frozen_batch' and c.zero_init_residual:
    raise ConfigError(
      "--config.zero_init_residual=True with --config.norm='frozen_batch' would freeze every "
      'block at the identity (its last norm scale fixed at zero).'
    )
  if c.norm == 'frozen_batch' and not c.init_from:
    LOG.warning(
      "--config.norm='frozen_batch' without --config.init_from: the norms stay at their "
      'initial identity (scale 1, bias 0, statistics 0 and 1) for the whole run.'
    )


# Which augment_policy each policy field belongs to: set away from its default, it needs one.
POLICY_FIELDS = {
  'randaugment_ops': ('randaugment', 'randaugment_timm'),
  'randaugment_magnitude': ('randaugment', 'randaugment_timm'),
  'randaugment_bins': ('randaugment',),
  'randaugment_magnitude_std': ('randaugment_timm',),
  'randaugment_op_prob': ('randaugment_timm',),
  'randaugment_increasing': ('randaugment_timm',),
  'randaugment_interpolation': ('randaugment_timm',),
}


def _check_policy_fields(c, set_fields: _SetFields):
  for name, policies in POLICY_FIELDS.items():
    if c.augment_policy not in policies and name in set_fields:
      needed = ' or '.join(repr(p) for p in policies)
      raise ConfigError(f'--config.{name} needs --config.augment_policy={needed}.')
  magnitude = c.randaugment_magnitude
  if c.augment_policy == 'randaugment_timm' and magnitude > 10:
    _fail('randaugment_magnitude', magnitude, "a level of timm's 0 to 10")
  if c.augment_policy != 'randaugment_timm' and magnitude >= c.randaugment_bins:
    raise ConfigError(
      f'--config.randaugment_magnitude={magnitude} must be a bin of '
      f'randaugment_bins={c.randaugment_bins}: 0 to {c.randaugment_bins - 1}.'
    )
