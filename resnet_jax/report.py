"""Markdown results table of finished runs, with the paper's numbers beside them.

  python -m resnet_jax.report WORKDIR [WORKDIR ...] [--out=results.md]

One row per run and test protocol: the model, its final training error, its final test top-1 /
top-5 error (the training run's own evaluation, plus every ``resnet_jax.evaluate`` protocol
recorded in the workdir), the averaged weights' top-1 error (runs with ``ema_decay``), the
published number for that model and protocol (``configs/experiments/paper.py``; for a run of a
published recipe, its ``recipe`` field, that recipe's) and our difference from it, the steps,
the training time and the hardware. Runs are grouped by dataset (one table per study). Errors
are percentages. For released weights (``init_from=torchvision:...``) evaluated on ImageNet, the
top-1 their source publishes stands where the paper's would. With several runs, a last table
lists the config fields that differ between them.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

from configs.experiments.paper import PAPER
from resnet_jax import cli, storage
from resnet_jax.models import releases
from resnet_jax.train import divergence, metrics

COLUMNS = (
  'run',
  'model',
  'protocol',
  'train err',
  'top-1 err',
  'top-5 err',
  'EMA top-1',
  'paper top-1',
  'paper top-5',
  'diff',
  'paper source',
  'steps',
  'wall time',
  'hardware',
)


def _latest_json(root, prefix: str) -> dict:
  """The ``prefix.<start step>.json`` of the latest start of the run, or {}."""
  files = sorted(root.glob(f'{prefix}.*.json'), key=lambda p: int(p.name.split('.')[1]))
  return json.loads(files[-1].read_text()) if files else {}


def paper_key(config: dict, protocol: str) -> str:
  if config.get('recipe'):  # a published recipe's number, whatever the net it names
    return config['recipe'] if protocol == PAPER[config['recipe']]['protocol'] else ''
  model = config.get('model', '')
  if config.get('dataset') not in ('imagenet2012', 'cifar10'):
    return ''  # the paper's numbers are for its datasets only
  reshaped = any(config.get(k) for k in ('groups', 'width_per_group', 'deep_stem', 'avg_down'))
  reshaped = reshaped or config.get('norm', 'batch') != 'batch'
  if reshaped or any(config.get('replace_stride_with_dilation') or ()):
    return ''  # another net than the one the name was published for
  if model == 'resnet34':
    model = f'resnet34_{config.get("shortcut") or "B"}'
  return f'{model}@multiscale' if protocol == 'multiscale' else model


def _release_figure(config: dict, protocol: str) -> dict:
  """For released weights evaluated (or trained further) on ImageNet: the top-1 error their
  source publishes (single 224 centre crop), as the paper's numbers are set beside a run."""
  name = config.get('init_from', '')
  if config.get('dataset') != 'imagenet2012' or protocol != 'center' or ':' not in name:
    return {}
  if name.split(':', 1)[0] not in releases.SOURCES:
    return {}
  top1 = releases.published_top1(name)
  return {'top1': 100 - top1, 'source': f'{name} (published)'} if top1 else {}


def config_differences(workdirs: list[str]) -> dict[str, list]:
  """The config fields whose values differ between the runs (field -> each run's value)."""
  configs = [json.loads((storage.path(w) / 'config.json').read_text()) for w in workdirs]
  fields = sorted(set().union(*configs))
  return {
    f: [c.get(f, '-') for c in configs]
    for f in fields
    if len({json.dumps(c.get(f, '-'), sort_keys=True) for c in configs}) > 1
  }


def _hours(records: list[dict]) -> str:
  times = [r['time'] for r in records if 'time' in r]
  if len(times) < 2:
    return '-'
  return f'{(max(times) - min(times)) / 3600:.2f} h'


def _nonfinite_note(records: list[dict]) -> str:
  """' (diverged at step S)' for a run stopped by a non-finite step, and the skipped steps."""
  events = [r for r in records if r['split'] == divergence.SPLIT]
  stopped = [r['step'] for r in events if r.get('action') == 'stopped']
  skipped = sum(r.get('action') == 'skipped' for r in events)
  notes = [f'diverged at step {stopped[-1]}'] if stopped else []
  notes += [f'{skipped} non-finite steps skipped'] if skipped else []
  return f' ({"; ".join(notes)})' if notes else ''


def _difference(result: dict, paper: dict) -> str:
  """Our top-1 error less the paper's; its top-5 (so marked) where it gives only that."""
  if not result:
    return '-'
  for ours, theirs, mark in (('top1_err', 'top1', ''), ('top5_err', 'top5', ' (top-5)')):
    if theirs in paper:
      return f'{100 * result[ours] - paper[theirs]:+.2f}{mark}'
  return '-'


def _with_eval_sets(results):
  """(protocol, result, is the run's eval split) for each result, followed by a row of each of
  its ``eval_sets`` (figures keyed ``NAME/...``), as 'PROTOCOL on NAME'."""
  for protocol, result in results:
    yield protocol, result, True
    names = dict.fromkeys(k.split('/', 1)[0] for k in result if '/' in k)
    for name in names:
      figures = {k.split('/', 1)[1]: v for k, v in result.items() if k.startswith(f'{name}/')}
      yield f'{protocol} on {name}', {'step': result.get('step', '-'), **figures}, False


def run_rows(workdir: str) -> list[dict]:
  """The rows of one workdir: its training evaluation and each recorded evaluate protocol."""
  root = storage.path(workdir)
  metrics.require(workdir)
  if not (root / 'config.json').exists():
    cli.fail(f'{workdir}: no config.json (not a resnet_jax workdir, or not started).')
  config = json.loads((root / 'config.json').read_text())
  env = _latest_json(root, 'environment')
  records = metrics.read(workdir)
  train = [r for r in records if r['split'] == 'train']
  evals = [r for r in records if r['split'] == 'eval']
  results = [(config.get('eval_mode', 'center'), evals[-1])] if evals else []
  for protocol in ('center', '10crop', 'multiscale'):
    extra = root / f'eval_{protocol}.jsonl'
    if extra.exists():
      lines = [json.loads(x) for x in extra.read_text().splitlines() if x.strip()]
      results.append((protocol, lines[-1]))
  hardware = f'{env.get("devices", "?")} x {env.get("device_kind", "?")}' if env else '-'
  name = root.name + _nonfinite_note(records)
  if not results:  # not evaluated yet (or diverged before its first evaluation): still a row
    results = [('-', {})]
  rows = []
  for protocol, result, own_set in _with_eval_sets(results):
    # Released weights: their own published figure, before the paper's for the architecture.
    paper = _release_figure(config, protocol) or PAPER.get(paper_key(config, protocol), {})
    paper = paper if own_set else {}  # the published figures are for the eval split
    top1 = 100 * result.get('top1_err', float('nan'))
    rows.append(
      {
        'run': name,
        'model': config.get('model', '?'),
        'protocol': protocol,
        'train err': f'{100 * train[-1]["top1_err"]:.2f}' if train else '-',
        'top-1 err': f'{top1:.2f}' if result else '-',
        'top-5 err': f'{100 * result["top5_err"]:.2f}' if result else '-',
        'EMA top-1': f'{100 * result["ema_top1_err"]:.2f}' if 'ema_top1_err' in result else '-',
        'paper top-1': f'{paper["top1"]:.2f}' if 'top1' in paper else '-',
        'paper top-5': f'{paper["top5"]:.2f}' if 'top5' in paper else '-',
        'diff': _difference(result, paper),
        'paper source': paper.get('source', '-'),
        'steps': str(result.get('step', '-')),
        'wall time': _hours(records),
        'hardware': hardware,
        'dataset': config.get('dataset', '?'),
      }
    )
  return rows


def report(workdirs: list[str]) -> str:
  by_dataset = defaultdict(list)
  for workdir in workdirs:
    for row in run_rows(workdir):
      by_dataset[row['dataset']].append(row)
  parts = []
  for dataset, rows in by_dataset.items():
    parts.append(f'### {dataset}\n')
    parts.append('| ' + ' | '.join(COLUMNS) + ' |')
    parts.append('|' + ' --- |' * len(COLUMNS))
    parts += ['| ' + ' | '.join(row[c] for c in COLUMNS) + ' |' for row in rows]
    parts.append('')
  differences = config_differences(workdirs) if len(workdirs) > 1 else {}
  if differences:
    names = [storage.path(w).name for w in workdirs]
    parts.append('### Config fields that differ\n')
    parts.append('| field | ' + ' | '.join(names) + ' |')
    parts.append('|' + ' --- |' * (len(names) + 1))
    for field, values in differences.items():
      shown = [json.dumps(v) if not isinstance(v, str) else v or "''" for v in values]
      parts.append(f'| {field} | ' + ' | '.join(shown) + ' |')
    parts.append('')
  return '\n'.join(parts)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('workdirs', nargs='+')
  parser.add_argument('--out', default='', help='also write the markdown here')
  args = parser.parse_args(argv)
  if args.out:
    cli.refuse_unwritable_file(args.out, 'results.md')
  text = report(args.workdirs)
  print(text)
  if args.out:
    storage.write_text_atomic(storage.path(args.out), text)


if __name__ == '__main__':
  main()
