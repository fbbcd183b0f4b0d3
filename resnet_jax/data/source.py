"""What a dataset split is to the input pipeline: a ``Source`` of examples, by index.

A ``Source`` answers ``fetch(indices) -> (data, labels)`` for any example indices (random access),
which lets the input pipeline follow one global order whatever the number of processes. ``data``
is either decoded uint8 images or encoded bytes/paths (``encoded``), finished by ``load`` inside
tf.data. TFDS datasets stored only as TFRecord have no random access; they come as a ``stream``
that each process reads its own equal share of.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from resnet_jax.errors import UserError

FETCH_CHUNK = 64  # Examples fetched per call into a random-access source (read in parallel).


class DatasetNotFoundError(UserError):
  """The dataset is not prepared where the config points; the message says how to prepare it."""


class DatasetError(UserError):
  """The dataset is there but wrong (classes missing or empty, files that do not decode)."""


@dataclasses.dataclass(frozen=True)
class StreamShare:
  """One process's share of a split that has no random access (TFDS stored as TFRecord).

  Attributes:
    dataset: tf.data of (data, label), in a fixed order for evaluation.
    count: examples in this share.
    max_count: the largest share of any process; evaluation pads every process up to it.
  """

  dataset: tf.data.Dataset
  count: int
  max_count: int


@dataclasses.dataclass(frozen=True)
class Source:
  """One split of a dataset.

  Attributes:
    name: dataset name, for messages.
    num_examples: examples in the split.
    num_classes: classifier width the labels need.
    encoded: ``data`` is encoded image bytes (or file paths, see ``load``) rather than uint8 HxWx3.
    fetch: numpy indices -> (data, int32 labels); None for stream-only sources.
    load: tf function turning fetched ``data`` into what ``augment`` takes (reads files).
    stream: (process_index, process_count, train) -> this process's ``StreamShare``, for TFDS
      datasets without random access.
    label_width: 0: one label per example; W: a set of up to W labels per example, padded with
      -1 (ReaL's, ``eval_sets.py``).
  """

  name: str
  num_examples: int
  num_classes: int
  encoded: bool
  fetch: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None
  load: Callable[[Any], Any] = lambda data: data
  stream: Callable[..., StreamShare] | None = None
  data_dtype: Any = tf.uint8
  fingerprint: str = ''  # changes whenever the examples do (keys caches such as the mean image)
  # After a decoding error: () -> a message naming the files that do not decode ('' if none).
  diagnose: Callable[[], str] | None = None
  label_width: int = 0

  def fetch_tf(self, indices):
    """``fetch`` as a tf op on a 1-D batch of indices, with static ranks for what follows."""
    data, labels = tf.numpy_function(
      self.fetch, [indices], (self.data_dtype, tf.int32), stateful=False
    )
    data.set_shape([None] if self.encoded else [None, None, None, 3])
    labels.set_shape([None, self.label_width] if self.label_width else [None])
    return data, labels


def array_source(name, images, labels, num_classes, encoded) -> Source:
  def fetch(indices):
    return images[indices], labels[indices]

  dtype = tf.string if encoded else tf.uint8
  width = labels.shape[1] if labels.ndim == 2 else 0
  return Source(name, len(labels), num_classes, encoded, fetch, data_dtype=dtype, label_width=width)


# The widest label set a source holds, padded with -1; an example with more is refused, not cut.
LABEL_SET_WIDTH = 16


def label_sets(sets) -> np.ndarray:
  """Variable-length label sets as an int32 [n, LABEL_SET_WIDTH] array padded with -1."""
  out = np.full((len(sets), LABEL_SET_WIDTH), -1, np.int32)
  for row, labels in zip(out, sets, strict=True):
    if len(labels) > LABEL_SET_WIDTH:
      raise DatasetError(
        f'An example has {len(labels)} labels; label sets of at most {LABEL_SET_WIDTH} are read.'
      )
    row[: len(labels)] = labels
  return out


def numpy_batches(ds: tf.data.Dataset, source: Source):
  """``ds`` as numpy; a decoding failure becomes a UserError naming the files, if it can."""
  iterator = ds.as_numpy_iterator()
  while True:
    try:
      yield next(iterator)
    except StopIteration:
      return
    except tf.errors.InvalidArgumentError as e:
      message = source.diagnose() if source.diagnose else ''
      if message:
        raise DatasetError(message) from e
      raise
