"""torchvision's resnet.py, rebuilt in plain torch for cross-checks (torchvision itself does not
import beside the CPU torch build these machines use). Structure, arguments (groups,
width_per_group, replace_stride_with_dilation, norm_layer) and initialisation as upstream; with
timm's ResNet-C/-D arguments (stem_type='deep', stem_width, avg_down) as timm's resnet.py builds
them, the pre-activation nets of He et al. 2016 as their Torch code (fb.resnet.torch's
preresnet.lua, and resnet-1k-layers' resnet-pre-act.lua for the CIFAR bottleneck nets) builds
them, and torchvision's VGG, AlexNet and GoogLeNet (vgg.py, alexnet.py, googlenet.py), the
paper's comparison nets; and timm's squeeze-and-excitation and ECA modules (its layers'
SEModule and EcaModule, ``attn_layer``) in the blocks of its seresnet* and ecaresnet*d."""

import math

import numpy as np
import torch
import torch.nn.functional as F
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


class FrozenBatchNorm2d(nn.Module):
  """torchvision.ops.misc.FrozenBatchNorm2d: BatchNorm with its four tensors as buffers."""

  def __init__(self, num_features, eps=1e-5):
    super().__init__()
    self.eps = eps
    self.register_buffer('weight', torch.ones(num_features))
    self.register_buffer('bias', torch.zeros(num_features))
    self.register_buffer('running_mean', torch.zeros(num_features))
    self.register_buffer('running_var', torch.ones(num_features))

  def _load_from_state_dict(self, state_dict, prefix, *args):
    state_dict.pop(prefix + 'num_batches_tracked', None)
    super()._load_from_state_dict(state_dict, prefix, *args)

  def forward(self, x):
    w, b = self.weight.reshape(1, -1, 1, 1), self.bias.reshape(1, -1, 1, 1)
    rv, rm = self.running_var.reshape(1, -1, 1, 1), self.running_mean.reshape(1, -1, 1, 1)
    scale = w * (rv + self.eps).rsqrt()
    return x * scale + (b - rm * scale)


NORM_LAYERS = {
  'batch': nn.BatchNorm2d,
  'group': lambda channels: nn.GroupNorm(32, channels),
  'frozen_batch': FrozenBatchNorm2d,
}


class SEModule(nn.Module):
  """timm's SEModule: 1/16 of the channels rounded to a multiple of 8, 1x1 convs with bias."""

  def __init__(self, channels):
    super().__init__()
    reduced = max(8, int(channels / 16 + 4) // 8 * 8)
    self.fc1 = nn.Conv2d(channels, reduced, 1, bias=True)
    self.fc2 = nn.Conv2d(reduced, channels, 1, bias=True)

  def forward(self, x):
    s = self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True))))
    return x * torch.sigmoid(s)


class EcaModule(nn.Module):
  """timm's EcaModule: a bias-free Conv1d across the channel means, its kernel from log2(C)."""

  def __init__(self, channels):
    super().__init__()
    t = int(abs(math.log(channels, 2) + 1) / 2)
    k = max(t if t % 2 else t + 1, 3)
    self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)

  def forward(self, x):
    y = self.conv(x.mean((2, 3)).view(x.shape[0], 1, -1))
    return x * torch.sigmoid(y).view(x.shape[0], -1, 1, 1)


ATTENTION = {None: None, 'se': SEModule, 'eca': EcaModule}  # timm's attn_layer


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(
    self,
    inplanes,
    planes,
    stride=1,
    downsample=None,
    groups=1,
    base_width=64,
    dilation=1,
    norm_layer=nn.BatchNorm2d,
    attn_layer=None,
  ):
    super().__init__()
    if groups != 1 or base_width != 64:
      raise ValueError('BasicBlock only supports groups=1 and base_width=64')
    if dilation > 1:
      raise NotImplementedError('Dilation > 1 not supported in BasicBlock')
    self.conv1 = conv3x3(inplanes, planes, stride)
    self.bn1 = norm_layer(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = conv3x3(planes, planes)
    self.bn2 = norm_layer(planes)
    self.se = ATTENTION[attn_layer](planes) if attn_layer else None
    self.downsample = downsample

  def forward(self, x):
    identity = x
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    if self.se is not None:
      out = self.se(out)
    if self.downsample is not None:
      identity = self.downsample(x)
    return self.relu(out + identity)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(
    self,
    inplanes,
    planes,
    stride=1,
    downsample=None,
    groups=1,
    base_width=64,
    dilation=1,
    norm_layer=nn.BatchNorm2d,
    attn_layer=None,
  ):
    super().__init__()
    width = int(planes * (base_width / 64.0)) * groups
    self.conv1 = conv1x1(inplanes, width)
    self.bn1 = norm_layer(width)
    self.conv2 = conv3x3(width, width, stride, groups, dilation)
    self.bn2 = norm_layer(width)
    self.conv3 = conv1x1(width, planes * 4)
    self.bn3 = norm_layer(planes * 4)
    self.se = ATTENTION[attn_layer](planes * 4) if attn_layer else None
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    identity = x
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    if self.se is not None:
      out = self.se(out)
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
    norm='batch',
    stem_type='',
    stem_width=32,
    avg_down=False,
    attn_layer=None,
  ):
    super().__init__()
    self.inplanes = 64
    self.dilation = 1
    dilate = replace_stride_with_dilation or [False, False, False]
    self.groups, self.base_width = groups, width_per_group
    self.norm_layer, self.avg_down = NORM_LAYERS[norm], avg_down
    self.attn_layer = attn_layer
    if stem_type == 'deep':  # timm's: conv1 = Sequential(conv, norm, ReLU, conv, norm, ReLU, conv)
      self.conv1 = nn.Sequential(
        nn.Conv2d(3, stem_width, 3, stride=2, padding=1, bias=False),
        self.norm_layer(stem_width),
        nn.ReLU(inplace=True),
        nn.Conv2d(stem_width, stem_width, 3, stride=1, padding=1, bias=False),
        self.norm_layer(stem_width),
        nn.ReLU(inplace=True),
        nn.Conv2d(stem_width, 64, 3, stride=1, padding=1, bias=False),
      )
    else:
      self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
    self.bn1 = self.norm_layer(64)
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
      elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
        nn.init.constant_(m.weight, 1)
        nn.init.constant_(m.bias, 0)

  def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
    downsample = None
    previous_dilation = self.dilation
    if dilate:
      self.dilation *= stride
      stride = 1
    if stride != 1 or self.inplanes != planes * block.expansion:
      if self.avg_down:  # timm's downsample_avg (undilated)
        pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
        downsample = nn.Sequential(
          pool if stride > 1 else nn.Identity(),
          conv1x1(self.inplanes, planes * block.expansion),
          self.norm_layer(planes * block.expansion),
        )
      else:
        downsample = nn.Sequential(
          conv1x1(self.inplanes, planes * block.expansion, stride),
          self.norm_layer(planes * block.expansion),
        )
    shape = dict(
      groups=self.groups,
      base_width=self.base_width,
      norm_layer=self.norm_layer,
      attn_layer=self.attn_layer,
    )
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


class PreActBlock(nn.Module):
  """fb.resnet.torch's pre-activation basicblock and bottleneck (preresnet.lua), its three types
  as ``preact``: 'given' (no_preact), 'shared' (both_preact: BN-ReLU of the input feeds the
  shortcut too), 'branch' (preact). The projection is a bare 1x1 conv (downsample.0)."""

  def __init__(self, inplanes, planes, stride, preact, bottleneck, shortcut, stride_in_1x1):
    super().__init__()
    self.preact, self.bottleneck = preact, bottleneck
    out = planes * (4 if bottleneck else 1)
    if preact != 'given':
      self.bn1 = nn.BatchNorm2d(inplanes)
    if bottleneck:
      s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
      self.conv1 = conv1x1(inplanes, planes, s1)
      self.bn2 = nn.BatchNorm2d(planes)
      self.conv2 = conv3x3(planes, planes, s3)
      self.bn3 = nn.BatchNorm2d(planes)
      self.conv3 = conv1x1(planes, out)
    else:
      self.conv1 = conv3x3(inplanes, planes, stride)
      self.bn2 = nn.BatchNorm2d(planes)
      self.conv2 = conv3x3(planes, planes)
    self.stride, self.out, self.option = stride, out, shortcut
    self.downsample = None
    if shortcut == 'C' or (shortcut == 'B' and (stride != 1 or inplanes != out)):
      self.downsample = nn.Sequential(conv1x1(inplanes, out, stride))

  def forward(self, x):
    relu = torch.relu
    y = x if self.preact == 'given' else relu(self.bn1(x))
    if self.preact == 'shared':
      x = y
    y = self.conv1(y)
    y = self.conv2(relu(self.bn2(y)))
    if self.bottleneck:
      y = self.conv3(relu(self.bn3(y)))
    if self.downsample is not None:
      return y + self.downsample(x)
    x = x[:, :, :: self.stride, :: self.stride]  # option A: strided, zero-padded identity
    return y + nn.functional.pad(x, (0, 0, 0, 0, 0, self.out - x.shape[1]))


class PreActResNet(nn.Module):
  """preresnet.lua's ImageNet and CIFAR nets (and resnet-pre-act.lua's CIFAR bottleneck nets:
  the stride on the first 1x1, 16 -> 64 channels): stem (ImageNet: 7x7/2 conv-BN-ReLU-max pool;
  CIFAR: a bare 3x3 conv), stages whose first block is 'shared' ('given' after the ImageNet
  stem), then BN-ReLU (final_bn), average pool and the classifier."""

  def __init__(self, bottleneck, layers, num_classes, cifar, shortcut, stride_in_1x1=False):
    super().__init__()
    self.cifar = cifar
    widths = (16, 32, 64) if cifar else (64, 128, 256, 512)
    if cifar:
      self.conv1 = conv3x3(3, 16)
    else:
      self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
      self.bn1 = nn.BatchNorm2d(64)
      self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    inplanes = widths[0]
    for i, (width, count) in enumerate(zip(widths, layers, strict=True)):
      blocks = []
      for j in range(count):
        preact = ('given' if i == 0 and not cifar else 'shared') if j == 0 else 'branch'
        stride = 2 if i > 0 and j == 0 else 1
        blocks.append(
          PreActBlock(inplanes, width, stride, preact, bottleneck, shortcut, stride_in_1x1)
        )
        inplanes = blocks[-1].out
      setattr(self, f'layer{i + 1}', nn.Sequential(*blocks))
    self.num_stages = len(widths)
    self.final_bn = nn.BatchNorm2d(inplanes)
    self.fc = nn.Linear(inplanes, num_classes)

  def forward(self, x):
    x = self.conv1(x)
    if not self.cifar:
      x = self.maxpool(torch.relu(self.bn1(x)))
    for i in range(self.num_stages):
      x = getattr(self, f'layer{i + 1}')(x)
    x = torch.relu(self.final_bn(x))
    return self.fc(torch.flatten(x.mean((2, 3), keepdim=True), 1))


PREACT_ARCHS = {  # name -> PreActResNet arguments
  'preact_resnet18': (False, [2, 2, 2, 2], dict(cifar=False, shortcut='B')),
  'preact_resnet50': (True, [3, 4, 6, 3], dict(cifar=False, shortcut='B')),
  'cifar_preact_resnet20': (False, [3, 3, 3], dict(cifar=True, shortcut='A')),
  'cifar_preact_resnet164': (
    True,
    [18, 18, 18],
    dict(cifar=True, shortcut='B', stride_in_1x1=True),
  ),
}

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
  # timm's Bag of Tricks nets
  'resnet18d': (BasicBlock, [2, 2, 2, 2], dict(stem_type='deep', avg_down=True)),
  'resnet50d': (Bottleneck, [3, 4, 6, 3], dict(stem_type='deep', avg_down=True)),
  # timm's attention nets
  'seresnet18': (BasicBlock, [2, 2, 2, 2], dict(attn_layer='se')),
  'seresnet50': (Bottleneck, [3, 4, 6, 3], dict(attn_layer='se')),
  'seresnet101': (Bottleneck, [3, 4, 23, 3], dict(attn_layer='se')),
  'ecaresnet50d': (
    Bottleneck,
    [3, 4, 6, 3],
    dict(stem_type='deep', avg_down=True, attn_layer='eca'),
  ),
}


class VGG(nn.Module):
  """torchvision's vgg.py: features, a 7x7 adaptive average pool, the dropout classifier."""

  def __init__(self, layers, batch_norm, num_classes=1000, dropout=0.5):
    super().__init__()
    modules, channels = [], 3
    for layer in layers:
      if layer == 'M':
        modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
        continue
      modules.append(nn.Conv2d(channels, layer, kernel_size=3, padding=1))
      if batch_norm:
        modules.append(nn.BatchNorm2d(layer))
      modules.append(nn.ReLU(inplace=True))
      channels = layer
    self.features = nn.Sequential(*modules)
    self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    self.classifier = nn.Sequential(
      nn.Linear(512 * 7 * 7, 4096),
      nn.ReLU(True),
      nn.Dropout(p=dropout),
      nn.Linear(4096, 4096),
      nn.ReLU(True),
      nn.Dropout(p=dropout),
      nn.Linear(4096, num_classes),
    )

  def forward(self, x):
    return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class AlexNet(nn.Module):
  """torchvision's alexnet.py."""

  def __init__(self, num_classes=1000, dropout=0.5):
    super().__init__()
    self.features = nn.Sequential(
      nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
      nn.ReLU(inplace=True),
      nn.MaxPool2d(kernel_size=3, stride=2),
      nn.Conv2d(64, 192, kernel_size=5, padding=2),
      nn.ReLU(inplace=True),
      nn.MaxPool2d(kernel_size=3, stride=2),
      nn.Conv2d(192, 384, kernel_size=3, padding=1),
      nn.ReLU(inplace=True),
      nn.Conv2d(384, 256, kernel_size=3, padding=1),
      nn.ReLU(inplace=True),
      nn.Conv2d(256, 256, kernel_size=3, padding=1),
      nn.ReLU(inplace=True),
      nn.MaxPool2d(kernel_size=3, stride=2),
    )
    self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
    self.classifier = nn.Sequential(
      nn.Dropout(p=dropout),
      nn.Linear(256 * 6 * 6, 4096),
      nn.ReLU(inplace=True),
      nn.Dropout(p=dropout),
      nn.Linear(4096, 4096),
      nn.ReLU(inplace=True),
      nn.Linear(4096, num_classes),
    )

  def forward(self, x):
    return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class BasicConv2d(nn.Module):
  """torchvision's googlenet.py BasicConv2d: convolution without bias, BatchNorm eps 1e-3, ReLU."""

  def __init__(self, in_channels, out_channels, **kwargs):
    super().__init__()
    self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
    self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

  def forward(self, x):
    return torch.relu(self.bn(self.conv(x)))


class Inception(nn.Module):
  def __init__(self, in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj):
    super().__init__()
    self.branch1 = BasicConv2d(in_channels, ch1x1, kernel_size=1)
    self.branch2 = nn.Sequential(
      BasicConv2d(in_channels, ch3x3red, kernel_size=1),
      BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1),
    )
    self.branch3 = nn.Sequential(  # torchvision's 3x3 where the paper has a 5x5
      BasicConv2d(in_channels, ch5x5red, kernel_size=1),
      BasicConv2d(ch5x5red, ch5x5, kernel_size=3, padding=1),
    )
    self.branch4 = nn.Sequential(
      nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
      BasicConv2d(in_channels, pool_proj, kernel_size=1),
    )

  def forward(self, x):
    branches = (self.branch1, self.branch2, self.branch3, self.branch4)
    return torch.cat([branch(x) for branch in branches], 1)


class InceptionAux(nn.Module):
  def __init__(self, in_channels, num_classes, dropout=0.7):
    super().__init__()
    self.conv = BasicConv2d(in_channels, 128, kernel_size=1)
    self.fc1 = nn.Linear(2048, 1024)
    self.fc2 = nn.Linear(1024, num_classes)
    self.dropout = nn.Dropout(p=dropout)

  def forward(self, x):
    x = torch.flatten(self.conv(F.adaptive_avg_pool2d(x, (4, 4))), 1)
    return self.fc2(self.dropout(F.relu(self.fc1(x))))


class GoogLeNet(nn.Module):
  """torchvision's googlenet.py. In training it returns (logits, aux2, aux1) as torchvision's
  does; ``main_only`` keeps the logits alone (the references' train-mode outputs)."""

  def __init__(
    self, num_classes=1000, aux_logits=True, dropout=0.2, dropout_aux=0.7, main_only=True
  ):
    super().__init__()
    self.main_only = main_only
    self.conv1 = BasicConv2d(3, 64, kernel_size=7, stride=2, padding=3)
    self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
    self.conv2 = BasicConv2d(64, 64, kernel_size=1)
    self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
    self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
    self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
    self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
    self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
    self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
    self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
    self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
    self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
    self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
    self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
    self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
    self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)
    self.aux1 = InceptionAux(512, num_classes, dropout_aux) if aux_logits else None
    self.aux2 = InceptionAux(528, num_classes, dropout_aux) if aux_logits else None
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.dropout = nn.Dropout(p=dropout)
    self.fc = nn.Linear(1024, num_classes)

  def forward(self, x):
    x = self.maxpool2(self.conv3(self.conv2(self.maxpool1(self.conv1(x)))))
    x = self.maxpool3(self.inception3b(self.inception3a(x)))
    x = self.inception4a(x)
    aux1 = self.aux1(x) if self.aux1 is not None and self.training else None
    x = self.inception4d(self.inception4c(self.inception4b(x)))
    aux2 = self.aux2(x) if self.aux2 is not None and self.training else None
    x = self.inception5b(self.inception5a(self.maxpool4(self.inception4e(x))))
    x = self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))
    if self.training and not self.main_only:
      return x, aux2, aux1
    return x


VGG_LAYERS = {  # torchvision's cfgs "A", "B", "D", "E"
  11: [64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'],
  13: [64, 64, 'M', 128, 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'],
  16: [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M'],
  19: [
    *(64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M'),
    *(512, 512, 512, 512, 'M', 512, 512, 512, 512, 'M'),
  ],
}


def build(name, num_classes=1000, **kwargs):
  """torchvision's ``models.<name>(num_classes=..., **kwargs)`` (timm's for ResNet-C/-D, the
  Torch code's for pre-activation nets) with random weights."""
  if name == 'alexnet':
    return AlexNet(num_classes, **kwargs)
  if name == 'googlenet':
    return GoogLeNet(num_classes, **kwargs)
  if name.startswith('vgg'):
    depth = int(name[3:].removesuffix('_bn'))
    return VGG(VGG_LAYERS[depth], name.endswith('_bn'), num_classes, **kwargs)
  if name in PREACT_ARCHS:
    bottleneck, layers, defaults = PREACT_ARCHS[name]
    return PreActResNet(bottleneck, layers, num_classes, **{**defaults, **kwargs})
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
