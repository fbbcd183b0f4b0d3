"""ImageNet preparation from archives in ImageNet's own layout, through the commands a user runs:
`resnet_jax.prepare`, then `resnet_jax.main --config=configs/r50.py` (shortened)."""

import os
import subprocess
import sys
import tarfile

import pytest
from helpers import REPO, SYNSETS, VALIDATION, add_to_tar, write_imagenet_archives

from resnet_jax import prepare
from resnet_jax.train import metrics


def _run(*argv):
  env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  return subprocess.run(
    [sys.executable, '-m', *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
  )


def test_missing_or_wrong_archives_are_named_in_one_line(tmp_path):
  manual = tmp_path / 'manual'
  write_imagenet_archives(str(manual))
  os.remove(manual / 'ILSVRC2012_img_val.tar')
  with tarfile.open(manual / 'ILSVRC2012_img_train.tar', 'w') as tar:  # flat: not per synset
    add_to_tar(tar, 'n01440764_0.JPEG', b'x')
  with pytest.raises(prepare.UserError) as error:
    prepare.check_imagenet_archives(str(manual))
  message = str(error.value)
  assert 'ILSVRC2012_img_val.tar is missing' in message
  assert "only *.tar files, but has 1 such as 'n01440764_0.JPEG'" in message


@pytest.mark.slow
def test_prepare_then_train_scores_every_validation_image(tmp_path):
  data_dir = str(tmp_path / 'tensorflow_datasets')
  empty = _run('resnet_jax.prepare', f'--data_dir={data_dir}')
  assert empty.returncode == 2 and 'ILSVRC2012_img_train.tar is missing' in empty.stderr
  assert empty.stderr.strip().splitlines()[-1].startswith('error: ImageNet cannot be prepared')

  write_imagenet_archives(os.path.join(data_dir, 'downloads', 'manual'))
  result = _run('resnet_jax.prepare', f'--data_dir={data_dir}')
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'train 12, validation 8 examples' in result.stdout

  import tensorflow_datasets as tfds

  builder = tfds.builder('imagenet2012', data_dir=data_dir)
  validation = builder.as_data_source('validation')
  labels_file = tfds.core.tfds_path('datasets/imagenet2012/validation_labels.txt')
  bundled = labels_file.read_text().split()[:VALIDATION]
  names = builder.info.features['label'].names
  got = {v['file_name'].decode(): names[v['label']] for v in validation}
  expected = {f'ILSVRC2012_val_{k:08d}.JPEG': bundled[k - 1] for k in range(1, VALIDATION + 1)}
  assert got == expected
  train = builder.as_data_source('train')
  assert sorted({names[t['label']] for t in train}) == list(SYNSETS)

  workdir = str(tmp_path / 'r50')
  shortened = [
    '--config.model=resnet18',
    '--config.image_size=32',
    '--config.eval_resize=37',
    '--config.scale_range=(37, 48)',
    '--config.batch_size=4',
    '--config.num_train_steps=3',
  ]
  run = _run(
    'resnet_jax.main',
    '--config=configs/r50.py',
    f'--workdir={workdir}',
    f'--config.data_dir={data_dir}',
    *shortened,
  )
  assert run.returncode == 0, run.stdout + run.stderr
  evals = [r for r in metrics.read(workdir) if r['split'] == 'eval']
  assert evals[-1]['num_examples'] == VALIDATION and evals[-1]['step'] == 3
