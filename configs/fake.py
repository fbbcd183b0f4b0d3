"""Synthetic ImageNet-shaped data, for throughput measurements only (no accuracy meaning).

python -m resnet_jax.benchmark --config=configs/fake.py --config.model=resnet50
python -m resnet_jax.main --config=configs/fake.py --workdir=/tmp/fake --config.num_train_steps=200
"""

from configs import default


def get_config():
  c = default.get_config()
  c.dataset = 'fake'
  c.train_split, c.eval_split = 'train', 'test'
  c.num_classes = 1000
  c.fake_num_examples = 1_281_167
  c.normalization = 'channel_mean_std'  # a mean image of noise would mean nothing
  c.schedule = 'cosine'
  c.eval_every = 10**9  # no evaluation except at the end
  return c
