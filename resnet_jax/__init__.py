"""resnet_jax: deep residual networks (He et al. 2015) in JAX/Flax.

From Python (``resnet_jax.api``)::

  module, variables = resnet_jax.create_model('resnet50', pretrained='/path/to/run')
  variables = resnet_jax.load_variables('gs://bucket/run')
  resnet_jax.list_models('resnet50*', pretrained=True)  # ['resnet50']

The commands are ``python -m resnet_jax.<command>`` (README). Importing the package loads
nothing else: the API's modules load on first use.
"""

__all__ = ['create_model', 'list_models', 'load_variables']


def __getattr__(name: str):
  if name in __all__:
    from resnet_jax import api

    return getattr(api, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
