"""Bad input, as a user types it: one line naming what is wrong, exit code 2, no traceback, and
nothing written. Also: every config field has a rule, stale mean images are never reused, and
init_from is strict."""

import glob
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from helpers import REPO, folder_config, tiny, write_image_folder
from PIL import Image

from configs import default
from resnet_jax import config_check
from resnet_jax.data import mean_image
from resnet_jax.models import registry
from resnet_jax.train import checkpoint, experiment, loop

DIGITS = ['-m', 'resnet_jax.main', '--config=configs/digits.py', '--workdir={work}']
EVALUATE = ['-m', 'resnet_jax.evaluate', '--config=configs/digits.py', '--workdir={work}']
FOLDER = [*DIGITS, '--config.dataset=folder', '--config.eval_split=test']
FOLDER_SMALL = ['--config.image_size=16', '--config.eval_resize=16', '--config.batch_size=8']

# (name, argv after `python`, text the last line must contain)
CASES = [
  ('misspelled field', [*DIGITS, '--config.modle=resnet18'], 'did you mean --config.model?'),
  ('not a number', [*DIGITS, '--config.batch_size=abc'], 'config.batch_size'),
  ('zero image size', [*DIGITS, '--config.image_size=0'], '--config.image_size=0'),
  ('zero epochs', [*DIGITS, '--config.num_epochs=0'], '--config.num_epochs=0'),
  ('zero steps', [*DIGITS, '--config.num_train_steps=0'], '--config.num_train_steps=0'),
  ('negative rate', [*DIGITS, '--config.learning_rate=-1'], '--config.learning_rate=-1'),
  ('unknown protocol', [*DIGITS, '--config.eval_mode=5crop'], "--config.eval_mode='5crop'"),
  ('unknown schedule', [*DIGITS, '--config.schedule=linear'], "--config.schedule='linear'"),
  ('unknown model', [*DIGITS, '--config.model=resnet19'], "--config.model='resnet19'"),
  ('unknown shortcut', [*DIGITS, '--config.shortcut=D'], "--config.shortcut='D'"),
  (
    'groups on basic blocks',
    [*DIGITS, '--config.groups=32'],
    'cifar_resnet20 is built of blocks without a grouped 3x3 (BasicBlock): they have no groups',
  ),
  ('negative width', [*DIGITS, '--config.width_per_group=-4'], '--config.width_per_group=-4'),
  (
    'two dilation flags',
    [*DIGITS, '--config.model=resnet50', '--config.replace_stride_with_dilation=(True,True)'],
    'a tuple of 3 True/False values',
  ),
  ('unknown norm', [*DIGITS, '--config.norm=layer'], "--config.norm='layer'"),
  ('group norm of 32 groups', [*DIGITS, '--config.norm=group'], 'do not split into 32 groups'),
  (
    'group norm across devices',
    [*DIGITS, '--config.norm=group', '--config.norm_groups=16', '--config.bn_group_size=0'],
    'has none to share',
  ),
  (
    'frozen norms at zero',
    [*DIGITS, '--config.norm=frozen_batch', '--config.zero_init_residual=True'],
    'freeze every block at the identity',
  ),
  ('deep stem on cifar', [*DIGITS, '--config.deep_stem=True'], 'has the CIFAR 3x3 stem'),
  (
    'stem width without it',
    [*DIGITS, '--config.model=resnet50', '--config.stem_width=16'],
    'stem_width sets the deep stem',
  ),
  ('avg_down with option A', [*DIGITS, '--config.avg_down=True'], 'average-pool shortcut'),
  (
    'stochastic depth without shortcuts',
    [*DIGITS, '--config.model=cifar_plain20', '--config.drop_path_rate=0.1'],
    'no shortcuts',
  ),
  (
    'dropout on a resnet',
    [*DIGITS, '--config.dropout=0.2'],
    '--config.dropout=0.2 with --config.model=cifar_resnet20: cifar_resnet20 has no dropout',
  ),
  (
    'resnet option on vgg',
    [*DIGITS, '--config.model=vgg11', '--config.norm=group'],
    'vgg11 is not a ResNet: it has no norm',
  ),
  (
    'scanned vgg',
    [*DIGITS, '--config.model=vgg11', '--config.scan_blocks=True'],
    '--config.scan_blocks=True with --config.model=vgg11',
  ),
  ('vgg on 16 pixels', [*DIGITS, '--config.model=vgg11'], 'vgg11 needs images of at least 32'),
  (
    'dense alexnet on small images',
    [
      *(*DIGITS, '--config.model=alexnet', '--config.image_size=64', '--config.eval_resize=64'),
      '--config.eval_mode=multiscale',
    ],
    'needs images of at least 223 pixels',
  ),
  ('batch vs devices', [*DIGITS, '--config.batch_size=60'], 'multiple of the 8 devices'),
  ('momentum above 1', [*DIGITS, '--config.momentum=1.5'], '--config.momentum=1.5'),
  ('smoothing above 1', [*DIGITS, '--config.label_smoothing=2.0'], '--config.label_smoothing'),
  ('reversed range', [*DIGITS, '--config.scale_range=(480,256)'], '--config.scale_range'),
  ('unknown dtype', [*DIGITS, '--config.half_dtype=float8'], "--config.half_dtype='float8'"),
  ('unknown parallelism', [*DIGITS, '--config.parallelism=dp'], "--config.parallelism='dp'"),
  ('no steps in flight', [*DIGITS, '--config.steps_in_flight=0'], '--config.steps_in_flight=0'),
  ('heartbeat vs stale', [*DIGITS, '--config.lock_heartbeat_seconds=500'], 'heartbeat_seconds'),
  (
    'missing config file',
    ['-m', 'resnet_jax.main', '--config=configs/nope.py', '--workdir=x'],
    'configs/nope.py',
  ),
  (
    'unknown study run',
    [
      '-m',
      'resnet_jax.main',
      '--workdir={work}',
      '--config=configs/experiments/digits_degradation.py:plain21',
    ],
    'plain21',
  ),
  (
    'bad recipe argument',
    ['-m', 'resnet_jax.main', '--config=configs/cifar10.py:abc', '--workdir={work}'],
    'cifar10.py:abc',
  ),
  ('unknown TFDS name', [*DIGITS, '--config.dataset=imagenet2013'], 'imagenet2012'),
  ('folder without data_dir', [*DIGITS, '--config.dataset=folder'], 'data_dir'),
  (
    'test class not in train',
    [*FOLDER, '--config.data_dir={extra_class}', *FOLDER_SMALL],
    "['class_9']",
  ),
  (
    'empty training class',
    [*FOLDER, '--config.data_dir={empty_class}', *FOLDER_SMALL],
    "['class_1']",
  ),
  (
    'corrupt JPEG',
    [
      *FOLDER,
      '--config.data_dir={corrupt}',
      *FOLDER_SMALL,
      '--config.pad=2',
      '--config.num_train_steps=2',
      '--config.train_augment=pad_crop',
    ],
    '1.jpg',
  ),
  ('init_from another net', [*DIGITS, '--config.init_from={resnet8_weights}'], 'do not fit'),
  ('init_from nowhere', [*DIGITS, '--config.init_from={work}_nothing'], '_nothing'),
  (
    'averaged weights of converted weights',
    [*DIGITS, '--config.init_from={resnet8_weights}', '--config.init_from_ema=True'],
    'not a run workdir',
  ),
  (
    'more repeats than rows in the batch',
    [*DIGITS, '--config.repeated_augmentation=65'],
    'must be at most batch_size=64',
  ),
  ('unknown policy', [*DIGITS, '--config.augment_policy=augmix'], "augment_policy='augmix'"),
  (
    'a RandAugment field without RandAugment',
    [*DIGITS, '--config.randaugment_magnitude=5'],
    "needs --config.augment_policy='randaugment'",
  ),
  (
    "a timm RandAugment field without timm's RandAugment",
    [*DIGITS, '--config.augment_policy=randaugment', '--config.randaugment_magnitude_std=0.5'],
    "randaugment_magnitude_std needs --config.augment_policy='randaugment_timm'",
  ),
  (
    "a level above timm's 10",
    [*DIGITS, '--config.augment_policy=randaugment_timm', '--config.randaugment_magnitude=12'],
    "must be a level of timm's 0 to 10",
  ),
  ('unknown optimizer', [*DIGITS, '--config.optimizer=adam'], "--config.optimizer='adam'"),
  (
    'accumulation that does not divide the batch',
    [*DIGITS, '--config.grad_accum_steps=3'],
    "must divide each device's 8 rows of batch_size=64 (8 devices): one of [1, 2, 4, 8]",
  ),
  (
    'best by an average that is off',
    [*DIGITS, '--config.best_metric=ema_top1_err'],
    'set --config.ema_decay > 0',
  ),
  ('an average that never moves', [*DIGITS, '--config.ema_decay=1.0'], 'below 1'),
  ('mixing odds without mixing', [*DIGITS, '--config.mix_prob=0.5'], 'mixup_alpha or cutmix'),
  ('evaluate an empty workdir', EVALUATE, 'No checkpoints in'),
  ('evaluate a bad protocol', [*EVALUATE, '--config.eval_mode=best'], "--config.eval_mode='best'"),
  (
    'convert a missing file',
    ['-m', 'resnet_jax.convert', '--torchvision={work}.pth', '--model=resnet18', '--out={work}'],
    '.pth: no such file',
  ),
  (
    'convert in no direction',
    ['-m', 'resnet_jax.convert', '--model=resnet18', '--weights={work}'],
    'convert: give --torchvision=FILE.pth --model=NAME --out=DIR',
  ),
  (
    'export weights that are not there',
    ['-m', 'resnet_jax.convert', '--weights={work}', '--to_torchvision={work}.pth'],
    'no such directory',
  ),
  (
    'convert a damaged file',
    ['-m', 'resnet_jax.convert', '--torchvision={damaged_pth}', '--model=resnet18', '--out={work}'],
    # Read without torch (resnet_jax/torch_files.py), with or without it installed.
    'damaged.pth: not a readable torch file',
  ),
  ('summary of no model', ['-m', 'resnet_jax.summary', 'resnet19'], 'resnet19'),
  ('summary at size 0', ['-m', 'resnet_jax.summary', 'resnet18', '--image-size=0'], 'size 0'),
  ('summary at size -5', ['-m', 'resnet_jax.summary', 'resnet18', '--image-size=-5'], 'size -5'),
  (
    'summary of vgg at 16 pixels',
    ['-m', 'resnet_jax.summary', 'vgg16', '--image-size=16'],
    '--image-size 16: vgg16 needs at least 32',
  ),
  (
    'summary of unknown memory',
    ['-m', 'resnet_jax.summary', 'resnet18', '--memory=lots'],
    "--memory=lots: 'lots' is not a memory size such as 80GB",
  ),
  (
    'write a torch file without torch',  # torch made unimportable, as on a machine that lacks it
    [
      '-c',
      'import runpy, sys; sys.modules["torch"] = None; '
      'runpy.run_module("resnet_jax.convert", run_name="__main__")',
      '--weights={resnet8_weights}',
      '--to_torchvision={work}',
    ],
    'pip install torch==2.13.0',
  ),
  ('workdir is a file', [*DIGITS[:-1], '--workdir={a_file}'], 'a_file is a file'),
  ('export without out', ['-m', 'resnet_jax.export', '--workdir={root}'], 'and --out=FILE.onnx'),
  (
    'export weights without model',
    ['-m', 'resnet_jax.export', '--weights={resnet8_weights}', '--out={work}'],
    'has no config.json: give the net with --model=NAME',
  ),
  (
    'export weights as another net',
    ['-m', 'resnet_jax.export', '--weights={resnet8_weights}', '--model=resnet18', '--out={work}'],
    'The weights do not fit resnet18',
  ),
  (
    'export an unknown net',
    ['-m', 'resnet_jax.export', '--weights={resnet8_weights}', '--model=vgg12', '--out={work}'],
    "--config.model='vgg12': Unknown model",
  ),
  (
    'export weights as vgg',
    ['-m', 'resnet_jax.export', '--weights={resnet8_weights}', '--model=vgg11', '--out={work}'],
    "no 'classifier_6' layer: they are not a vgg11",
  ),
  (
    'export at size 0',
    [
      *('-m', 'resnet_jax.export', '--weights={resnet8_weights}', '--model=cifar_resnet8'),
      *('--image_size=0', '--out={work}'),
    ],
    '--image_size=0: must be a positive integer',
  ),
  ('plot a folder without metrics', ['-m', 'resnet_jax.plot', '{root}'], 'no metrics.jsonl'),
  (
    'mean_image bad size',
    ['-m', 'resnet_jax.mean_image', '--config=configs/digits.py', '--config.image_size=-3'],
    '--config.image_size=-3',
  ),
  (
    'benchmark end to end with too few steps',
    ['-m', 'resnet_jax.benchmark', '--config=configs/fake.py', '--mode=end_to_end', '--steps=2'],
    'end_to_end needs at least 4',
  ),
  (
    'multi-scale buckets without squares',
    [*DIGITS, '--config.eval_mode=multiscale', '--config.multiscale_aspects=(1.25, 1.5)'],
    'must be increasing from 1.0',
  ),
  (
    'input beyond memory',  # 6 TiB of input images: more than any machine that runs this
    [
      '-m',
      'resnet_jax.benchmark',
      '--config=configs/fake.py',
      '--mode=eval',
      '--config.model=cifar_resnet8',
      '--config.batch_size=65536',
      '--config.image_size=1024',
      '--config.eval_resize=1024',
      '--config.scale_range=(1024, 1100)',
    ],
    'Not enough memory for the train input: --config.batch_size=65536 at '
    '--config.image_size=1024 take about',
  ),
  (
    'out of memory where it is met',  # a real allocation that fails: 1 PiB
    [
      '-c',
      'import numpy as np; from resnet_jax import cli; '
      'cli.run(lambda argv: np.ones(2**50, np.uint8))',
    ],
    'out of memory (Unable to allocate 1.00 PiB',
  ),
  (
    'benchmark zero batch',
    ['-m', 'resnet_jax.benchmark', '--config=configs/fake.py', '--config.batch_size=0'],
    '--config.batch_size=0',
  ),
  (
    'freeze pattern that names nothing',
    [*DIGITS, '--config.freeze=layer4'],
    "'layer4' names no tensor of cifar_resnet20 (its layers: bn1, conv1, fc, layer1_0,",
  ),
  (
    'lr multiplier pattern that names nothing',
    [*DIGITS, '--config.lr_mults=head=10'],
    "'head' names no tensor of cifar_resnet20",
  ),
  (
    'lr multiplier without a value',
    [*DIGITS, '--config.lr_mults=fc'],
    "--config.lr_mults='fc': 'fc' is not PATTERN=MULTIPLIER",
  ),
  (
    'negative lr multiplier',
    [*DIGITS, '--config.lr_mults=fc=-1'],
    "'fc=-1' is not PATTERN=MULTIPLIER with a finite multiplier >= 0",
  ),
  ('freeze not a regex', [*DIGITS, '--config.freeze=layer1['], "'layer1[' is not a regular"),
  (
    'freeze part of a scanned stage',
    [*DIGITS, '--config.scan_blocks=True', '--config.freeze=layer1_1/'],
    'freeze names some of the blocks stacked in layer1_scan/',
  ),
  ('layer decay above 1', [*DIGITS, '--config.layer_decay=1.5'], '--config.layer_decay=1.5'),
  (
    'unknown weights name',
    [*DIGITS, '--config.init_from=torchvision:resnet50.IMAGENET1K_V3'],
    "Unknown weights 'torchvision:resnet50.IMAGENET1K_V3' (closest: torchvision:resnet50.",
  ),
  ('a class subset of one class', [*DIGITS, '--config.class_subset=5'], 'two or more distinct'),
  (
    'weights of another net',
    [*DIGITS, '--config.init_from=torchvision:resnet50.IMAGENET1K_V2'],
    'are weights of resnet50, not of --config.model=cifar_resnet20',
  ),
  (
    'batch larger than the dataset',  # digits' training split has 1,437 examples
    [*DIGITS, '--config.batch_size=2048'],
    'is more than the 1,437 training examples of digits: not one batch can be formed. Lower '
    '--config.batch_size to at most 1,432 (a multiple of the 8 devices)',
  ),
  (
    'multi-scale sizes beyond any memory',
    [
      *(*DIGITS, '--config.eval_mode=multiscale', '--config.multiscale_sizes=(32,8192)'),
      '--config.eval_batch_size=4096',  # 36 TiB with the views at 8192: beyond any machine
    ],
    'Not enough memory for the eval input: 4096 test examples per process, each views at sizes '
    '(32, 8192), up to 8192x12288',
  ),
  (
    'dropout at its default value on a resnet',  # set, though 0.5 is the field's default
    [*DIGITS, '--config.dropout=0.5'],
    '--config.dropout=0.5 with --config.model=cifar_resnet20: cifar_resnet20 has no dropout',
  ),
  (
    'norm groups without group norm',
    [*DIGITS, '--config.norm_groups=32'],
    "--config.norm_groups=32 is GroupNorm's number of groups: it needs --config.norm='group'",
  ),
  (
    'mixing odds at their default without mixing',
    [*DIGITS, '--config.mix_prob=1.0'],
    'mixup_alpha or cutmix',
  ),
  (
    'a TFDS dataset with no network',  # every connection refused (see ENV); data_dir in {work}
    [*DIGITS, '--config.dataset=cifar10', '--config.data_dir={work}/tfds'],
    'could not be downloaded (cannot reach 127.0.0.1:9 to download https://www.cs.toronto.edu/'
    '~kriz/cifar-10-binary.tar.gz: [Errno 111] Connection refused). On a machine with internet '
    'run `tfds build cifar10 --data_dir=DIR`',
  ),
  (
    'export to a directory',
    ['-m', 'resnet_jax.export', '--weights={resnet8_weights}', '--out={root}'],
    'is a directory: give a file path, such as',
  ),
  (
    'export below a file',
    ['-m', 'resnet_jax.export', '--weights={resnet8_weights}', '--out={a_file}/m.onnx'],
    'a_file is a file, not a directory: give another path.',
  ),
  (
    'report of a run with no records',
    ['-m', 'resnet_jax.report', '{empty_run}'],
    'metrics.jsonl has no records yet',
  ),
  (
    'auxiliary classifiers on a resnet',  # set at its default value: still googlenet's alone
    [*DIGITS, '--config.aux_loss_weight=0.3'],
    '--config.aux_loss_weight=0.3 with --config.model=cifar_resnet20: cifar_resnet20 has no '
    "aux_logits: auxiliary classifiers and torchvision's input transform are googlenet's.",
  ),
  (
    "googlenet's released weights without their input transform",
    [*DIGITS, '--config.model=googlenet', '--config.init_from=torchvision:googlenet.IMAGENET1K_V1'],
    'were trained on inputs that need --config.transform_input=True '
    "--config.normalization='channel_mean_std': set them.",
  ),
  (
    'attention in a pre-activation net',
    [*DIGITS, '--config.model=cifar_preact_resnet20', '--config.attention=se'],
    "channel attention (SE, ECA) sits after a block's last norm, which a pre-activation block "
    'does not have',
  ),
  ('unknown attention', [*DIGITS, '--config.attention=cbam'], "--config.attention='cbam'"),
  (
    'a net of your own that is not there',
    [*DIGITS, '--config.model=my_lab.nets:tiny'],
    "Cannot import 'my_lab.nets' for model 'my_lab.nets:tiny' (No module named 'my_lab')",
  ),
  (
    "BiT's released weights without their inputs",
    [
      *DIGITS,
      '--config.model=bit_r50x1',
      '--config.image_size=32',
      '--config.eval_resize=32',
      '--config.init_from=bit:M-R50x1',
    ],
    '--config.channel_mean=(127.5, 127.5, 127.5) --config.channel_std=(127.5, 127.5, 127.5)',
  ),
  ('plot of a run with no records', ['-m', 'resnet_jax.plot', '{empty_run}'], 'has no records'),
  ('report of a run without its config', ['-m', 'resnet_jax.report', '{no_config}'], 'no config'),
  (
    'plot into a directory',
    ['-m', 'resnet_jax.plot', '{no_config}', '--out={root}'],
    'is a directory: give a file path, such as',
  ),
]
# Extra environment of a case: no network (every connection goes to a closed local port).
ENV = {'a TFDS dataset with no network': {'https_proxy': 'http://127.0.0.1:9'}}


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
  root = tmp_path_factory.mktemp('bad_inputs')
  extra = write_image_folder(root / 'extra_class', classes=2)
  shutil.copytree(os.path.join(extra, 'test', 'class_0'), os.path.join(extra, 'test', 'class_9'))
  empty = write_image_folder(root / 'empty_class', classes=2)
  for name in os.listdir(os.path.join(empty, 'train', 'class_1')):
    os.remove(os.path.join(empty, 'train', 'class_1', name))
  corrupt = write_image_folder(root / 'corrupt', classes=2, train_per_class=4)
  bad = os.path.join(corrupt, 'train', 'class_1', '1.jpg')
  with open(bad, 'r+b') as f:
    f.truncate(200)
  (root / 'a_file').write_text('not a workdir')
  damaged = root / 'damaged.pth'
  damaged.write_bytes(b'PK\x03\x04 not really a zip')
  (root / 'empty_run').mkdir()
  (root / 'empty_run' / 'config.json').write_text('{}')
  (root / 'empty_run' / 'metrics.jsonl').write_text('')
  (root / 'no_config').mkdir()
  (root / 'no_config' / 'metrics.jsonl').write_text('{"step": 4, "split": "train"}\n')
  weights = str(root / 'resnet8')
  model = registry.get_model('cifar_resnet8', num_classes=10)
  checkpoint.save_variables(
    weights, model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False)
  )
  return dict(
    extra_class=extra,
    empty_class=empty,
    corrupt=corrupt,
    damaged_pth=str(damaged),
    resnet8_weights=weights,
    root=str(root),
    a_file=str(root / 'a_file'),
    empty_run=str(root / 'empty_run'),
    no_config=str(root / 'no_config'),
  )


def run_case(case, inputs, tmp_path):
  name, argv, expected = case
  work = str(tmp_path / re.sub(r'\W+', '_', name))
  args = [a.format(work=work, **inputs) for a in argv]
  env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS='--xla_force_host_platform_device_count=8')
  env.update(ENV.get(name, {}))
  result = subprocess.run(
    [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
  )
  return name, work, expected, result


@pytest.mark.slow
def test_bad_inputs_end_in_one_line_and_write_nothing(inputs, tmp_path):
  assert len(CASES) >= 25
  root_before = sorted(os.listdir(inputs['root']))
  with ThreadPoolExecutor(3) as pool:
    results = list(pool.map(lambda c: run_case(c, inputs, tmp_path), CASES))
  failures = []  # every case that fails, not only the first
  for name, work, expected, result in results:
    lines = result.stderr.strip().splitlines() or ['']
    checks = {
      'exit code 2': result.returncode == 2,
      'no traceback': 'Traceback' not in result.stderr,
      'the last line': lines[-1].startswith('error: ') and expected in lines[-1],
      # At most the start-up line before it (TFDS: one warning of its own as it gives up).
      'line count': len(lines) <= (3 if name in ENV else 2),
      'nothing written': not os.path.exists(work),
    }
    failed = [what for what, ok in checks.items() if not ok]
    if failed:
      failures.append(
        f'{name} ({", ".join(failed)}): rc={result.returncode}\n{result.stderr[-2000:]}'
      )
  assert not failures, '\n\n'.join(failures)
  assert not os.path.exists(os.path.join(inputs['extra_class'], 'mean_images'))
  assert sorted(os.listdir(inputs['root'])) == root_before  # no output, no temporary file


def test_readme_common_errors_are_what_the_commands_print():
  """Every row of the README's "Common errors" table is a case above, with its message."""
  with open(os.path.join(REPO, 'README.md')) as f:
    text = f.read()
  section = text.split('## Common errors', 1)[1].split('\n## ', 1)[0]
  rows = re.findall(r'^\| `([^`]+)` \| (.+?) \|$', section, flags=re.M)
  assert len(rows) >= 8
  by_flag = {argv[-1]: expected for _, argv, expected in CASES}  # each case's own argument
  for typed, message in rows:
    assert typed in by_flag, f'README row {typed!r} is not a case of this test'
    assert by_flag[typed] in message, f'README row {typed!r}: {by_flag[typed]!r} not in {message!r}'


def test_every_config_field_has_a_rule_and_every_recipe_passes():
  assert set(config_check.RULES) == set(default.get_config())
  for path in glob.glob(os.path.join(REPO, 'configs', '*.py')):
    if path.endswith('__init__.py'):
      continue
    module = importlib.import_module(f'configs.{os.path.basename(path)[:-3]}')
    config_check.check(module.get_config(), num_devices=8)
  studies = glob.glob(os.path.join(REPO, 'configs', 'experiments', '*.py'))
  for path in studies:
    module = importlib.import_module(f'configs.experiments.{os.path.basename(path)[:-3]}')
    for run in getattr(module, 'RUNS', ()):
      config_check.check(module.get_config(run), num_devices=8)
  recipes = importlib.import_module('configs.experiments.recipes')
  named = {recipes.get_config(run).recipe for run in recipes.RUNS} - {''}
  published = {'torchvision_v2', 'goyal_8k', 'mlperf_lars', 'rsb_a1', 'rsb_a2', 'rsb_a3'}
  assert named == published  # each recipe is a study run


def test_a_changed_dataset_never_reuses_a_stale_mean_image(tmp_path):
  root = write_image_folder(tmp_path / 'images', classes=2)
  config = folder_config(tmp_path, root, mean_image_path='')
  first = mean_image.load_or_compute(config)
  cached = os.listdir(os.path.join(root, 'mean_images'))
  assert len(cached) == 1
  for dirpath, _, files in os.walk(os.path.join(root, 'train')):
    for name in files:  # the same files, now plain light grey
      Image.new('RGB', (56, 40), (240, 240, 240)).save(os.path.join(dirpath, name))
  second = mean_image.load_or_compute(config)
  np.testing.assert_allclose(second, 240.0, atol=1.0)
  assert abs(float(first.mean()) - 240.0) > 20
  # An explicit path is checked the same way: its stored key no longer matches.
  config.mean_image_path = str(tmp_path / 'explicit.npy')
  mean_image.load_or_compute(config)
  for dirpath, _, files in os.walk(os.path.join(root, 'train')):
    for name in files:
      Image.new('RGB', (56, 40), (10, 10, 10)).save(os.path.join(dirpath, name))
  np.testing.assert_allclose(mean_image.load_or_compute(config), 10.0, atol=1.0)


@pytest.mark.slow
def test_init_from_is_strict_unless_told_what_may_stay_fresh(tmp_path):
  source = str(tmp_path / 'source')
  loop.train_and_evaluate(tiny(tmp_path, num_train_steps=2, eval_every=2), source)
  deeper = tiny(tmp_path, model='cifar_resnet14', num_train_steps=1, init_from=source)
  with pytest.raises(checkpoint.CheckpointError, match=r'do not fit this model: layer1_1/'):
    experiment.Experiment(deeper, str(tmp_path / 'a')).initial_state()
  deeper.init_from_skip = 'layer1_1,layer2_1,layer3_1'  # the blocks resnet8 does not have
  run = experiment.Experiment(deeper, str(tmp_path / 'b'))
  state = run.initial_state()
  run.checkpointer.close()
  src_run = experiment.Experiment(tiny(tmp_path), source)
  src = experiment.flat_params(src_run.initial_state())
  src_run.checkpointer.close()
  np.testing.assert_array_equal(
    experiment.flat_params(state)['layer2_0/conv1/kernel'], src['layer2_0/conv1/kernel']
  )


@pytest.mark.slow  # trains two runs through the command line
def test_init_from_ema_takes_the_average_and_refuses_a_run_without_one(tmp_path):
  plain, averaged = str(tmp_path / 'plain'), str(tmp_path / 'averaged')
  loop.train_and_evaluate(tiny(tmp_path, num_train_steps=2, eval_every=2), plain)
  loop.train_and_evaluate(tiny(tmp_path, num_train_steps=4, eval_every=4, ema_decay=0.5), averaged)
  config = tiny(tmp_path, num_train_steps=1, init_from=plain, init_from_ema=True)
  with pytest.raises(checkpoint.CheckpointError, match=r'has no averaged weights \(its run had'):
    experiment.Experiment(config, str(tmp_path / 'a')).initial_state()
  config.init_from = averaged
  run = experiment.Experiment(config, str(tmp_path / 'b'))
  started = experiment.flat_params(run.initial_state())
  run.checkpointer.close()
  source = experiment.Experiment(tiny(tmp_path, ema_decay=0.5), averaged)
  saved = source.data_parallel.host(source.initial_state())
  source.checkpointer.close()
  average = traverse_util.flatten_dict(saved.ema['params'], sep='/')
  raw = experiment.flat_params(saved)
  for key, value in average.items():
    np.testing.assert_array_equal(started[key], value, err_msg=key)
  assert any(not np.array_equal(average[k], raw[k]) for k in raw)  # the two differ
