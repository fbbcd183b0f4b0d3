"""Today's training components, each against a direct computation or the reference it follows:
mixup / CutMix (torchvision's box and ratio, the global batch's row order), the BCE loss (torch's),
the weights' moving average (its formula over several steps), LARS / LAMB (optax's transforms)
and gradient accumulation (the mean of the micro-batches' gradients)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util
from helpers import tiny
from jax.sharding import Mesh

from resnet_jax.data import batch_mixing
from resnet_jax.models import registry
from resnet_jax.train import ema, losses, network, optim, parallel


def mixing_config(tmp_path, **options):
  return tiny(tmp_path, **{'mixup_alpha': 0.2, 'cutmix_alpha': 1.0, **options})


def torchvision_cutmix_box(lam: float, r_x: int, r_y: int, height: int, width: int):
  """torchvision's references/classification/transforms.py RandomCutmix, from its draws."""
  torch = pytest.importorskip('torch')
  r = 0.5 * np.sqrt(1.0 - lam)
  r_w_half, r_h_half = int(r * width), int(r * height)
  x1 = int(torch.clamp(torch.tensor(r_x - r_w_half), min=0))
  y1 = int(torch.clamp(torch.tensor(r_y - r_h_half), min=0))
  x2 = int(torch.clamp(torch.tensor(r_x + r_w_half), max=width))
  y2 = int(torch.clamp(torch.tensor(r_y + r_h_half), max=height))
  return (y1, y2, x1, x2), float(1.0 - (x2 - x1) * (y2 - y1) / (width * height))


@pytest.mark.torch
@pytest.mark.parametrize(
  'lam, r_y, r_x', [(0.3, 5, 7), (0.9, 0, 0), (0.01, 15, 2), (0.5, 8, 15), (0.999, 3, 3)]
)
def test_cutmix_box_and_ratio_are_torchvisions(lam, r_y, r_x):
  box, ratio = batch_mixing.cutmix_box(jnp.float32(lam), r_y, r_x, 16, 20)
  ref_box, ref_ratio = torchvision_cutmix_box(lam, r_x, r_y, 16, 20)
  assert tuple(int(v) for v in box) == ref_box
  assert float(ratio) == pytest.approx(ref_ratio, abs=1e-6)


def _mix_on_devices(images, targets, draw, num_devices: int):
  """batch_mixing.mix under shard_map over ``num_devices`` devices, on the global batch."""
  mesh = Mesh(np.array(jax.devices()[:num_devices]), (parallel.AXIS,))
  run = parallel.DataParallel(mesh).wrap(
    lambda d, b: jax.lax.all_gather(
      batch_mixing.mix(b['image'], b['target'], d, parallel.AXIS), parallel.AXIS, tiled=True
    ),
    donate_state=False,
  )
  batch = {'image': images, 'target': targets}
  return jax.device_get(run(draw, jax.device_put(batch)))


@pytest.mark.parametrize('cutmix', [False, True])
def test_rows_mix_with_the_previous_row_of_the_global_batch_on_any_device_count(cutmix):
  rng = np.random.default_rng(0)
  images = rng.normal(size=(8, 6, 5, 3)).astype(np.float32)
  targets = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 8)]
  box = np.array([1, 4, 2, 5], np.int32)  # rows 1..3, columns 2..4
  lam = 1.0 - 9 / 30 if cutmix else 0.37
  draw = batch_mixing.MixDraw(jnp.float32(lam), jnp.bool_(cutmix), jnp.asarray(box))
  rolled_images, rolled_targets = np.roll(images, 1, axis=0), np.roll(targets, 1, axis=0)
  if cutmix:
    expected = images.copy()
    expected[:, 1:4, 2:5] = rolled_images[:, 1:4, 2:5]
  else:
    expected = np.float32(lam) * images + np.float32(1 - lam) * rolled_images
  expected_targets = np.float32(lam) * targets + np.float32(1 - lam) * rolled_targets
  one = _mix_on_devices(images, targets, draw, 1)
  np.testing.assert_allclose(one[0], expected, rtol=1e-6, atol=1e-7)  # XLA may fuse to an FMA
  np.testing.assert_allclose(one[1], expected_targets, rtol=1e-6, atol=1e-7)
  for devices in (2, 4):  # bitwise what one device computes
    mixed, mixed_targets = _mix_on_devices(images, targets, draw, devices)
    np.testing.assert_array_equal(mixed, one[0], err_msg=f'{devices} devices')
    np.testing.assert_array_equal(mixed_targets, one[1], err_msg=f'{devices} devices')


@pytest.mark.slow
def test_mixing_draws_follow_the_config_and_depend_on_seed_and_step_only(tmp_path):
  def draws(**options):
    config = mixing_config(tmp_path, **options)
    fn = jax.jit(jax.vmap(lambda step: batch_mixing.draw(config, config.seed, step, 16, 16)))
    return jax.device_get(fn(jnp.arange(4000)))

  both = draws()
  assert 0.47 < both.cutmix.mean() < 0.53  # torchvision's RandomChoice: half the steps each
  # CutMix's ratio is what its box leaves of the 16 x 16 image (clipped, truncated: above
  # Beta(1, 1)'s mean of 0.5).
  y1, y2, x1, x2 = both.box[both.cutmix].T
  np.testing.assert_allclose(both.lam[both.cutmix], 1 - (y2 - y1) * (x2 - x1) / 256, rtol=1e-6)
  assert ((y2 - y1) * (x2 - x1) > 0).mean() > 0.9
  # Beta(0.2, 0.2) piles up at 0 and 1: its mean is 0.5, its variance 1 / (4 * 1.4) = 0.179.
  assert 0.46 < both.lam[~both.cutmix].mean() < 0.54
  assert both.lam[~both.cutmix].var() == pytest.approx(0.179, abs=0.02)
  again = draws()
  np.testing.assert_array_equal(both.lam, again.lam)
  assert not np.array_equal(both.lam, draws(seed=1).lam)
  half = draws(mix_prob=0.5)
  left_alone = (half.lam == 1.0) & ~half.cutmix  # (an empty CutMix box also leaves lam 1)
  assert 0.46 < left_alone.mean() < 0.54 and 0.22 < half.cutmix.mean() < 0.28
  mixup_only = draws(cutmix_alpha=0.0)
  assert not mixup_only.cutmix.any()
  assert draws(mixup_alpha=0.0).cutmix.all()


@pytest.mark.torch
def test_bce_is_torchs_binary_cross_entropy_with_logits():
  torch = pytest.importorskip('torch')
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(6, 10)).astype(np.float32) * 4
  targets = np.asarray(
    0.7 * losses.one_hot_targets(jnp.arange(6), 10, 0.1)
    + 0.3 * losses.one_hot_targets(jnp.arange(6)[::-1], 10, 0.1)
  )
  ours = losses.binary_cross_entropy(jnp.asarray(logits), jnp.asarray(targets)).mean()
  bce = torch.nn.functional.binary_cross_entropy_with_logits
  reference = bce(torch.tensor(logits), torch.tensor(targets))  # reduction='mean'
  assert float(ours) == pytest.approx(float(reference), rel=1e-6)
  # timm's target_threshold: the mixed 0.7 and 0.3 parts become 1, the 0.01 smoothing becomes 0.
  ours = losses.binary_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), 0.2).mean()
  reference = bce(torch.tensor(logits), torch.tensor((targets > 0.2).astype(np.float32)))
  assert float(ours) == pytest.approx(float(reference), rel=1e-6)


def _train_steps(config, num_steps: int, devices: int | None = None):
  """The host copies of the state after each of ``num_steps`` train steps on one fixed batch."""
  mesh = Mesh(np.array(jax.devices()[:devices]), (parallel.AXIS,))
  data_parallel = parallel.DataParallel(mesh)
  train_step, state = network.example_train_step(config, 10, data_parallel)
  batch = network.example_batch(data_parallel, config, 10)
  states = [data_parallel.host(state)]
  for _ in range(num_steps):
    state, _ = train_step(state, batch)
    states.append(data_parallel.host(state))
  return states


@pytest.mark.slow  # trains (compiles train steps)
@pytest.mark.parametrize('warmup', [False, True])
def test_the_weights_average_follows_its_formula_over_several_steps(tmp_path, warmup):
  config = tiny(tmp_path, batch_size=16, ema_decay=0.8, ema_every=2, ema_warmup=warmup)
  states = _train_steps(config, 6)
  weights = lambda s: {'params': s.params, 'batch_stats': s.batch_stats}  # noqa: E731
  expected = jax.tree.map(np.asarray, weights(states[0]))
  updates = 0
  for step in range(1, 7):
    if step % 2 == 0:
      decay = min(0.8, 1 - (1 + updates) ** (-2 / 3)) if warmup else 0.8
      decay = np.float32(decay)
      expected = jax.tree.map(
        lambda a, w, d=decay: d * a + (1 - d) * w, expected, weights(states[step])
      )
      updates += 1
    flat = traverse_util.flatten_dict(states[step].ema, sep='/')
    for key, value in traverse_util.flatten_dict(expected, sep='/').items():
      np.testing.assert_allclose(flat[key], value, rtol=1e-6, atol=1e-7, err_msg=f'{step} {key}')
  assert float(ema.decay(config, jnp.int32(0))) == (0.0 if warmup else np.float32(0.8))
  moved = traverse_util.flatten_dict(states[-1].params, sep='/')
  first = traverse_util.flatten_dict(states[0].params, sep='/')
  assert any(not np.allclose(moved[k], first[k]) for k in moved)  # the weights did train


def _variables(name='cifar_resnet8'):
  model = registry.get_model(name, num_classes=10)
  return model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)['params']


def _grads(params, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)


def _updates(tx, params, num_steps=3):
  state = tx.init(params)
  out = []
  for i in range(num_steps):
    updates, state = jax.jit(tx.update)(_grads(params, i), state, params)
    out.append(updates)
    params = optax.apply_updates(params, updates)
  return out


def _assert_same_updates(ours, reference):
  for a, b in zip(ours, reference, strict=True):
    leaves = zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True)
    for (path, x), y in leaves:
      np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-8, err_msg=jax.tree_util.keystr(path))


def _optimizer(tmp_path, **options):
  config = tiny(tmp_path, schedule='plateau', warmup_epochs=0, **options)
  return optim.create_optimizer(config, optim.schedule_fn(config, 10, 100)), config


@pytest.mark.slow
@pytest.mark.parametrize('exclusions', [False, True])
def test_lars_and_lamb_are_optaxs(tmp_path, exclusions):
  """Our chains against optax.lars / optax.lamb at a constant learning rate; with the usual
  exclusions (BN and biases out of the decay and the trust ratio) against optax's masks."""
  params = _variables()
  kernels = functools.partial(optim.bn_and_bias_mask, include_bn_and_bias=not exclusions)
  masks = dict(weight_decay_bn_and_bias=not exclusions, trust_ratio_bn_and_bias=not exclusions)
  tx, config = _optimizer(
    tmp_path, optimizer='lars', weight_decay=1e-4, lars_trust_coefficient=0.002, **masks
  )
  lr = optim.peak_learning_rate(config)
  reference = optax.lars(
    lr, 1e-4, kernels, trust_coefficient=0.002, trust_ratio_mask=kernels, momentum=0.9
  )
  _assert_same_updates(_updates(tx, params), _updates(reference, params))
  tx, config = _optimizer(
    tmp_path, optimizer='lamb', weight_decay=0.01, adam_betas=(0.9, 0.99), **masks
  )
  lr = optim.peak_learning_rate(config)
  reference = optax.chain(
    optax.scale_by_adam(0.9, 0.99, eps=1e-6),
    optax.add_decayed_weights(0.01, kernels),
    optax.masked(optax.scale_by_trust_ratio(), kernels),
    optax.scale_by_learning_rate(lr),
  )
  ours = _updates(tx, params)
  _assert_same_updates(ours, _updates(reference, params))
  if not exclusions:  # optax's own lamb: decay and trust ratio on every tensor
    _assert_same_updates(ours, _updates(optax.lamb(lr, 0.9, 0.99, weight_decay=0.01), params))


@pytest.mark.torch
def test_lamb_with_a_gradient_clip_is_timms_lamb(tmp_path):
  """LAMB as "ResNet strikes back" runs it: timm's Lamb written out in torch (timm/optim/lamb.py:
  the gradients divided by max(1, global norm / 1.0), Adam's moments with bias correction, the
  decay added, the trust ratio on the tensors that decay), with timm's two parameter groups
  (kernels at 0.01; norm layers and biases at 0, so no trust ratio) over 3 steps of gradients
  that the clip scales down."""
  torch = pytest.importorskip('torch')
  params = _variables()
  tx, config = _optimizer(tmp_path, optimizer='lamb', weight_decay=0.01, grad_clip_norm=1.0)
  lr = optim.peak_learning_rate(config)
  ours = _updates(tx, params)
  flat = traverse_util.flatten_dict(params)
  weights = {k: torch.tensor(np.asarray(v)) for k, v in flat.items()}
  moments = {k: (torch.zeros_like(w), torch.zeros_like(w)) for k, w in weights.items()}
  for step, our_updates in enumerate(ours, start=1):
    grads = {
      k: torch.tensor(np.asarray(v))
      for k, v in traverse_util.flatten_dict(_grads(params, step - 1)).items()
    }
    norm = torch.linalg.vector_norm(
      torch.stack([torch.linalg.vector_norm(g) for g in grads.values()])
    )
    assert norm > 10  # the clip acts
    divisor = (norm / 1.0).clamp(min=1.0)
    expected = {}
    for k, w in weights.items():
      g = grads[k] / divisor
      m, v = moments[k]
      m = m * 0.9 + g * (1 - 0.9)
      v = v * 0.999 + g * g * (1 - 0.999)
      moments[k] = (m, v)
      denom = v.sqrt() / math.sqrt(1 - 0.999**step) + 1e-6
      update = (m / (1 - 0.9**step)) / denom
      if k[-1] == 'kernel':  # timm's decay group
        update = update + 0.01 * w
        w_norm, u_norm = w.norm(), update.norm()
        update = update * torch.where(
          w_norm > 0, torch.where(u_norm > 0, w_norm / u_norm, 1.0), 1.0
        )
      expected[k] = -lr * update
      weights[k] = w - lr * update
    got = traverse_util.flatten_dict(our_updates)
    for k in expected:
      np.testing.assert_allclose(got[k], expected[k].numpy(), rtol=2e-5, atol=1e-8, err_msg=str(k))


def test_lamb_scales_kernels_by_their_trust_ratio_and_leaves_bn_and_biases_alone(tmp_path):
  params = _variables()
  tx, config = _optimizer(tmp_path, optimizer='lamb', weight_decay=0.0)
  lr = optim.peak_learning_rate(config)
  ours = _updates(tx, params, 1)[0]
  adam = _updates(optax.scale_by_adam(eps=1e-6), params, 1)[0]
  flat = traverse_util.flatten_dict(ours, sep='/')
  for key, direction in traverse_util.flatten_dict(adam, sep='/').items():
    if key.endswith('kernel'):
      weight = traverse_util.flatten_dict(params, sep='/')[key]
      ratio = np.linalg.norm(weight) / np.linalg.norm(direction)
      np.testing.assert_allclose(flat[key], -lr * ratio * direction, rtol=1e-5, err_msg=key)
    else:
      np.testing.assert_allclose(flat[key], -lr * direction, rtol=1e-6, err_msg=key)


@pytest.mark.slow  # trains (compiles train steps)
def test_accumulated_gradients_equal_the_big_batch_gradient_without_batch_statistics(tmp_path):
  """With GroupNorm (no batch statistics) k micro-batches give one step on the whole batch."""
  options = dict(batch_size=32, norm='group', norm_groups=8, momentum=0.0, weight_decay=0.0)
  whole = _train_steps(tiny(tmp_path, **options), 1)[-1]
  for k in (2, 4):
    accumulated = _train_steps(tiny(tmp_path, grad_accum_steps=k, **options), 1)[-1]
    a = traverse_util.flatten_dict(accumulated.params, sep='/')
    for key, value in traverse_util.flatten_dict(whole.params, sep='/').items():
      np.testing.assert_allclose(a[key], value, rtol=1e-5, atol=2e-7, err_msg=f'k={k} {key}')


@pytest.mark.slow  # trains (compiles train steps)
def test_accumulation_with_batchnorm_is_micro_batch_by_micro_batch(tmp_path):
  """BatchNorm: each micro-batch normalised by its own statistics, the running averages updated
  once per micro-batch in order, the gradient the mean of the micro-batches' (a direct
  computation on one device)."""
  config = tiny(tmp_path, batch_size=16, grad_accum_steps=2, momentum=0.0, weight_decay=0.0)
  config.pixel_ops = 'host'
  before, after = _train_steps(config, 1, devices=1)
  mesh = Mesh(np.array(jax.devices()[:1]), (parallel.AXIS,))
  batch = jax.device_get(network.example_batch(parallel.DataParallel(mesh), config, 10))
  model = network.build_model(config, 10)
  stats, grads = before.batch_stats, []
  for rows in (slice(0, 8), slice(8, 16)):

    def loss(params, stats=stats, rows=rows):
      logits, updates = model.apply(
        {'params': params, 'batch_stats': stats},
        batch['image'][rows],
        train=True,
        mutable=['batch_stats'],
      )
      targets = losses.one_hot_targets(batch['label'][rows], 10)
      return losses.softmax_cross_entropy(logits, targets).mean(), updates['batch_stats']

    grad, stats = jax.jit(jax.grad(loss, has_aux=True))(before.params)
    grads.append(grad)
  lr = optim.peak_learning_rate(config)
  expected = jax.tree.map(lambda p, g1, g2: p - lr * (g1 + g2) / 2, before.params, *grads)
  got = traverse_util.flatten_dict(after.params, sep='/')
  for key, value in traverse_util.flatten_dict(expected, sep='/').items():
    np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
  got = traverse_util.flatten_dict(after.batch_stats, sep='/')
  for key, value in traverse_util.flatten_dict(jax.device_get(stats), sep='/').items():
    np.testing.assert_allclose(got[key], value, rtol=1e-6, atol=1e-7, err_msg=key)


def test_the_poly_schedule_warms_up_then_decays_as_mlperfs(tmp_path):
  config = tiny(tmp_path, schedule='poly', poly_power=2.0, warmup_epochs=2)
  schedule = optim.schedule_fn(config, steps_per_epoch=10, total_steps=100)
  for step in (0, 5, 10, 19):
    assert float(schedule(step)) == pytest.approx(step / 20)
  for step in (20, 40, 60, 99, 100):
    assert float(schedule(step)) == pytest.approx((1 - (step - 20) / 80) ** 2, abs=1e-6)


@pytest.mark.slow  # trains (compiles train steps)
def test_a_lamb_run_moves_every_kernel_by_the_learning_rate_relative_to_its_norm(tmp_path):
  """On a real digits run through the loop: LAMB's trust ratio (no decay, Adam's eps small) makes
  each kernel's update |w| * lr, so the logged relative update is the learning rate; SGD's is
  not."""
  from resnet_jax.train import loop, metrics

  options = dict(schedule='plateau', plateau_patience=100, weight_decay=0.0, num_train_steps=8)
  records = {}
  for name in ('lamb', 'sgd'):
    workdir = str(tmp_path / name)
    loop.train_and_evaluate(tiny(tmp_path, optimizer=name, learning_rate=0.01, **options), workdir)
    records[name] = [r for r in metrics.read(workdir) if r['split'] == 'train']
  for record in records['lamb']:
    assert record['relative_update'] == pytest.approx(record['learning_rate'], rel=1e-3)
  for record in records['sgd']:
    assert abs(record['relative_update'] / record['learning_rate'] - 1) > 0.1
