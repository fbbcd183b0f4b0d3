"""The paper's reported numbers (He et al. 2015), and the published numbers of the family's nets,
with where each comes from. One place: the study configs name their runs after these keys and
``resnet_jax.report`` prints them beside ours.

Errors are percentages on the paper's test set for that experiment: ImageNet val (top-1, top-5;
some nets have only one of them) and CIFAR-10 test (top-1). ``protocol`` is the test protocol
the paper used for that number.
"""

PAPER = {
  # CIFAR-10, Table 6 (single 32x32 view; ResNet-110 is the best of 5 runs, mean 6.61 +- 0.16).
  'cifar_resnet20': {'top1': 8.75, 'protocol': 'center', 'source': 'Table 6'},
  'cifar_resnet32': {'top1': 7.51, 'protocol': 'center', 'source': 'Table 6'},
  'cifar_resnet44': {'top1': 7.17, 'protocol': 'center', 'source': 'Table 6'},
  'cifar_resnet56': {'top1': 6.97, 'protocol': 'center', 'source': 'Table 6'},
  'cifar_resnet110': {'top1': 6.43, 'protocol': 'center', 'source': 'Table 6'},
  'cifar_resnet1202': {'top1': 7.93, 'protocol': 'center', 'source': 'Table 6'},
  # ImageNet val, Table 2 (10-crop testing): plain vs residual (option A shortcuts).
  'plain18': {'top1': 27.94, 'protocol': '10crop', 'source': 'Table 2'},
  'plain34': {'top1': 28.54, 'protocol': '10crop', 'source': 'Table 2'},
  'resnet18': {'top1': 27.88, 'protocol': '10crop', 'source': 'Table 2'},
  'resnet34_A': {'top1': 25.03, 'top5': 7.76, 'protocol': '10crop', 'source': 'Tables 2, 3'},
  # ImageNet val, Table 3 (10-crop testing).
  'resnet34_B': {'top1': 24.52, 'top5': 7.46, 'protocol': '10crop', 'source': 'Table 3'},
  'resnet34_C': {'top1': 24.19, 'top5': 7.40, 'protocol': '10crop', 'source': 'Table 3'},
  'resnet50': {'top1': 22.85, 'top5': 6.71, 'protocol': '10crop', 'source': 'Table 3'},
  'resnet101': {'top1': 21.75, 'top5': 6.05, 'protocol': '10crop', 'source': 'Table 3'},
  'resnet152': {'top1': 21.43, 'top5': 5.71, 'protocol': '10crop', 'source': 'Table 3'},
  'vgg16': {'top1': 28.07, 'top5': 9.33, 'protocol': '10crop', 'source': 'Table 3'},
  # ImageNet val, Table 4 (single model, fully-convolutional multi-scale testing).
  'resnet50@multiscale': {
    'top1': 20.74,
    'top5': 5.25,
    'protocol': 'multiscale',
    'source': 'Table 4',
  },
  'resnet152@multiscale': {
    'top1': 19.38,
    'top5': 4.49,
    'protocol': 'multiscale',
    'source': 'Table 4',
  },
  # Table 4's comparison nets, single model on ImageNet val, each by its own dense multi-crop
  # testing (GoogLeNet's 144 crops; VGG's v5, multi-scale dense): the nearest protocol here is
  # multi-scale. GoogLeNet (ILSVRC'14) has a top-5 error only.
  'googlenet@multiscale': {
    'top5': 7.89,
    'protocol': 'multiscale',
    'source': "Table 4 (GoogLeNet, ILSVRC'14)",
  },
  'vgg16@multiscale': {
    'top1': 24.4,
    'top5': 7.1,
    'protocol': 'multiscale',
    'source': 'Table 4 (VGG, v5)',
  },
  # The family, ImageNet val, one 224 crop.
  'resnext50_32x4d': {'top1': 22.2, 'protocol': 'center', 'source': 'Xie et al. 2017, Table 3'},
  'wide_resnet50_2': {'top1': 21.532, 'protocol': 'center', 'source': "torchvision's V1 weights"},
  # Pre-activation nets, CIFAR-10 test error (He et al. 2016, "Identity Mappings").
  'cifar_preact_resnet164': {'top1': 5.46, 'protocol': 'center', 'source': 'He et al. 2016'},
  'cifar_preact_resnet1001': {'top1': 4.92, 'protocol': 'center', 'source': 'He et al. 2016'},
  # Published training recipes (configs/recipes/, a run's `recipe` field), ImageNet val top-1
  # error of ResNet-50 at one 224 crop.
  'torchvision_v2': {
    'top1': 19.142,
    'protocol': 'center',
    'source': "torchvision's ResNet50_Weights.IMAGENET1K_V2",
    'recipe': True,
  },
  'goyal_8k': {
    'top1': 23.74,
    'protocol': 'center',
    'source': 'Goyal et al. 2017, Table 1 (kn=8k)',
    'recipe': True,
  },
  'mlperf_lars': {
    'top1': 24.1,
    'protocol': 'center',
    'source': "MLPerf Training's target (75.9%)",
    'recipe': True,
  },
  # "ResNet strikes back", Table 1 (80.4 / 79.8 / 78.1%, crop ratio 0.95).
  **{
    f'rsb_{procedure}': {
      'top1': error,
      'protocol': 'center',
      'source': f'Wightman et al. 2021, procedure {procedure.upper()}',
      'recipe': True,
    }
    for procedure, error in (('a1', 19.6), ('a2', 20.2), ('a3', 21.9))
  },
}
