"""Multi-scale testing sees whole images, unpadded: scores equal direct fully-convolutional ones."""

import io

import jax
import numpy as np
import pytest
import tensorflow as tf
from helpers import sample_photos
from PIL import Image

from configs import default
from resnet_jax.data import bundled, input_pipeline, multiscale
from resnet_jax.data.input_pipeline import Layout
from resnet_jax.data.source import Source, array_source
from resnet_jax.models import registry
from resnet_jax.train import scoring

# (height, width) of the test photos: a square, a 4:3 landscape seen whole, a 1.4 landscape
# cropped to 4:3, a 3:2 portrait seen whole, and more squares to fill other batches.
SHAPES = [(40, 40), (36, 48), (40, 56), (48, 32), (32, 32), (44, 44)]


def png(array) -> bytes:
  out = io.BytesIO()
  Image.fromarray(array).save(out, format='PNG')
  return out.getvalue()


def photo_source(shapes) -> tuple[Source, list[np.ndarray]]:
  photo = sample_photos()[0]
  images = [photo[10 * i : 10 * i + h, 20 * i : 20 * i + w] for i, (h, w) in enumerate(shapes)]
  data = np.array([png(image) for image in images], dtype=object)
  labels = np.arange(len(shapes), dtype=np.int32)  # unique: a label names its image
  return array_source('photos', data, labels, len(shapes), True), images


def config(sizes=(32,)):
  c = default.get_config()
  c.eval_mode, c.multiscale_sizes, c.normalization = 'multiscale', sizes, 'none'
  return c


@pytest.fixture(scope='module')
def net():
  model = registry.get_model('cifar_resnet8', num_classes=3)
  variables = model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32), train=False)
  return model, variables


def scores_by_label_order(model, variables, c, source, batch) -> dict[int, np.ndarray]:
  """Each real example's multi-scale probabilities, keyed by its label (unique per image)."""
  ds, steps = input_pipeline.eval_dataset(c, source, Layout(batch, 0, 1))
  out, n_batches = [], 0
  for b in ds.as_numpy_iterator():
    probs = np.asarray(scoring.view_probs(model, variables, b, c))
    n_batches += 1
    real = b['mask']
    out.extend(zip(b['label'][real].tolist(), probs[real], strict=True))
  assert n_batches == steps
  return dict(out)


def direct_score(model, variables, view: np.ndarray) -> np.ndarray:
  """The network on one whole view and on its mirror image, softmax averaged, computed directly."""
  both = np.stack([view, view[:, ::-1]]).astype(np.float32)
  return np.asarray(jax.nn.softmax(model.apply(variables, both, train=False)).mean(axis=0))


def resized(image: np.ndarray, short: int) -> np.ndarray:
  h, w = image.shape[:2]
  factor = short / min(h, w)
  size = [round(h * factor), round(w * factor)]
  return tf.image.resize(tf.constant(image, tf.float32), size, method='bilinear').numpy()


def test_buckets_keep_common_imagenet_shapes_whole():
  aspects = default.get_config().multiscale_aspects
  names = {
    b: multiscale.buckets(aspects)[multiscale.bucket_index(*b, aspects)]
    for b in [(375, 500), (500, 333), (500, 500), (400, 1000)]
  }
  assert names == {
    (375, 500): (False, 4 / 3),
    (500, 333): (True, 1.5),
    (500, 500): (False, 1.0),
    (400, 1000): (False, 1.5),  # beyond the last bucket: the long side is cropped to 3:2
  }
  assert multiscale.view_hw(224, (False, 4 / 3)) == (224, 298)
  assert multiscale.view_hw(240, (True, 1.5)) == (360, 240)


@pytest.mark.slow
def test_square_image_at_one_size_equals_the_fully_convolutional_score(net):
  model, variables = net
  source, images = photo_source(SHAPES)
  scores = scores_by_label_order(model, variables, config(), source, batch=2)
  assert sorted(scores) == list(range(len(SHAPES)))
  for i in (0, 4, 5):  # the squares
    expected = direct_score(model, variables, resized(images[i], 32))
    np.testing.assert_allclose(scores[i], expected, rtol=1e-5, atol=1e-6)
  # At shorter side 32 a 4:3 bucket is 32 x 42: a 36 x 48 image (32 x 43 resized) loses one
  # column, a 1.4 one (32 x 45) three, centred.
  np.testing.assert_allclose(
    scores[1], direct_score(model, variables, resized(images[1], 32)[:, :42]), rtol=1e-5, atol=1e-6
  )
  np.testing.assert_allclose(
    scores[2], direct_score(model, variables, resized(images[2], 32)[:, 1:43]), rtol=1e-5, atol=1e-6
  )
  # A 3:2 portrait at shorter side 32 is whole: 48 x 32.
  np.testing.assert_allclose(
    scores[3], direct_score(model, variables, resized(images[3], 32)), rtol=1e-5, atol=1e-6
  )


@pytest.mark.slow
def test_non_square_scores_do_not_depend_on_the_batch_they_came_in(net):
  model, variables = net
  c = config(sizes=(24, 32))
  source, _ = photo_source(SHAPES)
  together = scores_by_label_order(model, variables, c, source, batch=4)
  for i in (1, 2, 3):
    data, label = source.fetch(np.array([i]))
    alone_source = array_source('one', data, label, len(SHAPES), True)
    alone = scores_by_label_order(model, variables, c, alone_source, batch=4)
    assert list(alone) == [i]
    np.testing.assert_allclose(alone[i], together[i], rtol=1e-5, atol=1e-6)


def test_photos_scored_once_each_in_batches_of_one_shape():
  source = bundled.photos('test', 64)
  assert (source.num_examples, source.num_classes) == (64, 8)
  ds, steps = input_pipeline.eval_dataset(config(sizes=(16, 24)), source, Layout(8, 0, 1))
  batches = list(ds.as_numpy_iterator())
  assert len(batches) == steps
  shapes = {b['image_16'].shape[1:3] for b in batches}
  assert {(16, 16), (16, 21), (21, 16), (16, 24), (24, 16)} <= shapes  # both orientations
  labels = np.concatenate([b['label'][b['mask']] for b in batches])
  np.testing.assert_array_equal(np.sort(labels), np.sort(source.fetch(np.arange(64))[1]))
