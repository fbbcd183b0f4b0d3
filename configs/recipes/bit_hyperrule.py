"""BiT-HyperRule: fine-tune a pretrained net on any dataset with the schedule its size picks.

Source: Kolesnikov et al. 2020, "Big Transfer (BiT): General Visual Representation Learning",
section 3.3, and google-research/big_transfer's ``bit_hyperrule.py``. From the training set's size
N and its images' size the rule picks:

- steps: 500 for N < 20k, 10k for N < 500k, else 20k; a linear warm-up over the first 100, 500
  or 500 steps; lr 0.003 at batch 512, divided by 10 at about 30%, 60% and 90% of the steps
  (big_transfer's supports (100, 200, 300, 400, 500), (500, 3k, 6k, 9k, 10k), (500, 6k, 12k, 18k,
  20k): warm-up end, the three cuts, the end);
- SGD with momentum 0.9, no weight decay, the classifier initialised to zero (BiT's zero head);
- mixup with alpha 0.1 from 20k examples on;
- resolution: images smaller than 96x96 pixels are resized to 160 and cropped to 128, larger
  ones to 512 and 480; training views are random crops and flips, nothing else.

The argument is N, with ",small" for images under 96x96 pixels (CIFAR's 32x32). The run checks N
against its training split: one of another size class is one line before any training.

  python -m resnet_jax.main --config=configs/recipes/bit_hyperrule.py:3680 --workdir=/tmp/pets \\
    --config.dataset=oxford_iiit_pet --config.eval_split=test \\
    --config.model=resnet50 --config.init_from=torchvision:resnet50.IMAGENET1K_V2
  python -m resnet_jax.main --config=configs/recipes/bit_hyperrule.py:50000,small \\
    --workdir=/tmp/cifar10 --config.dataset=cifar10 --config.eval_split=test \\
    --config.model=bit_r50x1 --config.init_from=bit:M-R50x1 \\
    --config.channel_mean='(127.5,127.5,127.5)' --config.channel_std='(127.5,127.5,127.5)'

BiT's own nets take images scaled to [-1, 1] (the two channel flags); torchvision's and timm's
weights take ImageNet's channel mean and deviation, this config's default.

Differences: big_transfer resizes images to a square (their aspect not kept) and tests at the
crop's side squashed the same way; here the shorter side is resized (scale_range) and the test
view is the centre crop of the image resized to that side. big_transfer keeps batch 512 on any
hardware by splitting it; a smaller batch here scales the rate linearly (lr_reference_batch).
"""

from configs import default

BATCH, LEARNING_RATE = 512, 0.003
# big_transfer's supports by size class: warm-up end, the three cuts, the last step.
SUPPORTS = {
  'small': (100, 200, 300, 400, 500),
  'medium': (500, 3_000, 6_000, 9_000, 10_000),
  'large': (500, 6_000, 12_000, 18_000, 20_000),
}


def size_class(num_examples: int) -> str:
  if num_examples < 20_000:
    return 'small'
  return 'medium' if num_examples < 500_000 else 'large'


def check_training_split(declared: int, found: int, name: str):
  """Refuses a training split whose size picks another schedule than the declared size."""
  if size_class(declared) != size_class(found):
    from resnet_jax.errors import UserError

    raise UserError(
      f'The BiT-HyperRule schedule was picked for {declared:,} training examples '
      f'({size_class(declared)}: {SUPPORTS[size_class(declared)][-1]:,} steps) and {name} has '
      f'{found:,} ({size_class(found)}): pass --config=configs/recipes/bit_hyperrule.py:{found}.'
    )


def get_config(arg: str = '50000'):
  examples, _, images = arg.partition(',')
  if not examples.strip().isdigit() or images not in ('', 'small'):
    raise ValueError(f'the argument is N or N,small (N training examples), got {arg!r}')
  num_examples = int(examples)
  warmup, *cuts, steps = SUPPORTS[size_class(num_examples)]
  c = default.get_config()
  c.hyperrule_train_examples = num_examples
  c.batch_size = BATCH
  c.learning_rate, c.lr_reference_batch = LEARNING_RATE, BATCH
  c.optimizer, c.momentum, c.nesterov = 'sgd', 0.9, False
  c.weight_decay = 0.0
  c.head_init_scale = 0.0
  c.num_train_steps = steps
  # big_transfer divides the rate for the steps after a cut (cut < step); lr_boundaries from it on.
  c.schedule, c.lr_boundaries_unit = 'step', 'steps'
  c.lr_boundaries = tuple(cut + 1 for cut in cuts)
  c.lr_decay_factor = 0.1
  c.warmup_steps = warmup
  c.mixup_alpha = 0.1 if num_examples >= 20_000 else 0.0
  side, crop = (160, 128) if images == 'small' else (512, 480)
  c.train_augment = 'scale'
  c.scale_range = (side, side)
  c.image_size = crop
  c.eval_resize, c.eval_image_size = crop, crop
  c.normalization = 'channel_mean_std'
  c.lighting_std = 0.0
  c.eval_every = steps // 10
  c.checkpoint_every = steps // 10
  return c
