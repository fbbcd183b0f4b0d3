"""PyTorch beside resnet_jax: torchvision's ResNet train step (SGD, momentum, weight decay).

  pip install torch==2.13.0
  python benchmarks/pytorch_train_step.py --model=resnet50 --batch=8 --image-size=224 --steps=10

Same model code as torchvision (tests/torch_resnet.py rebuilds its resnet.py; CIFAR nets follow
the paper's section 4.2 with option A shortcuts), random inputs, one optimiser step per
iteration after two warm-up steps. Prints one JSON line, like ``resnet_jax.benchmark --mode=train``.
"""

import argparse
import json
import os
import sys
import time

import torch
from torch import nn

sys.path.insert(
  0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tests')
)
import torch_resnet


class CifarBlock(nn.Module):
  """The paper's CIFAR basic block; option A shortcut (stride-2 subsampling, zero channels)."""

  def __init__(self, inplanes, planes, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.pad = planes - inplanes
    self.stride = stride

  def forward(self, x):
    out = torch.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    shortcut = x[:, :, :: self.stride, :: self.stride]
    if self.pad:
      shortcut = nn.functional.pad(shortcut, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
    return torch.relu(out + shortcut)


def cifar_resnet(depth: int, num_classes: int) -> nn.Module:
  n = (depth - 2) // 6
  layers = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
  inplanes = 16
  for planes, stride in ((16, 1), (32, 2), (64, 2)):
    for i in range(n):
      layers.append(CifarBlock(inplanes, planes, stride if i == 0 else 1))
      inplanes = planes
  layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)]
  return nn.Sequential(*layers)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='resnet50')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--image-size', type=int, default=224)
  parser.add_argument('--num-classes', type=int, default=1000)
  parser.add_argument('--steps', type=int, default=10)
  args = parser.parse_args()
  if args.model.startswith('cifar_resnet'):
    net = cifar_resnet(int(args.model[len('cifar_resnet') :]), args.num_classes)
  else:
    net = torch_resnet.build(args.model, args.num_classes)
  net.train()
  opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
  x = torch.randn(args.batch, 3, args.image_size, args.image_size)
  y = torch.randint(0, args.num_classes, (args.batch,))

  def step():
    opt.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(net(x), y).backward()
    opt.step()

  for _ in range(2):
    step()
  start = time.perf_counter()
  for _ in range(args.steps):
    step()
  seconds = (time.perf_counter() - start) / args.steps
  print(
    json.dumps(
      {
        'mode': 'train',
        'framework': f'torch {torch.__version__}',
        'threads': torch.get_num_threads(),
        'model': args.model,
        'global_batch': args.batch,
        'images_per_sec': args.batch / seconds,
        'step_time_s': seconds,
      }
    )
  )


if __name__ == '__main__':
  main()
