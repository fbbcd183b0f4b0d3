"""BiT's ResNet-v2 (bit_r50x1 ... bit_r152x4): parameter counts, logits equal to big_vision's
flax module for the same weights (tests/bit_reference.py rebuilds it), and BiT's released .npz
files read by their own key names, through ``convert`` and by name."""

import io
import os
import subprocess
import sys

import bit_reference
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO

import resnet_jax
from resnet_jax.models import bit_weights, layers, registry, releases
from resnet_jax.train import pretrained

# timm's figures for its ports of BiT's nets (resnetv2_50x1_bit ... resnetv2_152x4_bit, 1000
# classes): 25.55 M, 217.32 M, 44.54 M, 387.93 M, 236.34 M, 936.53 M.
BIT_PARAMS = {
  'bit_r50x1': 25_549_352,
  'bit_r50x3': 217_319_080,
  'bit_r101x1': 44_541_480,
  'bit_r101x3': 387_934_888,
  'bit_r152x2': 236_335_208,
  'bit_r152x4': 936_533_224,
}


@pytest.mark.parametrize('name', sorted(BIT_PARAMS))
def test_bit_nets_have_their_parameter_counts_and_bits_key_names(name):
  depth, width = (int(x) for x in name.removeprefix('bit_r').split('x'))
  model = registry.get_model(name, num_classes=1000)
  shapes = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
  )
  assert set(shapes) == {'params'}  # GroupNorm: no running statistics
  assert sum(x.size for x in jax.tree.leaves(shapes)) == BIT_PARAMS[name]
  # Every key of BiT's file maps onto a tensor of its shape, and every tensor has its key.
  npz = bit_reference.npz_shapes(depth, width, 1000)
  ours = {
    tuple(key.key for key in path): leaf.shape
    for path, leaf in jax.tree_util.tree_flatten_with_path(shapes['params'])[0]
  }
  paths = {bit_weights.flax_path(key): shape for key, shape in npz.items()}
  assert len(paths) == len(npz) == len(ours)
  for path, shape in paths.items():
    assert ours[path] == (shape[2:] if path == ('fc', 'kernel') else shape), path


def test_weight_standardisation_is_bits():
  kernel = np.random.RandomState(0).standard_normal((3, 3, 8, 4)).astype(np.float32)
  w = np.asarray(layers.standardize_kernel(jnp.asarray(kernel)))
  np.testing.assert_allclose(w.mean(axis=(0, 1, 2)), 0, atol=1e-6)
  np.testing.assert_allclose(w.std(axis=(0, 1, 2)), 1, rtol=1e-5)  # biased: numpy's default
  # A constant kernel stays finite: BiT's epsilon (1e-10) under the square root.
  assert np.all(np.isfinite(layers.standardize_kernel(jnp.ones((1, 1, 2, 3)))))


@pytest.mark.slow
def test_logits_equal_big_visions_module_for_the_same_released_file():
  arrays = bit_reference.random_npz(50, 1, num_classes=10, seed=0)
  images = np.random.RandomState(1).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
  theirs = bit_reference.Model(num_classes=10, width=1, depth=50)
  expected = jax.jit(theirs.apply)(bit_reference.load(arrays), images)
  assert np.abs(expected).max() > 1  # a real comparison, not of near-zero logits
  for scan_blocks, train in ((False, False), (False, True), (True, True)):
    # GroupNorm: the same numbers in training; scanned stages: the same net.
    variables = bit_weights.from_bit(arrays, 'bit_r50x1', scan_blocks=scan_blocks)
    ours = registry.get_model('bit_r50x1', num_classes=10, scan_blocks=scan_blocks)
    logits = jax.jit(lambda v, x, t=train, m=ours: m.apply(v, x, train=t))(variables, images)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_wrong_files_are_named(tmp_path):
  arrays = bit_reference.random_npz(50, 1, num_classes=10, seed=0)
  wrong = r'152 mis-shaped: resnet/root_block/standardized_conv2d/kernel: got \(7, 7, 3, 64\), '
  with pytest.raises(ValueError, match=wrong + r'bit_r50x3 wants \(7, 7, 3, 192\)'):
    bit_weights.from_bit(arrays, 'bit_r50x3')
  del arrays['resnet/block4/unit03/c/group_norm/beta']
  with pytest.raises(ValueError, match=r'1 missing for bit_r50x1: params/layer4_2/bn3/bias$'):
    bit_weights.from_bit(arrays, 'bit_r50x1')
  with pytest.raises(ValueError, match=r"not one of BiT's released \.npz files"):
    bit_weights.from_bit({'fc.weight': np.zeros((2, 2))}, 'bit_r50x1')
  buffer = io.BytesIO()
  np.savez(buffer, **{'resnet/head/conv2d/bias': np.zeros(3)})
  assert bit_weights.is_npz(buffer.getvalue())
  assert not bit_weights.is_npz(b'PK\x03\x04 a torch zip')


def test_bit_releases_name_their_files_and_inputs():
  assert len(releases.BIT) == 19
  m = releases.lookup('bit:M-R50x1')
  assert (m.model, m.url) == (
    'bit_r50x1',
    'https://storage.googleapis.com/bit_models/BiT-M-R50x1.npz',
  )
  assert releases.lookup('bit:M-R152x4-ILSVRC2012').model == 'bit_r152x4'
  distilled = releases.lookup('bit:FunMatch-224px-i1k82.8')
  assert distilled.top1 == 82.8 and distilled.url.endswith('/bit_models/distill/R50x1_224.npz')
  assert dict(m.requires)['channel_mean'] == (127.5,) * 3  # BiT's inputs are in [-1, 1]
  for weights in releases.BIT.values():  # no hash in BiT's names: recorded at download instead
    assert not pretrained._HASH_IN_NAME.search(weights.url.rsplit('/', 1)[-1])


@pytest.mark.slow  # writes and reads a 100 MB file, and runs the command
def test_convert_reads_a_bit_npz_as_the_command_line_gives_it(tmp_path):
  arrays = bit_reference.random_npz(50, 1, num_classes=10, seed=2)
  np.savez(tmp_path / 'BiT-S-R50x1.npz', **arrays)
  out = tmp_path / 'converted'
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'resnet_jax.convert',
      f'--torchvision={tmp_path / "BiT-S-R50x1.npz"}',
      '--model=bit_r50x1',
      f'--out={out}',
    ],
    cwd=REPO,
    env=dict(os.environ, PYTHONPATH=REPO),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Wrote bit_r50x1 (23,520,842 parameters)' in result.stdout  # 25,549,352 less 990 classes
  # What the command wrote is what the module reads from the file (whose logits are big_vision's:
  # the test above), bit for bit.
  written = jax.tree_util.tree_leaves_with_path(resnet_jax.load_variables(str(out))['params'])
  read = bit_weights.from_bit(arrays, 'bit_r50x1')['params']
  assert len(written) == len(arrays) == 153  # one tensor per key of the file
  for path, value in written:
    want = read
    for key in path:
      want = want[key.key]
    np.testing.assert_array_equal(value, want, err_msg=str(path))
