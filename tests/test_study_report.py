"""Studies run by name and resume; the report and the plot read what real runs wrote."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO
from PIL import Image

from configs.experiments import paper
from resnet_jax import plot, report
from resnet_jax import study as study_command
from resnet_jax.train import metrics

pytestmark = pytest.mark.slow

SHORT = [
  '--config.num_train_steps=4',
  '--config.eval_every=100',  # one evaluation, at the end: the plot must still show it
  '--config.log_every=1',
  '--config.image_size=8',
  '--config.eval_resize=8',
  '--config.pad=1',
]


@pytest.fixture(scope='module')
def study(tmp_path_factory):
  root = tmp_path_factory.mktemp('study')
  cmd = [
    sys.executable,
    '-m',
    'resnet_jax.study',
    '--study=configs/experiments/digits_degradation.py',
    f'--root={root}',
    '--only=plain20,resnet20',
    *SHORT,
    f'--config.mean_image_path={root}/mean.npy',
  ]
  # One device, as a CPU user runs a study (eight simulated ones make tiny steps ~4x slower).
  env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert first.returncode == 0, first.stderr[-3000:]
  again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  return root, again


def test_a_study_runs_each_run_in_its_workdir_and_resumes(study):
  root, again = study
  assert sorted(os.listdir(root)) == ['mean.npy', 'plain20', 'resnet20']
  for run in ('plain20', 'resnet20'):
    with open(root / run / 'config.json') as f:
      assert json.load(f)['model'] == f'cifar_{run}'
  assert again.stdout.count('already holds the final step 4') == 2  # resumed, nothing retrained


def test_report_rows_are_the_runs_final_numbers(study):
  root, _ = study
  text = report.report([str(root / 'plain20'), str(root / 'resnet20')])
  results, differences = text.split('### Config fields that differ')
  assert '| model | cifar_plain20 | cifar_resnet20 |' in differences  # the two runs' nets
  lines = [line for line in results.splitlines() if line.startswith('| ')]
  header = [c.strip() for c in lines[0].strip('|').split('|')]
  assert header[:3] == ['run', 'model', 'protocol'] and 'paper top-1' in header
  rows = [
    dict(zip(header, (c.strip() for c in line.strip('|').split('|')), strict=True))
    for line in lines[2:]  # after the header and its separator
  ]
  assert [r['run'] for r in rows] == ['plain20', 'resnet20']
  for row in rows:
    final = [r for r in metrics.read(str(root / row['run'])) if r['split'] == 'eval'][-1]
    assert row['top-1 err'] == f'{100 * final["top1_err"]:.2f}'
    assert row['steps'] == '4' and row['protocol'] == 'center'
    assert row['paper top-1'] == '-'  # digits is not a dataset of the paper
    assert row['EMA top-1'] == '-'  # no moving average in this study
    assert row['hardware'] == '1 x cpu'  # the study ran on one device


def test_paper_numbers_are_found_for_the_papers_experiments():
  assert (
    paper.PAPER[report.paper_key({'model': 'cifar_resnet110', 'dataset': 'cifar10'}, 'center')][
      'top1'
    ]
    == 6.43
  )
  key = report.paper_key(
    {'model': 'resnet34', 'shortcut': 'C', 'dataset': 'imagenet2012'}, '10crop'
  )
  assert paper.PAPER[key]['top1'] == 24.19
  assert report.paper_key({'model': 'resnet50', 'dataset': 'imagenet2012'}, 'multiscale') == (
    'resnet50@multiscale'
  )
  imagenet = {'dataset': 'imagenet2012', 'groups': 0, 'width_per_group': 0}
  assert paper.PAPER[report.paper_key({**imagenet, 'model': 'resnext50_32x4d'}, 'center')] == {
    'top1': 22.2,
    'protocol': 'center',
    'source': 'Xie et al. 2017, Table 3',
  }
  # A resnet50 made wider or dilated by config fields is not the net the number was published for.
  assert report.paper_key({**imagenet, 'model': 'resnet50', 'width_per_group': 128}, '') == ''
  dilated = (False, True, True)
  assert (
    report.paper_key({**imagenet, 'model': 'resnet50', 'replace_stride_with_dilation': dilated}, '')
    == ''
  )
  for field, value in (('norm', 'group'), ('deep_stem', True), ('avg_down', True)):
    assert report.paper_key({**imagenet, 'model': 'resnet50', field: value}, 'center') == ''
  cifar = {'dataset': 'cifar10', 'norm': 'batch'}
  preact = report.paper_key({**cifar, 'model': 'cifar_preact_resnet1001'}, 'center')
  assert paper.PAPER[preact]['top1'] == 4.92
  # A run of a published recipe is set beside that recipe's number (for its protocol only).
  goyal = {**imagenet, 'model': 'resnet50', 'recipe': 'goyal_8k'}
  assert paper.PAPER[report.paper_key(goyal, 'center')]['top1'] == 23.74
  assert report.paper_key(goyal, '10crop') == ''
  vgg = paper.PAPER[report.paper_key({**imagenet, 'model': 'vgg16'}, '10crop')]
  assert (vgg['top1'], vgg['top5'], vgg['source']) == (28.07, 9.33, 'Table 3')


def colour_pixels(png, rgb, tolerance=40):
  image = np.asarray(Image.open(png).convert('RGB')).astype(int)
  return int((np.abs(image - np.array(rgb)).sum(axis=-1) < tolerance).sum())


def test_plot_shows_both_runs_with_their_single_test_point(study, tmp_path):
  root, _ = study
  out = plot.plot([str(root / 'plain20'), str(root / 'resnet20')], str(tmp_path / 'fig.png'))
  c0, c1 = (31, 119, 180), (255, 127, 14)  # matplotlib's first two colours
  assert colour_pixels(out, c0) > 100 and colour_pixels(out, c1) > 100
  # Only the test curve: one evaluation per run is still drawn (a marker, not an empty line).
  only_eval = tmp_path / 'eval_only'
  only_eval.mkdir()
  records = [r for r in metrics.read(str(root / 'resnet20')) if r['split'] == 'eval']
  (only_eval / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))
  out = plot.plot([str(only_eval)], str(tmp_path / 'one.png'))
  assert colour_pixels(out, c0) > 10


def test_lr_drops_are_the_step_schedules_cuts_not_cosines_tail(tmp_path):
  lrs = [0.1, 0.1, 0.01, 0.01, 0.001]
  records = [
    dict(split='train', step=10 * (i + 1), top1_err=0.5, learning_rate=lr)
    for i, lr in enumerate(lrs)
  ]
  (tmp_path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))
  (tmp_path / 'config.json').write_text(json.dumps({'schedule': 'step'}))
  assert plot.lr_drops(str(tmp_path)) == [30, 50]
  (tmp_path / 'config.json').write_text(json.dumps({'schedule': 'cosine'}))
  assert plot.lr_drops(str(tmp_path)) == []


def test_report_sets_the_average_beside_the_weights_and_a_recipe_beside_its_number(tmp_path):
  run = tmp_path / 'v2'
  run.mkdir()
  config = {'dataset': 'imagenet2012', 'model': 'resnet50', 'recipe': 'torchvision_v2'}
  (run / 'config.json').write_text(json.dumps(config))
  records = [
    {'split': 'train', 'step': 10, 'top1_err': 0.5, 'time': 0.0},
    {'split': 'eval', 'step': 10, 'top1_err': 0.2, 'top5_err': 0.05, 'ema_top1_err': 0.19},
  ]
  (run / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))
  (row,) = report.run_rows(str(run))
  assert (row['top-1 err'], row['EMA top-1'], row['paper top-1']) == ('20.00', '19.00', '19.14')
  assert row['paper source'] == "torchvision's ResNet50_Weights.IMAGENET1K_V2"


def test_report_sets_googlenet_beside_the_papers_table_4_top5(tmp_path):
  """Table 4 gives GoogLeNet's single-model top-5 error only (7.89): the difference is top-5's."""
  run = tmp_path / 'googlenet'
  run.mkdir()
  config = {'dataset': 'imagenet2012', 'model': 'googlenet', 'eval_mode': 'multiscale'}
  (run / 'config.json').write_text(json.dumps(config))
  record = {'split': 'eval', 'step': 5, 'top1_err': 0.3, 'top5_err': 0.1}
  (run / 'metrics.jsonl').write_text(json.dumps(record) + '\n')
  (row,) = report.run_rows(str(run))
  assert (row['paper top-1'], row['paper top-5']) == ('-', '7.89')
  assert row['diff'] == '+2.11 (top-5)'
  assert row['paper source'] == "Table 4 (GoogLeNet, ILSVRC'14)"


def test_report_sets_released_weights_beside_their_published_top1_and_lists_differences(
  tmp_path,
):
  """Released weights evaluated on ImageNet (`evaluate --config.init_from=torchvision:...`): the
  top-1 error their source publishes stands in the paper's column; several runs get a table of
  the config fields that differ between them."""
  runs = []
  for name, init_from, lr in (('tv', 'torchvision:resnet50.IMAGENET1K_V2', 0.1), ('own', '', 0.4)):
    run = tmp_path / name
    run.mkdir()
    config = {'dataset': 'imagenet2012', 'model': 'resnet50', 'init_from': init_from}
    config.update(learning_rate=lr, batch_size=256)
    (run / 'config.json').write_text(json.dumps(config))
    record = {'split': 'eval', 'step': 0, 'top1_err': 0.2, 'top5_err': 0.05}
    (run / 'metrics.jsonl').write_text(json.dumps(record) + '\n')
    runs.append(str(run))
  (row,) = report.run_rows(runs[0])
  assert (row['paper top-1'], row['diff']) == ('19.14', '+0.86')  # 100 - 80.858
  assert row['paper source'] == 'torchvision:resnet50.IMAGENET1K_V2 (published)'
  (row,) = report.run_rows(runs[1])
  assert row['paper source'] == 'He et al. 2015, Table 4 (10-crop)' or row['paper top-1'] != '19.14'
  text = report.report(runs)
  differences = text.split('### Config fields that differ', 1)[1]
  assert '| field | tv | own |' in differences
  assert "| init_from | torchvision:resnet50.IMAGENET1K_V2 | '' |" in differences
  assert '| learning_rate | 0.1 | 0.4 |' in differences
  assert 'batch_size' not in differences  # the same in both


def test_a_study_run_starts_from_the_earlier_run_it_names(tmp_path, monkeypatch):
  """The transfer study's fine-tunes: each command gets --config.init_from=ROOT/<its source>."""
  commands = []
  monkeypatch.setattr(
    study_command.subprocess, 'call', lambda command: commands.append(command) or 0
  )
  path = os.path.join(REPO, 'configs', 'experiments', 'transfer.py')
  study_command.main([f'--study={path}', f'--root={tmp_path}', '--only=pretrain,probe_s1,lpft_s1'])
  init_from = [[a for a in c if a.startswith('--config.init_from=')] for c in commands]
  assert init_from == [
    [],
    [f'--config.init_from={tmp_path}/pretrain'],
    [f'--config.init_from={tmp_path}/probe_s1'],
  ]
