"""Input pipeline: shapes, augmentation semantics, test views, exact counts, global order."""

import numpy as np
import pytest
import tensorflow as tf
from helpers import digits_config, folder_config, mean_of, sample_photos, write_image_folder

from resnet_jax import augment, input_pipeline, mean_image, parallel, sources
from resnet_jax.input_pipeline import Layout


def first_batch(ds):
  return next(ds.as_numpy_iterator())


def test_digits_train_and_eval_shapes(tmp_path):
  c = digits_config(tmp_path)
  src = sources.get_source(c, 'train')
  assert (src.num_examples, src.num_classes) == (1437, 10)
  batch = first_batch(input_pipeline.train_dataset(c, src, Layout(64, 0, 1), mean=mean_of(c)))
  assert batch['image'].shape == (64, 16, 16, 3) and batch['image'].dtype == np.float32
  assert batch['label'].dtype == np.int32 and set(batch['label']) <= set(range(10))


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
    # Same images (augmentation included) and labels, in the same rows.
    np.testing.assert_array_equal(np.concatenate([a['image'], b['image']]), ours['image'])
    np.testing.assert_array_equal(np.concatenate([a['label'], b['label']]), ours['label'])
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
    np.testing.assert_array_equal(a['image'], b['image'])
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


def test_scale_augmentation_short_side_range_on_real_photos():
  photo = tf.io.encode_jpeg(sample_photos()[0], quality=90)  # 427 x 640
  sides = []
  for i in range(300):
    seeds = tf.random.experimental.stateless_split(tf.constant([0, i], tf.int64), 3)
    s = int(tf.random.stateless_uniform([], seeds[0], 256, 481, dtype=tf.int32))
    sides.append(s)
    out = augment.scale_crop(
      photo, True, tf.constant([0, i], tf.int64), crop=224, scale_range=(256, 480)
    )
    assert out.shape == (224, 224, 3)
  assert min(sides) < 270 and max(sides) > 465 and min(sides) >= 256 and max(sides) <= 480
  # The crop window covers 224/S of the shorter side: check it on the window function.
  h, w = tf.constant(427), tf.constant(640)
  for s in (256, 480):
    _, _, size_y, size_x = augment._window_of_resized(h, w, s, 0, 0, 224)
    assert int(size_y) == round(224 * 427 / s) and int(size_x) == int(size_y)


def test_decoding_the_window_equals_resize_then_crop():
  photo = sample_photos()[1].astype(np.float32)
  encoded = tf.io.encode_png(sample_photos()[1])
  view = augment.center_view(encoded, True, resize=427, crop=400).numpy()  # no resizing needed
  y, x = (427 - 400) // 2, (640 - 400) // 2
  np.testing.assert_allclose(view, photo[y : y + 400, x : x + 400], atol=1e-3)


def test_flip_and_lighting_change_only_what_they_should():
  image = tf.constant(sample_photos()[0][:64, :64].astype(np.float32))
  seed = tf.constant([1, 2], tf.int64)
  flipped = [augment.random_flip(image, tf.constant([s, 0], tf.int64)).numpy() for s in range(20)]
  kinds = {('same' if np.array_equal(f, image) else 'mirror') for f in flipped}
  assert kinds == {'same', 'mirror'}
  for f in flipped:
    assert np.array_equal(f, image) or np.array_equal(f, image.numpy()[:, ::-1])
  lit = augment.lighting(image, seed, std=0.1).numpy()
  delta = lit - image.numpy()
  np.testing.assert_allclose(delta, np.broadcast_to(delta[0, 0], delta.shape), atol=1e-3)
  alpha = tf.random.stateless_normal([3], seed, stddev=0.1).numpy()
  expected = np.array(augment.IMAGENET_EIGVEC) @ (alpha * np.array(augment.IMAGENET_EIGVAL))
  np.testing.assert_allclose(delta[0, 0], expected, rtol=1e-4)


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


def test_missing_datasets_say_what_to_do(tmp_path):
  with pytest.raises(sources.DatasetNotFoundError, match='downloads/manual'):
    sources.tfds_source('imagenet2012', str(tmp_path), 'train', in_memory_max_bytes=0, seed=0)
  with pytest.raises(sources.DatasetNotFoundError, match='train/<class>'):
    sources.folder(str(tmp_path), 'train')


def test_batch_not_divisible_is_a_clear_error():
  with pytest.raises(ValueError, match='not divisible by the 8 devices'):
    parallel.check_batch(100, 8, 1)
