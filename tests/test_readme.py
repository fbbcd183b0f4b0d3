"""The README is executable: every command of its ```bash blocks is run as written, or dry-run, or
skipped for a stated reason. A command no rule knows fails the test, so the test follows the
README: a new command must be given a rule here.

As written means: placeholders (DIR, DATA_DIR, /tmp/...) become temporary paths, and commands that
need ImageNet-scale data or time get a tiny image folder and fewer steps through appended
``--config.`` flags (never by editing what is there). Commands run in README order, so later
ones use what earlier ones made (evaluate and plot read the digits run). The commands that read or
write a torch .pth run in a test of their own, marked torch, after the digits run they convert.
"""

import os
import re
import socket
import subprocess
import sys
import time

import pytest
from helpers import REPO, write_image_folder, write_imagenet_archives

from resnet_jax.train import metrics

pytestmark = pytest.mark.slow

README = os.path.join(REPO, 'README.md')
# A Python absl INFO line (orbax's, JAX's), not the C++ ones TensorFlow prints at import.
ABSL_INFO = re.compile(r'^I\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \w+\.py:\d+\]', re.M)
SHORT_DIGITS = [
  '--config.num_train_steps=8',
  '--config.eval_every=8',
  '--config.checkpoint_every=8',
  '--config.log_every=4',
]
PHOTOS_FEWER = ["--config.photos_num_examples='(64,32)'"]
SHORT_PHOTOS = [
  *PHOTOS_FEWER,
  '--config.num_train_steps=4',
  '--config.eval_every=4',
  '--config.checkpoint_every=4',
  '--config.log_every=2',
]
TINY_IMAGENET = [  # a 3-class JPEG folder at 32 px stands in for ImageNet
  '--config.dataset=folder',
  '--config.data_dir={data}',
  '--config.eval_split=test',
  '--config.image_size=32',
  '--config.eval_resize=36',
  "--config.scale_range='(36,48)'",
  '--config.batch_size=8',
  '--config.num_train_steps=2',
  '--config.eval_every=2',
  '--config.mean_image_path={tmp}/mean.npy',
]

# (pattern, what to do): 'run' (with flags appended), 'dry' (DRY_RUN=1), or a reason to skip.
RULES = [
  (r'^pip install', 'skip: installs this package; CI installs it this way before the tests'),
  (r'^python -m pytest', 'skip: the test suite itself'),
  # ImageNet's own archives in miniature (helpers.write_imagenet_archives) stand in for the real.
  (r'^python -m resnet_jax\.prepare --dataset=imagenet2012', ('run', [])),
  (r'^gsutil ', 'skip: needs a real cloud bucket and credentials'),
  (
    r'^python -m resnet_jax\.(study --study=configs/experiments/digits_degradation|report /tmp/degr'
    r'|plot /tmp/degr)',
    'skip: the 22-minute digits study (tests/test_study_report.py runs a shortened study)',
  ),
  (
    r'^python -m resnet_jax\.(study --study=configs/experiments/modern_vs_paper|report /tmp/modern'
    r'|plot /tmp/modern)',
    'skip: the 15-minute study whose table the README shows (its parts are tested one by one)',
  ),
  (
    r'^python -m resnet_jax\.(study --study=configs/experiments/transfer|report /tmp/transfer'
    r'|plot /tmp/transfer|evaluate --fewshot --config=configs/experiments/transfer)',
    'skip: the 8-minute study whose tables the README shows (tests/test_param_groups.py, '
    'test_fewshot.py and test_study_report.py test its parts)',
  ),
  (r'^python -m resnet_jax\.main --config=configs/digits\.py', ('run', SHORT_DIGITS)),
  (r'^python -m resnet_jax\.main --config=configs/photos\.py', ('run', SHORT_PHOTOS)),
  # Multi-scale compiles an eval step per size and aspect bucket: two sizes here, five in the
  # README's run (tests/test_multiscale.py and test_tfds_sources.py test the protocol itself).
  (
    r'^python -m resnet_jax\.evaluate --config=configs/photos\.py .*multiscale',
    ('run', [*PHOTOS_FEWER, "--config.multiscale_sizes='(32,37)'"]),
  ),
  (r'^python -m resnet_jax\.evaluate --config=configs/photos\.py', ('run', PHOTOS_FEWER)),
  (r'^python -m resnet_jax\.report /tmp/photos', ('run', [])),
  # The committed figure is left alone: the plot goes to the test's folder (argparse: last wins).
  (r'^python -m resnet_jax\.plot /tmp/photos', ('run', ['--out={tmp}/photos.png'])),
  (r'^python -m resnet_jax\.main --config=configs/r50\.py .*init_from', ('run', TINY_IMAGENET)),
  (
    r'^python -m resnet_jax\.evaluate .*init_from=torchvision:',
    'skip: downloads torchvision weights and needs ImageNet (tests/test_pretrained.py serves '
    'released files from 127.0.0.1)',
  ),
  (
    r'^python -m resnet_jax\.main --config=configs/recipes/(bit_hyperrule|timm_finetune)\.py',
    'skip: downloads released weights and a dataset (tests/test_transfer_recipes.py checks the '
    'recipes and runs one on the bundled photos)',
  ),
  (r'^python -m resnet_jax\.(evaluate|plot|summary|convert|export) ', ('run', [])),
  (r'^python -m resnet_jax\.report /tmp/digits ', ('run', [])),
  (r'^python -m resnet_jax\.report gs://', 'skip: reads runs of a paper study on a bucket'),
  (
    r'^python -m resnet_jax\.study --study=configs/experiments/recipes',
    'skip: ImageNet-scale recipes on a bucket (each recipe config passes config_check in tests)',
  ),
  (
    r'^python -m resnet_jax\.study --study=configs/experiments/(cifar10|imagenet)',
    'skip: needs CIFAR-10 or ImageNet and accelerators (tests/test_study_report.py runs a study)',
  ),
  (
    r'^python -m resnet_jax\.benchmark ',
    ('run', ['--config.image_size=32', '--config.batch_size=8', '--steps=2']),
  ),
  (r'^\./launch\.sh local ', ('run', SHORT_DIGITS)),
  (r'^(SLURM_PARTITION=\S+ )?\./launch\.sh (tpu|tpu-logs|tpu-delete|slurm) ', ('dry', [])),
]


def readme_commands() -> list[str]:
  with open(README) as f:
    text = f.read()
  commands = []
  for block in re.findall(r'```bash\n(.*?)```', text, flags=re.S):
    for line in block.replace('\\\n', ' ').splitlines():
      line = re.sub(r'\s+#\s.*$', '', line).strip()  # a trailing comment
      commands += [' '.join(part.split()) for part in line.split(' && ') if part.strip()]
  return commands


def readme_python_blocks() -> list[str]:
  with open(README) as f:
    return re.findall(r'```python\n(.*?)```', f.read(), flags=re.S)


def rule_for(command: str):
  for pattern, action in RULES:
    if re.search(pattern, command):
      return action
  raise AssertionError(f'README command with no rule in tests/test_readme.py: {command}')


def localise(command: str, tmp) -> str:
  """README placeholders -> this test's temporary paths."""
  command = command.replace('/tmp/', f'{tmp}/').replace('resnet50.pth', f'{tmp}/resnet50.pth')
  return re.sub(r'\b(DATA_DIR|DIR)\b', lambda m: f'{tmp}/{m[1].lower()}', command)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_every_readme_command_has_a_rule():
  commands = readme_commands()
  assert len(commands) >= 14
  for command in commands:
    rule_for(command)


# The README's commands that read or write a torch .pth: they run in their own test, marked torch
# (CI runs it once torch is installed), after the digits run they convert.
TORCH_COMMANDS = re.compile(r'resnet_jax\.convert |init_from=/tmp/r50_tv')
DIGITS_RUN = 'python -m resnet_jax.main --config=configs/digits.py --workdir=/tmp/digits'


def one_device_env() -> dict:
  """One device, as on a CPU user's machine (the multi-device and multi-process paths have their
  own tests); eight simulated devices made each step here ~4x slower on two cores."""
  return dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS='--xla_force_host_platform_device_count=1')


def run_readme_commands(tmp_path, wanted) -> tuple[list, list, list]:
  """Runs the README's commands that ``wanted`` picks, in README order, each by its rule; returns
  (ran, dry-run, skipped) as ((line, result) ..., (line, result) ..., (command, why) ...)."""
  data = write_image_folder(tmp_path / 'images', size=(48, 64))
  write_imagenet_archives(str(tmp_path / 'data_dir' / 'downloads' / 'manual'))
  env = one_device_env()
  ran, dry, skipped = [], [], []
  for command in readme_commands():
    action = rule_for(command)
    if not wanted(command):
      action = 'skip: run by the other README test'
    if isinstance(action, str):
      skipped.append((command, action))
      continue
    kind, extra = action
    line = localise(command, tmp_path)
    line += ''.join(f' {flag.format(data=data, tmp=tmp_path)}' for flag in extra)
    run_env = dict(env, PORT=str(free_port()))
    if kind == 'dry':
      run_env['DRY_RUN'] = '1'
    if line.startswith('./launch.sh local'):
      run_env.pop('XLA_FLAGS')  # launch.sh gives each process its own devices: one here, too
      run_env['DEVICES_PER_PROCESS'] = '1'
    start = time.perf_counter()
    result = subprocess.run(
      ['bash', '-c', line], cwd=REPO, env=run_env, capture_output=True, text=True, timeout=600
    )
    print(f'{time.perf_counter() - start:6.1f} s  {command}')
    assert result.returncode == 0, f'{line}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}'
    assert 'Traceback' not in result.stderr, line
    assert not ABSL_INFO.search(result.stderr), f'{line}: absl INFO lines on stderr'
    (dry if kind == 'dry' else ran).append((line, result))
  print('\n'.join(f'skipped: {c} ({why})' for c, why in skipped))
  return ran, dry, skipped


@pytest.mark.torch
def test_readme_torch_commands_run_as_written(tmp_path):
  """convert from a torchvision .pth, the fine-tune from its output, and the digits run's weights
  back to torchvision's state_dict."""
  torch = pytest.importorskip('torch')
  torch_resnet = pytest.importorskip('torch_resnet')

  torch.save(torch_resnet.build('resnet50').state_dict(), tmp_path / 'resnet50.pth')
  ran, _, _ = run_readme_commands(
    tmp_path, lambda command: command == DIGITS_RUN or TORCH_COMMANDS.search(command)
  )
  assert len(ran) == 4  # the digits run, two converts, the fine-tune
  assert os.path.isdir(tmp_path / 'r50_tv')
  assert os.path.isdir(tmp_path / 'dir' / 'checkpoints' / '2')  # the init_from fine-tune ran
  state_dict = torch.load(tmp_path / 'digits' / 'weights.pth', weights_only=True)
  # CIFAR ResNet-20: conv1, bn1 (weight, bias, running mean and var, num_batches_tracked), nine
  # blocks of two convs and two BNs (option A: no projections), fc's weight and bias.
  assert len(state_dict) == 1 + 5 + 9 * (2 + 2 * 5) + 2
  assert state_dict['fc.weight'].shape == (10, 64)


def test_readme_commands_run_as_written(tmp_path):
  ran, dry, _ = run_readme_commands(tmp_path, lambda command: not TORCH_COMMANDS.search(command))
  assert len(ran) >= 8 and len(dry) >= 4
  by_tool = {}  # each tool's commands' output, together
  for line, result in ran:
    tool = line.split()[2] if line.startswith('python') else line
    by_tool[tool] = by_tool.get(tool, '') + result.stdout
  assert '11,689,512' in by_tool['resnet_jax.summary']
  assert 'Largest global batch that fits 16.00 GB per device' in by_tool['resnet_jax.summary']
  assert "3.66 G mult-adds, 18.7% of vgg19's" in by_tool['resnet_jax.summary']
  assert 'logits within' in by_tool['resnet_jax.export']
  assert '; EMA top1_err ' in by_tool['resnet_jax.main']  # the modern digits run's average
  assert os.path.getsize(tmp_path / 'digits' / 'curves.png') > 10_000
  assert os.path.exists(tmp_path / 'digits' / 'eval_10crop.jsonl')
  assert '"fewshot_10shot": ' in by_tool['resnet_jax.evaluate']
  assert '| digits | cifar_resnet20 | center |' in (tmp_path / 'digits' / 'results.md').read_text()
  assert os.path.getsize(tmp_path / 'photos.png') > 10_000
  assert os.path.exists(tmp_path / 'photos' / 'eval_multiscale.jsonl')
  assert os.path.isdir(tmp_path / 'digits_2proc' / 'checkpoints' / '8')  # two processes
  # The fine-tuning block: a linear probe (only the head trained), then a fine-tune of it.
  probe = [r for r in metrics.read(str(tmp_path / 'digits_probe')) if r['split'] == 'eval']
  tuned = [r for r in metrics.read(str(tmp_path / 'digits_tuned')) if r['split'] == 'eval']
  assert probe[-1]['step'] == tuned[-1]['step'] == 8
  env = one_device_env()
  for block in readme_python_blocks():  # after the commands: they read the digits run
    code = localise(block, tmp_path)
    result = subprocess.run(
      [sys.executable, '-c', code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, f'{block}\n{result.stderr[-3000:]}'
    for printed in re.findall(r'print\(.*\)\s+# (\(.*?\))$', block, flags=re.M):
      assert printed in result.stdout, (block, result.stdout)  # the value the comment shows
  assert 'train 12, validation 8 examples' in by_tool['resnet_jax.prepare']
  for line, result in dry:  # the user's training flags reach the command a cluster would run
    if '--config=' in line:
      assert '--config=configs/r50.py' in result.stdout + result.stderr, line
