"""Real TFDS datasets prepared on disk (ArrayRecord and TFRecord) through every source path."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from helpers import mean_of, sample_photos

from configs import default
from resnet_jax.data import input_pipeline, sources
from resnet_jax.data.input_pipeline import Layout


class TinyPhotos(tfds.core.GeneratorBasedBuilder):
  """23 train / 11 test JPEG crops of the sample photos, 4 classes, varied sizes."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(shape=(None, None, 3)),
          'label': tfds.features.ClassLabel(num_classes=4),
        }
      ),
      supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(23, 0), 'test': self._generate_examples(11, 1)}

  def _generate_examples(self, count, seed):
    photos = sample_photos()
    rng = np.random.default_rng(seed)
    for i in range(count):
      h, w = int(rng.integers(40, 80)), int(rng.integers(40, 80))
      yield i, {'image': photos[i % 2][:h, :w], 'label': i % 4}


@pytest.fixture(scope='module', params=['array_record', 'tfrecord'])
def prepared(request, tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp(request.param))
  TinyPhotos(data_dir=data_dir, file_format=request.param).download_and_prepare()
  return request.param, data_dir


def tiny_config(data_dir, tmp_path, **overrides):
  c = default.get_config()
  c.dataset, c.data_dir = 'tiny_photos', data_dir
  c.train_split, c.eval_split = 'train', 'test'
  c.image_size, c.eval_resize, c.scale_range = 24, 32, (32, 48)
  c.in_memory_max_bytes = 0  # force the on-disk paths
  c.shuffle_buffer = 8
  c.mean_image_path = str(tmp_path / 'mean.npy')
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def test_sources_by_file_format(prepared, tmp_path):
  file_format, data_dir = prepared
  c = tiny_config(data_dir, tmp_path)
  train = sources.get_source(c, 'train')
  assert (train.num_examples, train.num_classes, train.encoded) == (23, 4, True)
  assert (train.fetch is not None) == (file_format == 'array_record')
  batches = input_pipeline.train_dataset(c, train, Layout(8, 0, 1), mean=mean_of(c))
  batch, second = batches.take(2).as_numpy_iterator()
  assert batch['image'].shape == (8, 24, 24, 3)
  assert set(batch['label']) <= {0, 1, 2, 3}
  # A run resumed at step 1 sees the same second batch: examples and their draws line up.
  resumed = input_pipeline.train_dataset(c, train, Layout(8, 0, 1), start_step=1, mean=mean_of(c))
  for key, value in next(resumed.as_numpy_iterator()).items():
    np.testing.assert_array_equal(value, second[key], err_msg=key)
  assert second['flip'].any() and not second['flip'].all()


@pytest.mark.parametrize('processes', [1, 2])
def test_eval_counts_exact_on_every_path(prepared, tmp_path, processes):
  _, data_dir = prepared
  c = tiny_config(data_dir, tmp_path)
  test = sources.get_source(c, 'test')
  labels, steps = [], set()
  for p in range(processes):
    ds, n = input_pipeline.eval_dataset(c, test, Layout(4, p, processes), mean=mean_of(c))
    batches = list(ds.as_numpy_iterator())
    assert len(batches) == n
    steps.add(n)
    labels.extend(label for b in batches for label in b['label'][b['mask']])
  assert len(steps) == 1  # every process runs the same number of eval steps
  assert sorted(labels) == sorted(i % 4 for i in range(11))


def test_small_datasets_are_held_in_memory(prepared, tmp_path):
  _, data_dir = prepared
  c = tiny_config(data_dir, tmp_path, in_memory_max_bytes=2**30)
  train = sources.get_source(c, 'train')
  data, labels = train.fetch(np.arange(23))
  assert data.dtype == object and len(data) == 23  # encoded, variable-size images
  assert sorted(labels) == sorted(i % 4 for i in range(23))


def test_multiscale_scores_every_example_once_on_both_read_paths(prepared, tmp_path):
  file_format, data_dir = prepared
  c = tiny_config(data_dir, tmp_path, eval_mode='multiscale', multiscale_sizes=(16, 24))
  test = sources.get_source(c, 'test')
  ds, n = input_pipeline.eval_dataset(c, test, Layout(4, 0, 1), mean=mean_of(c))
  batches = list(ds.as_numpy_iterator())
  assert len(batches) == n
  # Crops of 40-79 x 40-79 px fall in several aspect buckets: batches of different shapes.
  assert len({b['image_16'].shape for b in batches}) >= 3, file_format
  labels = [label for b in batches for label in b['label'][b['mask']]]
  assert sorted(labels) == sorted(i % 4 for i in range(11))
