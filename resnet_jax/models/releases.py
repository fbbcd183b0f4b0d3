"""Released weights of the family's nets, by name: ``torchvision:resnet50.IMAGENET1K_V2`` (the
weights tables of torchvision's ``resnet.py``, ``vgg.py``, ``alexnet.py`` and ``googlenet.py``) and
``timm:resnet50.a1_in1k`` (timm's hub releases) and ``bit:M-R50x1`` (BiT's ``.npz`` files, the
names big_vision's bit_paper.py takes), each with the net it fits, its file's URL and the ImageNet
top-1 its source publishes (where it publishes one). ``train/pretrained.py`` downloads, checks
and converts them.
"""

from __future__ import annotations

import dataclasses
import difflib

from resnet_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Weights:
  """One release: the net it fits, its file and the ImageNet top-1 (%) its source publishes;
  ``requires``: the config fields (name, value) the net must have for these weights."""

  model: str
  url: str
  top1: float | None = None
  note: str = ''
  requires: tuple[tuple[str, object], ...] = ()


_TV = 'https://download.pytorch.org/models/'
_HF = 'https://huggingface.co/timm/{}/resolve/main/model.safetensors'
# torchvision's weights tables (torchvision/models/resnet.py, vgg.py, alexnet.py, googlenet.py):
# acc@1.
TORCHVISION = {
  'resnet18.IMAGENET1K_V1': Weights('resnet18', _TV + 'resnet18-f37072fd.pth', 69.758),
  'resnet34.IMAGENET1K_V1': Weights('resnet34', _TV + 'resnet34-b627a593.pth', 73.314),
  'resnet50.IMAGENET1K_V1': Weights('resnet50', _TV + 'resnet50-0676ba61.pth', 76.130),
  'resnet50.IMAGENET1K_V2': Weights('resnet50', _TV + 'resnet50-11ad3fa6.pth', 80.858),
  'resnet101.IMAGENET1K_V1': Weights('resnet101', _TV + 'resnet101-63fe2227.pth', 77.374),
  'resnet101.IMAGENET1K_V2': Weights('resnet101', _TV + 'resnet101-cd907fc2.pth', 81.886),
  'resnet152.IMAGENET1K_V1': Weights('resnet152', _TV + 'resnet152-394f9c45.pth', 78.312),
  'resnet152.IMAGENET1K_V2': Weights('resnet152', _TV + 'resnet152-f82ba261.pth', 82.284),
  'resnext50_32x4d.IMAGENET1K_V1': Weights(
    'resnext50_32x4d', _TV + 'resnext50_32x4d-7cdf4587.pth', 77.618
  ),
  'resnext50_32x4d.IMAGENET1K_V2': Weights(
    'resnext50_32x4d', _TV + 'resnext50_32x4d-1a0047aa.pth', 81.198
  ),
  'resnext101_32x8d.IMAGENET1K_V1': Weights(
    'resnext101_32x8d', _TV + 'resnext101_32x8d-8ba56ff5.pth', 79.312
  ),
  'resnext101_32x8d.IMAGENET1K_V2': Weights(
    'resnext101_32x8d', _TV + 'resnext101_32x8d-110c445d.pth', 82.834
  ),
  'resnext101_64x4d.IMAGENET1K_V1': Weights(
    'resnext101_64x4d', _TV + 'resnext101_64x4d-173b62eb.pth', 83.246
  ),
  'wide_resnet50_2.IMAGENET1K_V1': Weights(
    'wide_resnet50_2', _TV + 'wide_resnet50_2-95faca4d.pth', 78.468
  ),
  'wide_resnet50_2.IMAGENET1K_V2': Weights(
    'wide_resnet50_2', _TV + 'wide_resnet50_2-9ba9bcbe.pth', 81.602
  ),
  'wide_resnet101_2.IMAGENET1K_V1': Weights(
    'wide_resnet101_2', _TV + 'wide_resnet101_2-32ee1156.pth', 78.848
  ),
  'wide_resnet101_2.IMAGENET1K_V2': Weights(
    'wide_resnet101_2', _TV + 'wide_resnet101_2-d733dc28.pth', 82.510
  ),
  'vgg11.IMAGENET1K_V1': Weights('vgg11', _TV + 'vgg11-8a719046.pth', 69.020),
  'vgg11_bn.IMAGENET1K_V1': Weights('vgg11_bn', _TV + 'vgg11_bn-6002323d.pth', 70.370),
  'vgg13.IMAGENET1K_V1': Weights('vgg13', _TV + 'vgg13-19584684.pth', 69.928),
  'vgg13_bn.IMAGENET1K_V1': Weights('vgg13_bn', _TV + 'vgg13_bn-abd245e5.pth', 71.586),
  'vgg16.IMAGENET1K_V1': Weights('vgg16', _TV + 'vgg16-397923af.pth', 71.592),
  'vgg16_bn.IMAGENET1K_V1': Weights('vgg16_bn', _TV + 'vgg16_bn-6c64b313.pth', 73.360),
  'vgg19.IMAGENET1K_V1': Weights('vgg19', _TV + 'vgg19-dcbb9e9d.pth', 72.376),
  'vgg19_bn.IMAGENET1K_V1': Weights('vgg19_bn', _TV + 'vgg19_bn-c79401a0.pth', 74.218),
  'alexnet.IMAGENET1K_V1': Weights('alexnet', _TV + 'alexnet-owt-7be5be79.pth', 56.522),
  # Trained on (x - 0.5) / 0.5 images: torchvision's googlenet() turns transform_input on for them.
  'googlenet.IMAGENET1K_V1': Weights(
    'googlenet',
    _TV + 'googlenet-1378be20.pth',
    69.778,
    requires=(('transform_input', True), ('normalization', 'channel_mean_std')),
  ),
}
# timm's hub releases of the nets here ("ResNet strikes back": the paper's top-1 at 224 px).
TIMM = {
  'resnet50.a1_in1k': Weights('resnet50', _HF.format('resnet50.a1_in1k'), 80.4, 'RSB A1'),
  'resnet50.a2_in1k': Weights('resnet50', _HF.format('resnet50.a2_in1k'), 79.8, 'RSB A2'),
  'resnet50.a3_in1k': Weights('resnet50', _HF.format('resnet50.a3_in1k'), 78.1, 'RSB A3 (160 px)'),
  # timm's SE-ResNet-50 trained by the same procedures (its hub publishes no top-1 we record).
  **{
    f'seresnet50.{tag}_in1k': Weights('seresnet50', _HF.format(f'seresnet50.{tag}_in1k'), note=note)
    for tag, note in (('a1', 'RSB A1'), ('a2', 'RSB A2'), ('a3', 'RSB A3 (160 px)'))
  },
}
# BiT's releases (google-research/big_transfer; big_vision's bit_paper.py names them so):
# S-R<d>x<w> trained on ImageNet-1k, M-R<d>x<w> on ImageNet-21k (21,843 classes), and
# M-R<d>x<w>-ILSVRC2012 that one fine-tuned on ImageNet-1k; and the ResNet-50 distilled from
# BiT-M-R152x2 ("a good teacher is patient and consistent", Beyer et al. 2022: 82.8% at 224 px).
# BiT's nets take images scaled to [-1, 1].
_BIT = 'https://storage.googleapis.com/bit_models/'
_BIT_INPUT = (
  ('normalization', 'channel_mean_std'),
  ('channel_mean', (127.5, 127.5, 127.5)),
  ('channel_std', (127.5, 127.5, 127.5)),
)
BIT = {
  f'{kind}-R{depth}x{width}{tuned}': Weights(
    f'bit_r{depth}x{width}',
    f'{_BIT}BiT-{kind}-R{depth}x{width}{tuned}.npz',
    note={'S': 'ImageNet-1k', 'M': 'ImageNet-21k'}[kind] + (' -> ImageNet-1k' if tuned else ''),
    requires=_BIT_INPUT,
  )
  for depth, width in ((50, 1), (50, 3), (101, 1), (101, 3), (152, 2), (152, 4))
  for kind, tuned in (('S', ''), ('M', ''), ('M', '-ILSVRC2012'))
}
BIT['FunMatch-224px-i1k82.8'] = Weights(
  'bit_r50x1', f'{_BIT}distill/R50x1_224.npz', 82.8, 'distilled, 224 px', requires=_BIT_INPUT
)
SOURCES = {'torchvision': TORCHVISION, 'timm': TIMM, 'bit': BIT}


def names() -> list[str]:
  return [f'{source}:{name}' for source, table in SOURCES.items() for name in table]


def is_reference(text: str) -> bool:
  """Whether ``text`` names released weights or a URL (rather than a workdir or checkpoint)."""
  return text.split(':', 1)[0] in SOURCES or text.startswith(('http://', 'https://'))


def lookup(name: str) -> Weights:
  """The release ``name`` ('torchvision:resnet50.IMAGENET1K_V2') stands for.

  Raises:
    UserError: an unknown name, with the closest known ones.
  """
  source, _, key = name.partition(':')
  table = SOURCES.get(source, {})
  if key in table:
    return table[key]
  close = difflib.get_close_matches(name, names(), n=3, cutoff=0.6)
  hint = f' (closest: {", ".join(close)})' if close else ''
  raise UserError(
    f'Unknown weights {name!r}{hint}. Known: torchvision:<net>.IMAGENET1K_V1|V2 for '
    f'{", ".join(sorted({w.model for w in TORCHVISION.values()}))}; timm:{", timm:".join(TIMM)}; '
    f'bit:S-R50x1, bit:M-R50x1, bit:M-R50x1-ILSVRC2012 (and R50x3, R101x1, R101x3, R152x2, '
    f'R152x4), bit:FunMatch-224px-i1k82.8.'
  )


def published_top1(reference: str) -> float | None:
  """The top-1 (%) the source publishes for named weights (None for anything else)."""
  return lookup(reference).top1 if reference.split(':', 1)[0] in SOURCES else None
