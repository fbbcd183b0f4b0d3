"""Writes tests/data/torchvision_references.npz: torchvision's outputs for seeded random weights.

  pip install torch==2.13.0 && python tests/torch_references.py [NET ...]

Needs torch; the tests that read the file do not. For each net of REFERENCE_NETS and
CONFIGURED_NETS (torchvision's builders, timm's ResNet-D, the pre-activation nets, other norm
layers, dilation): the state_dict's keys and shapes,
torchvision's eval-mode logits (float32), train-mode logits (float64, and the float32 ones' largest
distance to them over torch's two memory formats), and two BN running statistics after the
train-mode forward. The weights themselves are not stored: helpers.random_torchvision_weights
regenerates them from the seed.
"""

import json
import os
import sys

sys.path[:0] = [
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
]  # configs/, for helpers

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch_resnet  # noqa: E402
from helpers import (  # noqa: E402
  CONFIGURED_NETS,
  REFERENCE_NETS,
  random_torchvision_weights,
  statistics_keys,
)

NUM_CLASSES, SEED, INPUT_SEED = 100, 0, 1
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'torchvision_references.npz')


def images() -> np.ndarray:
  """NCHW float32 input, the same in the writer and the tests."""
  return np.random.RandomState(INPUT_SEED).randn(2, 3, 64, 64).astype(np.float32)


def references(name: str) -> dict[str, np.ndarray]:
  builder, kwargs = CONFIGURED_NETS.get(name, (name, {}))
  net = torch_resnet.build(builder, NUM_CLASSES, **kwargs)
  keys = [(k, list(v.shape)) for k, v in net.state_dict().items()]
  weights = random_torchvision_weights(keys, SEED)
  net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
  x = torch.from_numpy(images())
  net.eval()
  with torch.no_grad():
    eval_logits = net(x).numpy()
    net.train()(x)  # updates the running statistics
    stats = [net.state_dict()[k].numpy().copy() for k in statistics_keys(keys)]
    net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    train64 = net.double()(x.double()).numpy()
  return {
    f'{name}/keys': np.array(json.dumps(keys)),
    f'{name}/eval_logits': eval_logits,
    f'{name}/train_logits_float64': train64,
    f'{name}/torch_float32_train_error': np.float64(
      torch_resnet.float32_train_error(net, weights, x, train64)
    ),
    **{f'{name}/{k}': v for k, v in zip(statistics_keys(keys), stats, strict=True)},
  }


if __name__ == '__main__':
  # Nets named on the command line are (re)computed into the existing file; none: all of them.
  torch.manual_seed(0)
  names = sys.argv[1:] or (*REFERENCE_NETS, *CONFIGURED_NETS)
  out = {}
  if sys.argv[1:]:
    kept = dict(np.load(OUT))
    out = {k: v for k, v in kept.items() if k.split('/')[0] not in names and k != 'torch_version'}
  for name in names:
    out.update(references(name))
  os.makedirs(os.path.dirname(OUT), exist_ok=True)
  np.savez_compressed(OUT, torch_version=np.array(torch.__version__), **out)
  print(f'{OUT}: {os.path.getsize(OUT):,} bytes, torch {torch.__version__}')
