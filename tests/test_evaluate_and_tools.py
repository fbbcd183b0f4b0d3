"""Evaluation protocols, the evaluate / convert / summary / plot command lines, init_from."""

import collections
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath
from helpers import REPO, folder_config, tiny, tiny_flags, write_image_folder

from configs import digits
from resnet_jax import evaluate, plot, storage
from resnet_jax.models import block_layout, registry, torchvision_weights
from resnet_jax.train import checkpoint, experiment, loop, metrics, scoring


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp('trained')
  config = tiny(tmp_path, num_train_steps=12, eval_every=12, ema_decay=0.8)
  workdir = str(tmp_path / 'run')
  loop.train_and_evaluate(config, workdir)
  return config, workdir, tmp_path


@pytest.mark.slow
def test_evaluate_center_reproduces_the_training_eval(trained):
  config, workdir, _ = trained
  last = [r for r in metrics.read(workdir) if r['split'] == 'eval'][-1]
  result = evaluate.evaluate_workdir(config, workdir)
  assert result['step'] == 12 and result['num_examples'] == 360
  assert result['top1_err'] == pytest.approx(last['top1_err'])
  assert result['loss'] == pytest.approx(last['loss'], rel=1e-5)
  assert result['ema_top1_err'] == pytest.approx(last['ema_top1_err'])  # the average too
  assert result['ema_loss'] == pytest.approx(last['ema_loss'], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['10crop', 'multiscale'])
def test_evaluate_cli_other_protocols_count_every_example(trained, mode):
  _, workdir, tmp_path = trained
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8', PYTHONPATH=REPO)
  cmd = [
    sys.executable,
    '-m',
    'resnet_jax.evaluate',
    '--config=configs/digits.py',
    f'--workdir={workdir}',
    f'--config.eval_mode={mode}',
    '--config.multiscale_sizes=(8, 12)',
    '--config.eval_batch_size=40',
    *[f for f in tiny_flags(tmp_path) if 'async' not in f],
  ]
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result['eval_mode'] == mode and result['num_examples'] == 360 and result['step'] == 12
  assert result['eval_steps'] == 9
  assert 0 <= result['top5_err'] <= result['top1_err'] <= 1
  assert os.path.exists(os.path.join(workdir, f'eval_{mode}.jsonl'))


@pytest.mark.slow
def test_export_cli_writes_the_runs_network_as_onnx(trained):
  """The command on a trained run's workdir: the graph onnxruntime runs gives the logits the
  run's checkpoint gives in JAX, for torch's NCHW layout and any batch."""
  onnxruntime = pytest.importorskip('onnxruntime')
  onnx = pytest.importorskip('onnx')
  _, workdir, tmp_path = trained
  out = str(tmp_path / 'run.onnx')
  cmd = [sys.executable, '-m', 'resnet_jax.export', f'--workdir={workdir}', f'--out={out}']
  result = subprocess.run(
    [*cmd, '--layout=NCHW'], cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Wrote {out}: cifar_resnet8, input images [batch, 3, 8, 8] NCHW float32' in result.stdout
  assert 'BatchNorm folded into 7 convolutions' in result.stdout  # conv1 and two per block
  assert 'logits within' in result.stdout and "of JAX's" in result.stdout
  operators = collections.Counter(n.op_type for n in onnx.load(out).graph.node)
  assert 'Transpose' not in operators  # NCHW from the input on
  assert operators['Conv'] == operators['Relu'] == 7 and operators['Gemm'] == 1
  variables = block_layout.unstack_blocks(checkpoint.read_variables(epath.Path(workdir)))
  model = registry.get_model('cifar_resnet8', num_classes=10)
  images = np.random.default_rng(0).standard_normal((5, 8, 8, 3)).astype(np.float32)
  want = np.asarray(model.apply(variables, images, train=False))
  session = onnxruntime.InferenceSession(out, providers=['CPUExecutionProvider'])
  got = session.run(None, {'images': images.transpose(0, 3, 1, 2)})[0]
  assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
  # --ema: the run's averaged weights (what torchvision's V2 weights are), not its raw ones.
  result = subprocess.run([*cmd, '--ema'], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'cifar_resnet8 (averaged weights), input images [batch, 8, 8, 3] NHWC' in result.stdout
  averaged = checkpoint.read_variables(epath.Path(workdir), use_ema=True)
  want = np.asarray(model.apply(block_layout.unstack_blocks(averaged), images, train=False))
  session = onnxruntime.InferenceSession(out, providers=['CPUExecutionProvider'])
  got = session.run(None, {'images': images})[0]
  assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
  assert np.abs(got - model.apply(variables, images, train=False)).max() > 1e-3


def test_ten_identical_views_score_like_one_view_and_its_flip():
  model = registry.get_model('cifar_resnet8', num_classes=10)
  x = jax.random.normal(jax.random.key(0), (3, 8, 8, 3))
  variables = model.init(jax.random.key(1), x, train=False)
  views = jnp.concatenate([jnp.repeat(x[:, None], 5, 1), jnp.repeat(x[:, None, :, ::-1], 5, 1)], 1)
  cfg = digits.get_config()
  cfg.eval_mode = '10crop'
  probs = scoring.view_probs(model, variables, {'image': views}, cfg)
  one = jax.nn.softmax(model.apply(variables, x, train=False))
  flipped = jax.nn.softmax(model.apply(variables, x[:, :, ::-1], train=False))
  np.testing.assert_allclose(probs, (one + flipped) / 2, atol=1e-6)


@pytest.mark.torch
@pytest.mark.slow
def test_convert_cli_and_init_from_torchvision_weights(tmp_path):
  torch = pytest.importorskip('torch')  # the command reads a torch .pth
  torch_resnet = pytest.importorskip('torch_resnet')
  torch.manual_seed(0)
  net = torch_resnet.build('resnet18', 10)
  pth = str(tmp_path / 'r18.pth')
  torch.save(net.state_dict(), pth)
  out = str(tmp_path / 'converted')
  env = dict(os.environ, PYTHONPATH=REPO)
  cmd = [
    sys.executable,
    '-m',
    'resnet_jax.convert',
    f'--torchvision={pth}',
    '--model=resnet18',
    f'--out={out}',
  ]
  result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Wrote resnet18 (11,181,642 parameters)' in result.stdout

  root = write_image_folder(tmp_path / 'imgs')
  config = folder_config(
    tmp_path,
    root,
    model='resnet18',
    init_from=out,
    batch_size=8,
    num_train_steps=1,
    normalization='channel_mean_std',
  )
  run = experiment.Experiment(config, str(tmp_path / 'finetune'))
  state = run.initial_state()
  run.checkpointer.close()
  expected = torchvision_weights.from_torchvision(net.state_dict(), 'resnet18')
  np.testing.assert_array_equal(
    state.params['conv1']['kernel'], expected['params']['conv1']['kernel']
  )
  np.testing.assert_array_equal(
    state.batch_stats['layer4_1']['bn2']['var'], expected['batch_stats']['layer4_1']['bn2']['var']
  )
  assert state.params['fc']['kernel'].shape == (512, 3)  # new head for the folder's 3 classes

  # And back: the converted checkpoint as a .pth that torchvision's model loads strictly, equal
  # to the original tensor for tensor.
  back = str(tmp_path / 'back.pth')
  cmd = [sys.executable, '-m', 'resnet_jax.convert', f'--weights={out}', f'--to_torchvision={back}']
  result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Wrote 122 tensors (11,181,642 parameters) to {back}' in result.stdout
  again = torch_resnet.build('resnet18', 10)
  again.load_state_dict(torch.load(back, weights_only=True), strict=True)
  for key, value in net.state_dict().items():
    assert torch.equal(again.state_dict()[key], value), key


def test_init_from_a_path_without_weights_is_a_clear_error(tmp_path):
  with pytest.raises(checkpoint.CheckpointError, match='nothing: no such directory'):
    checkpoint.load_variables(str(tmp_path / 'nothing'), {}, None)


@pytest.mark.slow
def test_plot_writes_a_png(trained, tmp_path):
  _, workdir, _ = trained
  out = plot.plot([workdir], str(tmp_path / 'curves.png'), labels=['tiny'])
  with open(out, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  data = plot.curves(workdir)
  assert data['eval'][0] == [12] and len(data['train'][0]) == 3


def test_a_failed_atomic_write_leaves_no_temporary_file(tmp_path):
  (tmp_path / 'taken').mkdir()  # a directory where the file would go: the final rename fails
  with pytest.raises(IsADirectoryError):
    storage.write_bytes_atomic(storage.path(tmp_path / 'taken'), b'x' * 1000)
  assert os.listdir(tmp_path) == ['taken'] and not os.listdir(tmp_path / 'taken')
  storage.write_bytes_atomic(storage.path(tmp_path / 'file'), b'abc')
  assert sorted(os.listdir(tmp_path)) == ['file', 'taken']
  assert (tmp_path / 'file').read_bytes() == b'abc'
