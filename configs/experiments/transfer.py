"""Transfer at CPU scale on real data that ships with scikit-learn: CIFAR ResNet-20 pretrained on
the handwritten digits 0-4, then taught the held-out digits 5-9 (``class_subset``, relabelled
0-4) five ways, each 60 steps of batch 64 (5.4 epochs of the 716 training images), three seeds:

- 'scratch': a fresh net (lr 0.1, the digits recipe);
- 'probe': a linear probe of the pretrained net (``freeze=backbone``, so its BatchNorms run on
  their running statistics; zero head, BiT's; lr 0.1);
- 'finetune': every tensor from the pretrained net but the head (lr 0.01);
- 'lpft': the probe's result fine-tuned (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained
  Features": linear probe, then fine-tune; lr 0.01);
- 'adamw_ld': timm's fine-tuning style: AdamW (lr 1e-3, weight decay 0.05 on kernels) with
  layer-wise decay 0.75.

The few-shot probe of the pretrained net on 5-9 (1/5/10 shots, 3 seeds) is the representation's
own measure: ``python -m resnet_jax.evaluate --fewshot
--config=configs/experiments/transfer.py:probe_s0 --workdir=/tmp/transfer/fewshot
--config.init_from=/tmp/transfer/pretrain``.

Hardware: a 2-core CPU; about 8 minutes for the 16 runs.

  python -m resnet_jax.study --study=configs/experiments/transfer.py --root=/tmp/transfer
  python -m resnet_jax.report /tmp/transfer/*_s*
"""

from configs import digits

SOURCE_CLASSES, TARGET_CLASSES = '0,1,2,3,4', '5,6,7,8,9'
ARMS = ('scratch', 'probe', 'finetune', 'lpft', 'adamw_ld')
SEEDS = (0, 1, 2)
RUNS = ('pretrain', *(f'{arm}_s{seed}' for arm in ARMS for seed in SEEDS))
# Runs that start from another run's weights (study.py passes --config.init_from=ROOT/<run>).
STARTS_FROM = {
  **{f'{arm}_s{seed}': 'pretrain' for arm in ('probe', 'finetune', 'adamw_ld') for seed in SEEDS},
  **{f'lpft_s{seed}': f'probe_s{seed}' for seed in SEEDS},
}


def get_config(run: str = 'pretrain'):
  if run not in RUNS:
    raise ValueError(f'run must be one of {RUNS}, got {run!r}')
  c = digits.get_config()
  if run == 'pretrain':
    c.class_subset = SOURCE_CLASSES
    return c
  arm, seed = run.rsplit('_s', 1)
  c.class_subset = TARGET_CLASSES
  c.seed = int(seed)
  c.num_train_steps = 60
  c.eval_every, c.checkpoint_every, c.log_every = 20, 60, 5
  if arm == 'probe':
    c.freeze = 'backbone'
    c.head_init_scale = 0.0
  if arm in ('finetune', 'lpft'):
    c.learning_rate = 0.01
  if arm == 'adamw_ld':
    c.optimizer = 'adamw'
    c.learning_rate, c.weight_decay = 1e-3, 0.05
    c.layer_decay = 0.75
  return c
