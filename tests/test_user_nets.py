"""A net defined outside the library, in a module of the user's own, through every command:
trained by ``main``, scored by ``evaluate``, tabled by ``summary``, written by ``export`` and
``convert`` both ways (with torch), named ``package.module:function`` (models/registry.py)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util
from helpers import REPO, tiny_flags

import resnet_jax
from resnet_jax import torch_files
from resnet_jax.train import checkpoint

# A researcher's module: a basic block whose residual branch, after the squeeze-and-excitation
# the net's options give it, is scaled by a learned scalar gate (1 at first), through the block's
# ``attend`` hook; the library is not edited.
THEIR_NETS = """
import flax.linen as nn

from resnet_jax.models.resnet import BasicBlock


class GatedBlock(BasicBlock):
  def attend(self, y):
    return super().attend(y) * self.param('gate', nn.initializers.ones, ()).astype(y.dtype)


def gated_resnet8():
  return dict(
    stage_sizes=(1, 1, 1),
    block_cls=GatedBlock,
    widths=(16, 32, 64),
    stem='cifar',
    shortcut='A',
    attention='se',
  )
"""
NET = 'their_lab.nets:gated_resnet8'
# cifar_resnet8 at 10 classes; the gated net adds one scalar per block and SE modules of 8
# channels: (16 + 1) * 8 + (8 + 1) * 16, (32 + 1) * 8 + (8 + 1) * 32, (64 + 1) * 8 + (8 + 1) * 64.
PARAMS = 75_290 + 3 + 280 + 552 + 1_096


def command(module, *args, env):
  return subprocess.run(
    [sys.executable, '-m', f'resnet_jax.{module}', *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )


@pytest.mark.slow
def test_a_net_of_your_own_goes_through_every_command(tmp_path):
  package = tmp_path / 'src' / 'their_lab'
  package.mkdir(parents=True)
  (package / '__init__.py').write_text('')
  (package / 'nets.py').write_text(THEIR_NETS)
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  env['PYTHONPATH'] = os.pathsep.join([REPO, str(tmp_path / 'src')])
  workdir = tmp_path / 'run'
  flags = ['--config=configs/digits.py', f'--workdir={workdir}']
  flags += tiny_flags(tmp_path, model=NET, num_epochs=3, multiscale_sizes='(8,10)')

  run = command('main', *flags, env=env)
  assert run.returncode == 0, run.stderr[-3000:]
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  last_eval = [r for r in records if r['split'] == 'eval'][-1]
  assert last_eval['num_examples'] == 360
  assert last_eval['top1_err'] < 0.2  # it learned (chance: 0.9)
  params = resnet_jax.load_variables(str(workdir))['params']
  gates = [float(params[f'layer{i}_0']['gate']) for i in (1, 2, 3)]
  assert all(g != 1.0 for g in gates)  # trained, not left at their initial value

  scored = command('evaluate', *flags, env=env)
  assert scored.returncode == 0, scored.stderr[-3000:]
  result = json.loads(scored.stdout.strip().splitlines()[-1])
  assert result['top1_err'] == pytest.approx(last_eval['top1_err'], abs=1e-9)

  table = command('summary', NET, '--image_size', '8', '--num_classes', '10', env=env)
  assert f'Total params: {PARAMS:,}' in table.stdout, table.stderr[-2000:]

  onnx_file = tmp_path / 'gated.onnx'
  exported = command('export', f'--workdir={workdir}', f'--out={onnx_file}', env=env)
  assert exported.returncode == 0 and onnx_file.stat().st_size > 0, exported.stderr[-2000:]
  assert 'within' in exported.stdout  # onnxruntime's logits checked against JAX's


@pytest.mark.torch
@pytest.mark.slow
def test_a_net_of_your_own_converts_both_ways(tmp_path, monkeypatch):
  """``convert`` to a torch file and back: the block's own parameter by its own name, SE's by
  timm's, every tensor bit for bit (the weights a run of it would leave)."""
  pytest.importorskip('torch')  # writing a .pth needs torch
  package = tmp_path / 'src' / 'their_lab'
  package.mkdir(parents=True)
  (package / '__init__.py').write_text('')
  (package / 'nets.py').write_text(THEIR_NETS)
  monkeypatch.syspath_prepend(str(tmp_path / 'src'))
  _, variables = resnet_jax.create_model(NET, num_classes=10, image_size=8, seed=3)
  variables = jax.device_get(variables)
  checkpoint.save_variables(str(tmp_path / 'weights'), variables)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, str(tmp_path / 'src')]))
  pth = tmp_path / 'gated.pth'
  to_torch = command(
    'convert', f'--weights={tmp_path / "weights"}', f'--to_torchvision={pth}', env=env
  )
  assert to_torch.returncode == 0, to_torch.stderr[-2000:]
  state_dict = torch_files.read(pth.read_bytes())
  assert state_dict['layer2.0.gate'].shape == ()  # the block's own parameter, by its own name
  assert state_dict['layer3.0.se.fc1.weight'].shape == (8, 64, 1, 1)  # timm's layout
  back = command(
    'convert', f'--torchvision={pth}', f'--model={NET}', f'--out={tmp_path / "c"}', env=env
  )
  assert back.returncode == 0, back.stderr[-2000:]
  converted = resnet_jax.load_variables(str(tmp_path / 'c'))
  flat = traverse_util.flatten_dict(converted)
  assert len(flat) == len(traverse_util.flatten_dict(variables))
  for key, value in traverse_util.flatten_dict(variables).items():
    np.testing.assert_array_equal(flat[key], value, err_msg=str(key))


def test_a_net_that_cannot_be_imported_is_one_line(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO)
  run = command(
    'main',
    '--config=configs/digits.py',
    f'--workdir={tmp_path / "run"}',
    '--config.model=their_lab.nets:gated_resnet8',
    env=env,
  )
  assert run.returncode == 2
  assert run.stderr.strip().splitlines()[-1] == (
    "error: --config.model='their_lab.nets:gated_resnet8': Cannot import 'their_lab.nets' for "
    "model 'their_lab.nets:gated_resnet8' (No module named 'their_lab'); run from the directory "
    'that holds it or add that directory to PYTHONPATH.'
  )
  assert not (tmp_path / 'run').exists()
