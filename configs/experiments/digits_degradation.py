"""The paper's central claim at CPU scale, on real data that ships with scikit-learn (digits).

Plain nets of 20, 56 and 110 layers against ResNets of the same depths (the CIFAR-10 nets of
section 4.2, option A shortcuts), trained alike on the 1,437 training digits (16x16) for 15
epochs, tested on the 360 held-out ones. The paper's claims to check: the deeper *plain* net has
the higher training error (degradation), and the deeper ResNet does not (it is cured).

Hardware: a 2-core CPU (one XLA CPU device); about 25 minutes for the six runs.

  python -m resnet_jax.study --study=configs/experiments/digits_degradation.py --root=/tmp/degr
  python -m resnet_jax.report /tmp/degr/*      # table
  python -m resnet_jax.plot /tmp/degr/plain20 /tmp/degr/plain56 /tmp/degr/plain110 \\
    /tmp/degr/resnet20 /tmp/degr/resnet56 /tmp/degr/resnet110 --out=degradation.png
"""

from configs import digits

RUNS = ('plain20', 'plain56', 'plain110', 'resnet20', 'resnet56', 'resnet110')


def get_config(run: str = 'resnet20'):
  if run not in RUNS:
    raise ValueError(f'run must be one of {RUNS}, got {run!r}')
  c = digits.get_config()
  c.model = f'cifar_{run}'
  c.eval_every = 100  # several test points per curve (an epoch is 22 steps)
  c.log_every = 10
  return c
