"""torchvision's resnet.py, rebuilt in plain torch for cross-checks (torchvision itself does not
import beside the CPU torch build these machines use). Structure, arguments (groups,
width_per_group, replace_stride_with_dilation) and initialisation as upstream."""

import numpy as np
import torch
from torch import nn


def conv3x3(in_planes, out_planes, stride=1, groups=1, dilation=1):
  return nn.Conv2d(
    in_planes,
    out_planes,
    3,
    stride=stride,
    padding=dilation,
    groups=groups,
    bias=False,
    dilation=dilation,
  )


def conv1x1(in_planes, out_planes, stride=1):
  return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(
    self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1
  ):
    super().__init__()
    if groups != 1 or base_width != 64:
      raise ValueError('BasicBlock only supports groups=1 and base_width=64')
    if dilation > 1:
      raise NotImplementedError('Dilation > 1 not supported in BasicBlock')
    self.conv1 = conv3x3(inplanes, planes, stride)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = conv3x3(planes, planes)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    identity = x
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    if self.downsample is not None:
      identity = self.downsample(x)
    return self.relu(out + identity)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(
    self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1
  ):
    super().__init__()
    width = int(planes * (base_width / 64.0)) * groups
    self.conv1 = conv1x1(inplanes, width)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = conv3x3(width, width, stride, groups, dilation)
    self.bn2 = nn.BatchNorm2d(width)
    self.conv3 = conv1x1(width, planes * 4)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    identity = x
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    if self.downsample is not None:
      identity = self.downsample(x)
    return self.relu(out + identity)


class ResNet(nn.Module):
  def __init__(
    self,
    block,
    layers,
    num_classes=1000,
    groups=1,
    width_per_group=64,
    replace_stride_with_dilation=None,
  ):
    super().__init__()
    self.inplanes = 64
    self.dilation = 1
    dilate = replace_stride_with_dilation or [False, False, False]
    self.groups, self.base_width = groups, width_per_group
    self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    self.layer1 = self._make_layer(block, 64, layers[0])
    self.layer2 = self._make_layer(block, 128, layers[1], stride=2, dilate=dilate[0])
    self.layer3 = self._make_layer(block, 256, layers[2], stride=2, dilate=dilate[1])
    self.layer4 = self._make_layer(block, 512, layers[3], stride=2, dilate=dilate[2])
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(512 * block.expansion, num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
      elif isinstance(m, nn.BatchNorm2d):
        nn.init.constant_(m.weight, 1)
        nn.init.constant_(m.bias, 0)

  def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
    downsample = None
    previous_dilation = self.dilation
    if dilate:
      self.dilation *= stride
      stride = 1
    if stride != 1 or self.inplanes != planes * block.expansion:
      downsample = nn.Sequential(
        conv1x1(self.inplanes, planes * block.expansion, stride),
        nn.BatchNorm2d(planes * block.expansion),
      )
    shape = dict(groups=self.groups, base_width=self.base_width)
    layers = [block(self.inplanes, planes, stride, downsample, dilation=previous_dilation, **shape)]
    self.inplanes = planes * block.expansion
    layers += [
      block(self.inplanes, planes, dilation=self.dilation, **shape) for _ in range(1, blocks)
    ]
    return nn.Sequential(*layers)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(torch.flatten(self.avgpool(x), 1))


ARCHS = {  # name -> (block, layers, ResNet keyword arguments), as torchvision's builders
  'resnet18': (BasicBlock, [2, 2, 2, 2], {}),
  'resnet34': (BasicBlock, [3, 4, 6, 3], {}),
  'resnet50': (Bottleneck, [3, 4, 6, 3], {}),
  'resnet101': (Bottleneck, [3, 4, 23, 3], {}),
  'resnet152': (Bottleneck, [3, 8, 36, 3], {}),
  'resnext50_32x4d': (Bottleneck, [3, 4, 6, 3], dict(groups=32, width_per_group=4)),
  'resnext101_32x8d': (Bottleneck, [3, 4, 23, 3], dict(groups=32, width_per_group=8)),
  'resnext101_64x4d': (Bottleneck, [3, 4, 23, 3], dict(groups=64, width_per_group=4)),
  'wide_resnet50_2': (Bottleneck, [3, 4, 6, 3], dict(width_per_group=128)),
  'wide_resnet101_2': (Bottleneck, [3, 4, 23, 3], dict(width_per_group=128)),
}


def build(name, num_classes=1000, **kwargs):
  """torchvision's ``models.<name>(num_classes=..., **kwargs)`` with random weights."""
  block, layers, defaults = ARCHS[name]
  return ResNet(block, layers, num_classes, **{**defaults, **kwargs})


def float32_train_error(net, weights, x, reference64) -> float:
  """How far torch's own float32 train-mode logits stray from ``reference64`` (float64 torch),
  the larger over its two memory formats: NCHW and channels-last (NHWC, the layout XLA computes
  in) sum in different orders, and on deep nets stray by different amounts (wide_resnet101_2 on
  the reference batch: 4.8e-4 NCHW, 8.3e-4 channels-last)."""
  errors = []
  with torch.no_grad():
    for memory_format in (torch.contiguous_format, torch.channels_last):
      net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
      net.float().train().to(memory_format=memory_format)
      logits = net(x.float().to(memory_format=memory_format)).numpy()
      errors.append(float(np.abs(logits - reference64).max()))
  return max(errors)
