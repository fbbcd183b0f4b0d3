"""Computes and caches a training split's per-pixel mean image ahead of training.

  python -m resnet_jax.mean_image --config=configs/r50.py --config.data_dir=DIR

Training computes it on first use otherwise (``resnet_jax.data.mean_image``).
"""

from absl import flags
from ml_collections import config_flags

from resnet_jax import cli, config_check

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training config file.', lock_config=True)


def main(argv):
  del argv
  config = FLAGS.config
  config_check.check(config)
  # Imported here, after cli.run holds back TensorFlow's start-up lines.
  from resnet_jax.data import mean_image, sources

  source = sources.get_source(config, config.train_split)
  mean = mean_image.compute(config, source)
  key = mean_image.content_key(config, source)
  path = mean_image.cache_path(config, key)
  mean_image.save(path, mean, key)
  print(f'Mean image of {config.dataset} {config.train_split}: {mean.mean((0, 1))} -> {path}')


if __name__ == '__main__':
  cli.run(main)
