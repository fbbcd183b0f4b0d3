"""Input pipeline: shapes, augmentation semantics, test views, exact counts, global order."""

import logging
import os

import jax
import numpy as np
import pytest
import tensorflow as tf
from helpers import digits_config, folder_config, mean_of, sample_photos, write_image_folder
from PIL import Image

from configs import photos
from resnet_jax.data import (
  augment,
  device_pixels,
  draws,
  folders,
  input_pipeline,
  mean_image,
  sources,
  tfds_source,
)
from resnet_jax.data.input_pipeline import Layout
from resnet_jax.data.source import DatasetError, DatasetNotFoundError
from resnet_jax.train import parallel


def first_batch(ds):
  return next(ds.as_numpy_iterator())


def photos_config(**overrides):
  c = photos.get_config()
  c.photos_num_examples = (64, 16)
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


@pytest.mark.parametrize('pixel_ops', ['device', 'host'])
def test_digits_train_and_eval_shapes(tmp_path, pixel_ops):
  c = digits_config(tmp_path, pixel_ops=pixel_ops)
  src = sources.get_source(c, 'train')
  assert (src.num_examples, src.num_classes) == (1437, 10)
  batch = first_batch(input_pipeline.train_dataset(c, src, Layout(64, 0, 1), mean=mean_of(c)))
  assert batch['label'].dtype == np.int32 and set(batch['label']) <= set(range(10))
  if pixel_ops == 'host':
    assert set(batch) == {'image', 'label'}
    assert batch['image'].shape == (64, 16, 16, 3) and batch['image'].dtype == np.float32
    return
  kinds = {k: (v.dtype, v.shape) for k, v in batch.items()}
  assert kinds == {
    'image': (np.uint8, (64, 16, 16, 3)),
    'label': (np.int32, (64,)),
    'lighting': (np.float32, (64, 3)),
    'shift': (np.int32, (64, 2)),
    'flip': (bool, (64,)),
    'erase': (np.int32, (64, 4)),  # random erasing's boxes: all 0 x 0 here (random_erasing 0)
  }
  assert not batch['erase'].any()


@pytest.mark.parametrize('batch', [64, 100, 360, 512])
def test_eval_counts_every_example_exactly_once(tmp_path, batch):
  c = digits_config(tmp_path)
  src = sources.get_source(c, 'test')
  ds, steps = input_pipeline.eval_dataset(c, src, Layout(batch, 0, 1), mean=mean_of(c))
  labels, n_batches = [], 0
  for b in ds.as_numpy_iterator():
    labels.append(b['label'][b['mask']])
    n_batches += 1
  assert n_batches == steps == -(-360 // batch)
  np.testing.assert_array_equal(np.concatenate(labels), src.fetch(np.arange(360))[1])


def test_two_processes_read_disjoint_halves_of_the_same_global_batch(tmp_path):
  c = digits_config(tmp_path)
  src = sources.get_source(c, 'train')
  whole = input_pipeline.train_dataset(c, src, Layout(64, 0, 1), start_step=3, mean=mean_of(c))
  halves = [
    input_pipeline.train_dataset(c, src, Layout(64, p, 2), start_step=3, mean=mean_of(c))
    for p in (0, 1)
  ]
  for ours, a, b in zip(
    whole.take(3).as_numpy_iterator(),
    halves[0].take(3).as_numpy_iterator(),
    halves[1].take(3).as_numpy_iterator(),
    strict=True,
  ):
    # Same images, draws and labels, in the same rows.
    assert set(ours) == {'image', 'label', *device_pixels.DRAWS}
    for key, value in ours.items():
      np.testing.assert_array_equal(np.concatenate([a[key], b[key]]), value, err_msg=key)
  # Index level: disjoint, complete, one permutation per epoch.
  layouts = [Layout(64, p, 2) for p in (0, 1)]
  gens = [input_pipeline.train_index_batches(1437, lay, seed=0) for lay in layouts]
  seen = []
  for _ in range(1437 // 64):
    (i0, c0), (i1, c1) = next(gens[0]), next(gens[1])
    assert not set(i0) & set(i1)
    assert not set(c0) & set(c1)
    seen.extend(i0)
    seen.extend(i1)
  assert len(set(seen)) == len(seen) == (1437 // 64) * 64


def test_resumed_stream_continues_exactly(tmp_path):
  c = digits_config(tmp_path)
  src = sources.get_source(c, 'train')
  full = list(
    input_pipeline.train_dataset(c, src, Layout(64, 0, 1), mean=mean_of(c))
    .take(30)
    .as_numpy_iterator()
  )
  resumed = input_pipeline.train_dataset(c, src, Layout(64, 0, 1), start_step=25, mean=mean_of(c))
  for a, b in zip(full[25:], resumed.take(5).as_numpy_iterator(), strict=True):
    for key in ('image', 'label', *device_pixels.DRAWS):
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  # A new epoch is a new order.
  assert not np.array_equal(full[0]['label'], full[22]['label'])


def test_mean_image_is_the_mean(tmp_path):
  c = digits_config(tmp_path, image_size=8, eval_resize=8)
  src = sources.get_source(c, 'train')
  mean = mean_image.load_or_compute(c, src)
  images = src.fetch(np.arange(src.num_examples))[0].astype(np.float64)
  np.testing.assert_allclose(mean, images.mean(axis=0), rtol=1e-5, atol=1e-3)
  assert (tmp_path / 'digits_mean.npy').exists()  # cached and reused
  assert np.array_equal(mean_image.load_or_compute(c, None), mean)
  batch = first_batch(
    input_pipeline.eval_dataset(
      c, sources.get_source(c, 'test'), Layout(360, 0, 1), mean=mean_of(c)
    )[0]
  )
  raw = sources.get_source(c, 'test').fetch(np.arange(360))[0]
  np.testing.assert_allclose(batch['image'], raw - mean, atol=1e-3)


def test_scale_augmentation_short_side_range_on_real_photos(tmp_path):
  photo = tf.io.encode_jpeg(sample_photos()[0], quality=90)  # 427 x 640
  c = digits_config(tmp_path, train_augment='scale', scale_range=(256, 480))
  crop_bits = draws.for_examples(c, np.arange(300))['crop']
  sides = 256 + draws.below(crop_bits[:, 0], 225)
  assert min(sides) < 270 and max(sides) > 465 and min(sides) >= 256 and max(sides) <= 480
  for bits in crop_bits[:20]:
    out = augment.scale_crop(photo, True, tf.constant(bits), crop=224, scale_range=(256, 480))
    assert out.shape == (224, 224, 3)
  # The crop window covers 224/S of the shorter side: check it on the window function.
  hw = tf.constant([427, 640])
  for s in (256, 480):
    _, _, size_y, size_x = augment.window_of_resized(hw, s, tf.constant([0, 0]), 224).numpy()
    assert size_y == round(224 * 427 / s) and size_x == size_y
    assert list(augment.resized_size(hw, s).numpy()) == [s, round(640 * s / 427)]
  # Integers from random words: the ends are reachable and nothing falls outside.
  assert int(augment.below(tf.constant(2**32 - 1, tf.int64), 225)) == 224
  assert int(augment.below(tf.constant(0, tf.int64), 225)) == 0


def test_draws_are_a_function_of_seed_and_position_alone(tmp_path):
  c = digits_config(tmp_path, lighting_std=0.1, random_flip=True, train_augment='pad_crop', pad=4)
  whole = draws.for_examples(c, np.arange(1000, 1256))
  parts = [draws.for_examples(c, np.arange(a, a + 64)) for a in range(1000, 1256, 64)]
  for key, value in whole.items():
    assert value.dtype == draws.FIELDS[key][0] and value.shape[1:] == draws.FIELDS[key][1]
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), value, err_msg=key)
  c.seed = 1
  other = draws.for_examples(c, np.arange(1000, 1256))
  assert (other['crop'] != whole['crop']).mean() > 0.99
  # Distributions: offsets cover [0, 2 * pad]; half the images flip; the lighting offset has the
  # covariance of AlexNet's PCA noise, eigvec diag((std * eigval)^2) eigvec^T.
  many = draws.for_examples(c, np.arange(200_000))
  assert set(np.unique(many['shift'])) == set(range(9))
  assert abs(many['flip'].mean() - 0.5) < 0.005
  eigvec = np.array(draws.IMAGENET_EIGVEC)
  expected = eigvec @ np.diag((0.1 * np.array(draws.IMAGENET_EIGVAL)) ** 2) @ eigvec.T
  np.testing.assert_allclose(np.cov(many['lighting'].T), expected, rtol=0.02, atol=0.01)
  np.testing.assert_allclose(many['lighting'].mean(0), 0, atol=0.03)
  # Disabled parts draw nothing.
  c.lighting_std, c.random_flip = 0.0, False
  quiet = draws.for_examples(c, np.arange(64))
  assert not quiet['lighting'].any() and not quiet['flip'].any()


@pytest.mark.parametrize(
  'normalization, lighting_std', [('channel_mean_std', 0.1), ('pixel_mean', 0.0)]
)
def test_device_pixel_ops_finish_bitwise_as_host_pipeline(tmp_path, normalization, lighting_std):
  """At 8 px digits the crop is not resized, so uint8 loses nothing: the train step's finish
  (lighting, normalisation, pad-crop, flip) must give the host pipeline's floats bitwise."""
  common = dict(
    image_size=8,
    eval_resize=8,
    train_augment='pad_crop',
    pad=2,
    random_flip=True,
    normalization=normalization,
    lighting_std=lighting_std,
  )
  host_config = digits_config(tmp_path, pixel_ops='host', **common)
  device_config = digits_config(tmp_path, pixel_ops='device', **common)
  src = sources.get_source(host_config, 'train')
  mean = mean_of(host_config)
  host = first_batch(input_pipeline.train_dataset(host_config, src, Layout(256, 0, 1), mean=mean))
  sent = first_batch(input_pipeline.train_dataset(device_config, src, Layout(256, 0, 1), mean=mean))
  assert sent['flip'].any() and not sent['flip'].all() and len(np.unique(sent['shift'])) == 5
  finished = jax.jit(device_pixels.PixelOps(device_config, mean))(sent)
  np.testing.assert_array_equal(np.asarray(finished), host['image'])


def test_device_pixel_ops_differ_from_host_only_by_rounding_the_resized_crop():
  """Real JPEG photos, the paper's scale augmentation, lighting and a mean image: the devices'
  images equal the host's within the uint8 rounding of the resized crop (0.5)."""
  c = photos_config(pixel_ops='host')
  src = sources.get_source(c, 'train')
  mean = np.random.default_rng(0).uniform(0, 255, (c.image_size, c.image_size, 3))
  host = first_batch(input_pipeline.train_dataset(c, src, Layout(16, 0, 1), mean=mean))
  c.pixel_ops = 'device'
  sent = first_batch(input_pipeline.train_dataset(c, src, Layout(16, 0, 1), mean=mean))
  finished = np.asarray(jax.jit(device_pixels.PixelOps(c, mean))(sent))
  error = np.abs(finished - host['image'])
  assert error.max() <= 0.5 + 1e-4 and error.mean() > 0.1  # rounded, and nothing more


def test_decoding_the_window_equals_resize_then_crop():
  photo = sample_photos()[1].astype(np.float32)
  encoded = tf.io.encode_png(sample_photos()[1])
  view = augment.center_view(encoded, True, resize=427, crop=400).numpy()  # no resizing needed
  y, x = (427 - 400) // 2, (640 - 400) // 2
  np.testing.assert_allclose(view, photo[y : y + 400, x : x + 400], atol=1e-3)


def test_flip_and_pad_crop_on_the_host():
  image = tf.constant(sample_photos()[0][:16, :20].astype(np.float32))
  np.testing.assert_array_equal(augment.flip_if(image, tf.constant(False)), image)
  np.testing.assert_array_equal(augment.flip_if(image, tf.constant(True)), image.numpy()[:, ::-1])
  padded = np.pad(image.numpy()[:, :16], ((4, 4), (4, 4), (0, 0)))
  for shift in [(0, 0), (8, 3), (2, 8)]:
    out = augment.pad_crop(image[:16, :16], tf.constant(shift, tf.int32), crop=16, pad=4)
    np.testing.assert_array_equal(out, padded[shift[0] : shift[0] + 16, shift[1] : shift[1] + 16])


def test_add_per_channel_is_broadcasting_addition_bitwise_and_keeps_the_static_shape():
  values = tf.constant([0.1, -2.5, 7.25], tf.float32)
  for shape in [(64, 64, 3), (5, 9, 3)]:
    image = tf.random.stateless_uniform(shape, [0, 1], maxval=255.0)
    np.testing.assert_array_equal(augment.add_per_channel(image, values), image + values)
  traced = tf.function(lambda x: augment.add_per_channel(x, values)).get_concrete_function(
    tf.TensorSpec([32, 32, 3], tf.float32)
  )
  assert traced.output_shapes == tf.TensorShape([32, 32, 3])


def test_ten_crop_gives_the_ten_expected_crops():
  image = tf.constant(np.arange(10 * 12 * 3, dtype=np.float32).reshape(10, 12, 3))
  views = augment.ten_crop_views(image, crop=6).numpy()
  a = image.numpy()
  expected = [a[:6, :6], a[:6, 6:], a[4:, :6], a[4:, 6:], a[2:8, 3:9]]
  expected += [e[:, ::-1] for e in expected]
  np.testing.assert_array_equal(views, np.stack(expected))


def test_folder_source_views_and_counts(tmp_path):
  root = write_image_folder(tmp_path / 'imgs')
  c = folder_config(tmp_path, root)
  train, test = sources.get_source(c, 'train'), sources.get_source(c, 'test')
  assert (train.num_examples, test.num_examples, train.num_classes) == (15, 9, 3)
  batch = first_batch(input_pipeline.train_dataset(c, train, Layout(8, 0, 1), mean=mean_of(c)))
  assert batch['image'].shape == (8, 24, 24, 3)
  for mode, key, shape in [
    ('center', 'image', (5, 24, 24, 3)),
    ('10crop', 'image', (5, 10, 24, 24, 3)),
    ('multiscale', 'image_32', (5, 32, 42, 3)),
  ]:
    c.eval_mode = mode
    c.multiscale_sizes = (24, 32)
    ds, steps = input_pipeline.eval_dataset(c, test, Layout(5, 0, 1), mean=mean_of(c))
    batches = list(ds.as_numpy_iterator())
    assert len(batches) == steps == 2
    assert batches[0][key].shape == shape
    assert sum(b['mask'].sum() for b in batches) == 9
  # multiscale: a 40x56 image at shorter side 32 is 32x45, cropped to its 4:3 bucket, unpadded
  assert sorted(batches[0]) == ['image_24', 'image_32', 'label', 'mask']


def test_folder_hidden_entries_are_never_data_and_other_files_are_counted(tmp_path, caplog):
  root = write_image_folder(tmp_path / 'imgs', classes=3, train_per_class=2, test_per_class=1)
  train_dir = os.path.join(root, 'train')
  os.makedirs(os.path.join(train_dir, '.ipynb_checkpoints'))  # what Jupyter leaves
  photo = sample_photos()[0][:20, :30]
  Image.fromarray(photo).save(os.path.join(train_dir, '.ipynb_checkpoints', 'x.jpg'))
  Image.fromarray(photo).save(os.path.join(train_dir, 'class_0', '._0.jpg'))  # macOS's twin
  Image.fromarray(photo).save(os.path.join(train_dir, 'class_1', 'lossless.webp'), lossless=True)
  Image.fromarray(photo).save(os.path.join(train_dir, 'class_1', 'scan.tif'))
  with open(os.path.join(train_dir, 'class_2', 'notes.txt'), 'w') as f:
    f.write('not an image')
  # console.setup() (run by any earlier test of this process) stops propagation at 'resnet_jax',
  # so caplog's handler listens there, not only at the root.
  logger = logging.getLogger('resnet_jax')
  logger.addHandler(caplog.handler)
  try:
    with caplog.at_level(logging.WARNING, logger='resnet_jax'):
      train = sources.get_source(folder_config(tmp_path, root), 'train')
  finally:
    logger.removeHandler(caplog.handler)
  assert (train.num_classes, train.num_examples) == (3, 7)  # 3 x 2 images + the WebP
  assert '.tif: 1, .txt: 1' in caplog.text and 'left out 2 file(s)' in caplog.text
  # The WebP is read (class_1's third file, by name) and decodes in the pipeline as PIL reads it.
  data, labels = train.fetch(np.arange(7))
  with open(os.path.join(train_dir, 'class_1', 'lossless.webp'), 'rb') as f:
    assert data[4] == f.read() and labels[4] == 1
  np.testing.assert_array_equal(augment.decode(tf.constant(data[4]), True).numpy(), photo)


def test_missing_datasets_say_what_to_do(tmp_path):
  with pytest.raises(DatasetNotFoundError, match='downloads/manual'):
    tfds_source.tfds_source('imagenet2012', str(tmp_path), 'train', in_memory_max_bytes=0, seed=0)
  with pytest.raises(DatasetNotFoundError, match='train/<class>'):
    folders.folder(str(tmp_path), 'train')


def test_batch_not_divisible_is_a_clear_error():
  with pytest.raises(ValueError, match='not divisible by the 8 devices'):
    parallel.check_batch(100, 8, 1)


def test_repeated_augmentation_deals_each_example_k_times_with_its_own_draws(tmp_path):
  """k = 4 copies of batch_size / 4 examples per global batch, at rows j, m + j, ... (spread
  over processes and devices), the same on 1 and 2 processes and from a resumed step; the copies
  are different crops of one image."""
  one = input_pipeline.train_index_batches(1437, Layout(64, 0, 1), 0, repeats=4)
  halves = [
    input_pipeline.train_index_batches(1437, Layout(64, p, 2), 0, repeats=4) for p in (0, 1)
  ]
  seen = []
  for _ in range(1437 // 64):
    indices, counters = next(one)
    np.testing.assert_array_equal(indices.reshape(4, 16), np.tile(indices[:16], (4, 1)))
    assert len(set(indices[:16])) == 16 and len(set(counters)) == 64
    (i0, c0), (i1, c1) = next(halves[0]), next(halves[1])
    np.testing.assert_array_equal(np.concatenate([i0, i1]), indices)
    np.testing.assert_array_equal(np.concatenate([c0, c1]), counters)
    seen.extend(indices[:16])
  assert len(set(seen)) == len(seen) == (1437 // 64) * 16  # a quarter of the epoch's examples
  resumed = input_pipeline.train_index_batches(1437, Layout(64, 0, 1), 0, 5, repeats=4)
  again = input_pipeline.train_index_batches(1437, Layout(64, 0, 1), 0, repeats=4)
  for _ in range(5):
    next(again)
  for _ in range(30):  # across the epoch boundary at step 22
    for a, b in zip(next(resumed), next(again), strict=True):
      np.testing.assert_array_equal(a, b)

  three = input_pipeline.train_index_batches(1437, Layout(64, 0, 1), 0, repeats=3)
  seen = []
  for _ in range(1437 // 64):  # 3 does not divide 64: 22 examples, the last two twice
    indices, _ = next(three)
    np.testing.assert_array_equal(indices[22:44], indices[:22])
    np.testing.assert_array_equal(indices[44:], indices[:20])
    seen.extend(indices[:22])
  assert len(set(seen)) == len(seen) == (1437 // 64) * 22

  c = digits_config(tmp_path, train_augment='inception', repeated_augmentation=4, batch_size=16)
  src = sources.get_source(c, 'train')
  batch = next(
    input_pipeline.train_dataset(c, src, Layout(16, 0, 1), mean=mean_of(c)).as_numpy_iterator()
  )
  labels, images = batch['label'].reshape(4, 4), batch['image'].reshape(4, 4, -1)
  np.testing.assert_array_equal(labels, np.tile(labels[0], (4, 1)))
  for j in range(4):  # each example's four copies: four different crops
    copies = {images[c, j].tobytes() for c in range(4)}
    assert len(copies) == 4


def test_a_class_subset_keeps_those_classes_relabelled_in_order(tmp_path):
  """Digits 5-9 as a task of its own: the same images, in the split's order, labels 0-4."""
  config = digits_config(tmp_path)
  whole = sources.get_source(config, 'train')
  config.class_subset = '7,5,9,6,8'  # relabelled in the order given
  subset = sources.get_source(config, 'train')
  images, labels = whole.fetch(np.arange(whole.num_examples))
  kept = np.flatnonzero(np.isin(labels, [5, 6, 7, 8, 9]))
  assert subset.num_examples == len(kept) == 716 and subset.num_classes == 5
  sub_images, sub_labels = subset.fetch(np.arange(subset.num_examples))
  np.testing.assert_array_equal(sub_images, images[kept])
  np.testing.assert_array_equal(sub_labels, np.array([1, 3, 0, 4, 2])[labels[kept] - 5])
  assert subset.fingerprint == f'{whole.fingerprint}:classes=7,5,9,6,8'  # its own mean image
  config.class_subset = '5,12'
  with pytest.raises(DatasetError, match=r'has classes 0\.\.9, not \[12\]'):
    sources.get_source(config, 'train')
