"""Training curves as in the paper's Fig. 4 and 6: error (%) against iterations, training error
dashed and test error bold, one colour per run.

  python -m resnet_jax.plot /tmp/cifar_p20 /tmp/cifar_r20 --out=fig6.png --labels plain-20 ResNet-20
"""

from __future__ import annotations

import argparse
import io
import itertools
import json

import matplotlib

matplotlib.use('Agg')  # files only; no display needed
import matplotlib.pyplot as plt

from resnet_jax import cli, storage
from resnet_jax.train import metrics


def curves(workdir: str) -> dict[str, tuple[list[int], list[float]]]:
  """{'train': (steps, top1 error %), 'eval': (...)} of a workdir's metrics.jsonl."""
  out = {}
  for split in ('train', 'eval'):
    records = [r for r in metrics.read(workdir) if r['split'] == split]
    out[split] = ([r['step'] for r in records], [100 * r['top1_err'] for r in records])
  return out


def lr_drops(workdir: str) -> list[int]:
  """Steps at which a step or plateau schedule cut the logged learning rate (cosine has none)."""
  config = storage.path(workdir) / 'config.json'
  if config.exists() and json.loads(config.read_text()).get('schedule') == 'cosine':
    return []
  train = [r for r in metrics.read(workdir) if r['split'] == 'train' and 'learning_rate' in r]
  return [
    b['step']
    for a, b in itertools.pairwise(train)
    if b['learning_rate'] < 0.5 * a['learning_rate']  # a decay, not cosine's gentle slope
  ]


def plot(workdirs, out: str, labels=None, title: str | None = None) -> str:
  """Training error dashed, test error bold with markers (one point still shows), one colour
  per run; dotted vertical lines where a run's learning rate dropped."""
  labels = labels or [storage.path(w).name for w in workdirs]
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for i, (workdir, label) in enumerate(zip(workdirs, labels, strict=True)):
    colour = f'C{i}'
    data = curves(workdir)
    ax.plot(*data['train'], '--', color=colour, linewidth=1, alpha=0.8)
    ax.plot(*data['eval'], '-o', color=colour, linewidth=2, markersize=4, label=label)
    for step in lr_drops(workdir):
      ax.axvline(step, color=colour, linestyle=':', linewidth=1, alpha=0.6)
  ax.set_xlabel('iterations')
  ax.set_ylabel('error (%)')
  ax.set_title(title or 'dashed: training error, bold: test error, dotted: lr drops')
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format='png', dpi=120)
  plt.close(fig)
  storage.write_bytes_atomic(storage.path(out), png.getvalue())
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('workdirs', nargs='+')
  parser.add_argument('--out', default='curves.png')
  parser.add_argument('--labels', nargs='*')
  parser.add_argument('--title')
  args = parser.parse_args(argv)
  cli.refuse_unwritable_file(args.out, 'curves.png')
  for workdir in args.workdirs:
    metrics.require(workdir)
  if args.labels and len(args.labels) != len(args.workdirs):
    cli.fail(f'--labels: {len(args.labels)} labels for {len(args.workdirs)} workdirs.')
  print(plot(args.workdirs, args.out, args.labels, args.title))


if __name__ == '__main__':
  main()
