"""Shared test helpers: small configs and runs, image folders, real photos, torch weights."""

import io
import os
import subprocess
import sys
import tarfile

import numpy as np
from PIL import Image

from configs import default, digits
from resnet_jax.train import experiment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def digits_config(tmp_path, **overrides):
  c = digits.get_config()
  c.mean_image_path = str(tmp_path / 'digits_mean.npy')
  c.log_every = 5
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def mean_of(config):
  """The training split's mean image for pixel_mean configs (as experiment.Experiment loads it)."""
  from resnet_jax.data import mean_image, sources

  if config.normalization != 'pixel_mean':
    return None
  return mean_image.load_or_compute(config, sources.get_source(config, config.train_split))


def sample_photos():
  """scikit-learn's two bundled photos (427x640x3 uint8)."""
  from sklearn.datasets import load_sample_images

  return load_sample_images().images


def write_image_folder(root, *, classes=3, train_per_class=5, test_per_class=3, size=(40, 56)):
  """An ImageFolder tree of JPEG (train) and PNG (test) crops of the sample photos."""
  photos = sample_photos()
  rng = np.random.default_rng(0)
  for split, per_class, ext in [('train', train_per_class, 'jpg'), ('test', test_per_class, 'png')]:
    for c in range(classes):
      os.makedirs(os.path.join(root, split, f'class_{c}'), exist_ok=True)
      for i in range(per_class):
        photo = photos[(c + i) % 2]
        y, x = rng.integers(0, 200), rng.integers(0, 300)
        crop = photo[y : y + size[0], x : x + size[1]]
        Image.fromarray(crop).save(os.path.join(root, split, f'class_{c}', f'{i}.{ext}'))
  return str(root)


def folder_config(tmp_path, data_dir, **overrides):
  c = default.get_config()
  c.dataset = 'folder'
  c.data_dir = data_dir
  c.train_split, c.eval_split = 'train', 'test'
  c.image_size, c.eval_resize = 24, 32
  c.scale_range = (32, 48)
  c.mean_image_path = str(tmp_path / 'folder_mean.npy')
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


# The nets of tests/data/torchvision_references.npz: torchvision's builders, and nets under another
# name than their builder's (name -> (builder, its keyword arguments)).
REFERENCE_NETS = (
  'resnet18',
  'resnet34',
  'resnet50',
  'resnet101',
  'resnet152',
  'resnext50_32x4d',
  'resnext101_32x8d',
  'resnext101_64x4d',
  'wide_resnet50_2',
  'wide_resnet101_2',
  'resnet18d',
  'resnet50d',
  'seresnet18',
  'seresnet50',
  'ecaresnet50d',
  'preact_resnet18',
  'preact_resnet50',
  'cifar_preact_resnet20',
  'cifar_preact_resnet164',
)
CONFIGURED_NETS = {
  'resnet50_dilated': ('resnet50', dict(replace_stride_with_dilation=(False, True, True))),
  'resnet50_groupnorm': ('resnet50', dict(norm='group')),
  'resnext50_frozen_bn': ('resnext50_32x4d', dict(norm='frozen_batch')),
  # The paper's comparison nets, without dropout: the train-mode references compare BatchNorm's
  # batch statistics, not random masks (test_models checks the dropout).
  'vgg11': ('vgg11', dict(dropout=0.0)),
  'vgg16_bn': ('vgg16_bn', dict(dropout=0.0)),
  'alexnet': ('alexnet', dict(dropout=0.0)),
  # With its auxiliary classifiers, which run (and update their BatchNorms) in training.
  'googlenet': ('googlenet', dict(dropout=0.0, dropout_aux=0.0)),
}
# Two BN running statistics per net that the references hold (after a train-mode forward).
STATISTICS = ('layer1.0.bn1.running_mean', 'layer2.0.downsample.1.running_var')


def statistics_keys(keys_and_shapes) -> list[str]:
  """The running statistics of a net's state_dict that the references compare: STATISTICS where
  the net has them, else its first running mean and the first running variance of its second
  stage (of its third norm for VGG; none for GroupNorm). Shallow ones: deeper, float32 rounding
  grows as in the train-mode logits."""
  keys = [k for k, _ in keys_and_shapes]
  if all(k in keys for k in STATISTICS):
    return list(STATISTICS)
  means = [k for k in keys if k.endswith('running_mean')]
  variances = [k for k in keys if k.endswith('running_var')]
  later = [k for k in variances if k.startswith('layer2.')] or variances[2:]  # VGG: third norm's
  return [means[0], later[0]] if means else []


def random_torchvision_weights(keys_and_shapes, seed: int) -> dict[str, np.ndarray]:
  """Seeded random values for a torchvision ResNet state_dict, from its keys and shapes alone.

  NumPy's legacy RandomState stream is stable across NumPy versions, so a test regenerates the
  exact weights that tests/torch_references.py gave torch. BN statistics are randomised too, so
  that eval mode tests them rather than the identity.
  """
  rng = np.random.RandomState(seed)
  weights = {}
  for key, shape in keys_and_shapes:
    shape = tuple(shape)
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    if key.endswith('num_batches_tracked'):
      value = np.zeros(shape, np.int64)
    elif len(shape) in (3, 4):  # conv (Conv1d: ECA's): He normal
      value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
    elif len(shape) == 2 or np.ndim(weights.get(key.removesuffix('bias') + 'weight')) == 2:
      # A linear layer: torch's default bound, fan-in of its weight.
      bound = 1.0 / np.sqrt(shape[1] if len(shape) == 2 else weights[key[:-4] + 'weight'].shape[1])
      value = rng.uniform(-bound, bound, shape)
    elif key.endswith('running_var'):
      value = rng.uniform(0.5, 2.0, shape)
    elif key.endswith('weight'):  # BN scale
      value = rng.uniform(0.5, 1.5, shape)
    else:  # BN bias and running mean
      value = rng.normal(0.0, 0.2, shape)
    weights[key] = value.astype(np.int64 if key.endswith('num_batches_tracked') else np.float32)
  return weights


# cifar_resnet8 on digits at 8x8: a few seconds of compile, sub-second steps.
TINY = dict(model='cifar_resnet8', image_size=8, eval_resize=8, pad=1, batch_size=64)


def tiny(tmp_path, **overrides):
  """The TINY model on digits, as a config object for in-process runs."""
  defaults = dict(
    TINY,
    num_train_steps=12,
    schedule='step',
    lr_boundaries=(8,),
    lr_boundaries_unit='steps',
    warmup_epochs=0,
    log_every=4,
    eval_every=6,
    checkpoint_every=6,
    async_checkpoints=False,
  )
  defaults.update(overrides)
  return digits_config(tmp_path, **defaults)


def final_params(workdir, config):
  run = experiment.Experiment(config, workdir)
  state = run.data_parallel.host(run.initial_state())  # pmap's per-device copies -> one
  run.checkpointer.close()
  return experiment.flat_params(state), int(state.step)


def run_main(workdir, *overrides, devices=8, wait=True):
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  env['PYTHONPATH'] = os.pathsep.join([REPO, os.path.join(REPO, 'tests')])
  cmd = [
    sys.executable,
    '-m',
    'resnet_jax.main',
    '--config=configs/digits.py',
    f'--workdir={workdir}',
    *overrides,
  ]
  if not wait:
    return subprocess.Popen(
      cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def without_a_compiler(code: str, tmp_path):
  """Runs ``code`` in a fresh interpreter (the tests' helpers importable) where every built kernel
  fails to build: no C++ compiler, an empty kernel cache."""
  env = dict(os.environ, CXX='no-such-compiler', RESNET_JAX_CACHE=str(tmp_path / 'cache'))
  env['PYTHONPATH'] = os.pathsep.join([REPO, os.path.join(REPO, 'tests')])
  return subprocess.run(
    [sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=300
  )


def tiny_flags(tmp_path, **extra):
  """The TINY model on digits, as command-line overrides of configs/digits.py."""
  flags = dict(
    TINY,
    log_every=4,
    mean_image_path=str(tmp_path / 'mean.npy'),
    async_checkpoints=False,
  )
  flags.update(extra)
  return [f'--config.{k}={v}' for k, v in flags.items()]


def train_gradient_and_hlo(model, images):
  """The parameter gradient of the train-mode logits' squared sum (BatchNorm on batch
  statistics), and the text of the program XLA compiled for it."""
  import jax
  import jax.numpy as jnp

  variables = model.init(jax.random.key(0), images, train=False)

  def loss(params):
    logits, _ = model.apply(
      {**variables, 'params': params}, images, train=True, mutable=['batch_stats']
    )
    return jnp.sum(logits**2)

  grad = jax.jit(jax.grad(loss))
  return grad(variables['params']), grad.lower(variables['params']).compile().as_text()


# ImageNet's archives in miniature: the first three of its 1000 synsets, a few images each.
SYNSETS = ('n01440764', 'n01443537', 'n01484850')
PER_SYNSET, VALIDATION = 4, 8


def _photo_jpeg(rng) -> bytes:
  photo = sample_photos()[int(rng.integers(0, 2))]
  y, x = rng.integers(0, 150), rng.integers(0, 250)
  encoded = io.BytesIO()
  Image.fromarray(photo[y : y + 120, x : x + 160]).save(encoded, format='JPEG')
  return encoded.getvalue()


def add_to_tar(tar, name: str, data: bytes):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def write_imagenet_archives(manual_dir):
  """ILSVRC2012's layout: the training tar holds one tar per synset (of <synset>_<n>.JPEG), the
  validation tar is flat, its sorted names taking TFDS's bundled labels in order."""
  os.makedirs(manual_dir, exist_ok=True)
  rng = np.random.default_rng(0)
  with tarfile.open(os.path.join(manual_dir, 'ILSVRC2012_img_train.tar'), 'w') as outer:
    for synset in SYNSETS:
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode='w') as tar:
        for k in range(PER_SYNSET):
          add_to_tar(tar, f'{synset}_{k}.JPEG', _photo_jpeg(rng))
      add_to_tar(outer, f'{synset}.tar', inner.getvalue())
  with tarfile.open(os.path.join(manual_dir, 'ILSVRC2012_img_val.tar'), 'w') as tar:
    for k in range(1, VALIDATION + 1):
      add_to_tar(tar, f'ILSVRC2012_val_{k:08d}.JPEG', _photo_jpeg(rng))
