"""More evaluation sets than ``eval_split``: ImageNet-V2, ReaL, a minival, scored beside it.

``config.eval_sets`` names them as ``NAME=[DATASET@]SPLIT`` entries, comma-separated (big_vision's
``config.evals``, in one flag): ``v2=imagenet_v2@test,real=imagenet2012_real@validation``. A
DATASET is a TFDS name read from ``data_dir``; without one the set is another split of this run's
own dataset. Every set is scored with the run's test protocol; its figures are logged as
``NAME/top1_err`` and so on.

A set whose examples carry a set of labels (TFDS's ``imagenet2012_real``: the ``real_label``
sequence of Beyer et al. 2020, "Are we done with ImageNet?") is scored as ReaL is: a prediction
is right when it is one of the image's labels, and images with an empty label set are left out.
"""

from __future__ import annotations

import dataclasses
import re

# The names the eval record already uses for its own figures.
RESERVED = frozenset({'ema', 'fewshot', 'train', 'eval'})


@dataclasses.dataclass(frozen=True)
class EvalSet:
  name: str
  dataset: str  # '' = the run's own dataset
  split: str


def parse(text: str) -> list[EvalSet]:
  """``text``'s entries, in order; ValueError says what is wrong with one."""
  sets = []
  for entry in (e.strip() for e in text.split(',') if e.strip()) if text.strip() else ():
    name, equals, where = (part.strip() for part in entry.partition('='))
    dataset, at, split = (part.strip() for part in where.rpartition('@'))
    if not equals or not split or (at and not dataset):
      raise ValueError(f'{entry!r} is not NAME=[DATASET@]SPLIT, e.g. v2=imagenet_v2@test')
    if not re.fullmatch(r'[A-Za-z][A-Za-z0-9_-]*', name) or name in RESERVED:
      raise ValueError(
        f'{name!r} cannot name a set: a letter, then letters, digits, _ or -; not one of '
        f'{", ".join(sorted(RESERVED))}'
      )
    if name in (s.name for s in sets):
      raise ValueError(f'{name!r} names two sets')
    sets.append(EvalSet(name, dataset, split))
  return sets


def get_sources(config) -> list:
  """(name, ``Source``) of each of ``config.eval_sets``."""
  from resnet_jax.data import sources  # tensorflow: not for the config rule, which parses only

  out = []
  for eval_set in parse(config.eval_sets):
    own = config
    if eval_set.dataset:
      own = config.copy_and_resolve_references()  # another dataset, read whole
      own.dataset, own.class_subset = eval_set.dataset, ''
    out.append((eval_set.name, sources.get_source(own, eval_set.split)))
  return out


def check_classes(named_sources, num_classes: int):
  """Refuses a set whose labels do not index the run's classifier (ReaL's 1000 classes under a
  10-class net would score nonsense, not fail)."""
  from resnet_jax.data import source

  for name, found in named_sources:
    if found.num_classes != num_classes:
      raise source.DatasetError(
        f'--config.eval_sets: set {name!r} ({found.name}) has {found.num_classes} classes and '
        f'the net {num_classes}: evaluate a set of the same classes.'
      )
