"""The Python API: a net by name, with its weights, to use in your own code.

``list_models`` names the nets. ``create_model`` gives a flax module and its variables, optionally
loaded from a run's workdir or a ``convert`` output (a plain string, local or ``gs://``); the
module can be a named submodule of your own (``create_model(..., name='backbone')``).
``load_variables`` reads such weights alone.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from resnet_jax import storage
from resnet_jax.models import param_groups, registry, releases
from resnet_jax.train import checkpoint
from resnet_jax.train import pretrained as pretrained_weights


def list_models(pattern: str = '*', *, pretrained: bool = False) -> list[str]:
  """The nets ``create_model`` builds by name, matching the shell-style ``pattern`` (timm's
  ``list_models``); with ``pretrained``, those with released weights by name only (each net's
  names: ``python -m resnet_jax.summary --list``)."""
  names = registry.list_models(pattern)
  if pretrained:
    released = {releases.lookup(n).model for n in releases.names()}
    names = [n for n in names if n in released]
  return names


def load_variables(path: str, *, model: str | None = None, ema: bool = False) -> dict[str, Any]:
  """``{'params', 'batch_stats'}`` on the default device, of: released weights by name
  (``'torchvision:resnet50.IMAGENET1K_V2'``, ``'timm:resnet50.a1_in1k'``: downloaded and
  converted once, ``train/pretrained.py``), a URL of a torchvision or timm file (``model`` names
  its net), a run's latest checkpoint (its moving average with ``ema``) or a
  ``python -m resnet_jax.convert`` output, local or ``gs://``.

  Raises:
    UserError: unknown names, failed downloads, weights that are not of ``model``;
      checkpoint.CheckpointError: the path holds no weights (its message says what it is).
  """
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  path = pretrained_weights.resolve(path, model)
  return checkpoint.read_variables(storage.path(path), device, use_ema=ema)


def create_model(
  model: str,
  *,
  pretrained: str | None = None,
  num_classes: int | None = None,
  dtype=jnp.float32,
  image_size: int = 224,
  seed: int = 0,
  name: str | None = None,
  **overrides,
):
  """A net by name and its variables: ``(module, {'params', 'batch_stats'})``.

  Args:
    model: a name of ``list_models()`` ('resnet50', 'seresnet50', 'vgg16_bn'...) or your own net's
      ``package.module:function`` (``registry``).
    pretrained: released weights by name, a URL, a run's workdir or a ``convert`` output
      (``load_variables``) whose weights it starts from. Every
      tensor must fit, except a classifier head whose class count differs from ``num_classes``:
      that one is freshly initialised (as ``init_from`` does).
    num_classes: the classifier's width; default: the pretrained head's, else 1000.
    dtype: the compute dtype (variables stay float32).
    image_size: the image side the variables are initialised with (shapes do not depend on it;
      VGG and AlexNet need at least 32 and 63).
    seed: the initialisation's seed (for what ``pretrained`` does not give).
    name: the flax module's name, to make it a named submodule of your own module.
    **overrides: the net's options (``registry.get_model``), e.g. ``norm='frozen_batch'``,
      ``replace_stride_with_dilation=(False, True, True)``, ``scan_blocks=True``.
  """
  loaded = load_variables(pretrained, model=model) if pretrained else None
  if num_classes is None:
    num_classes = _head_width(loaded) if loaded else 1000
  module = registry.get_model(model, num_classes=num_classes, dtype=dtype, name=name, **overrides)
  images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  variables = dict(module.init(jax.random.key(seed), images, train=False))
  variables.setdefault('batch_stats', {})
  if loaded is None:
    return module, variables
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  fitted = checkpoint.load_variables(
    str(pretrained), variables, device, relayout=checkpoint.relayout_like, saved=loaded
  )
  merged = jax.tree.map(
    lambda new, old: old if new is None else new, fitted, variables, is_leaf=lambda x: x is None
  )
  return module, merged


def _head_width(variables: dict) -> int:
  """The class count of saved weights: the last classifier's output width."""
  head = variables['params'][param_groups.head_prefix(variables['params'])]
  return int(head['kernel'].shape[-1])
