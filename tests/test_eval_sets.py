"""Several evaluation sets per run (``eval_sets``): ReaL's label sets through TFDS's own
imagenet2012_real builder, scored as the ReaL paper scores them; named sets in the eval record,
the log and ``report``."""

import io
import json
import re
import tarfile

import jax
import numpy as np
import pytest
from etils import epath
from helpers import mean_of, run_main, sample_photos, tiny, tiny_flags
from PIL import Image
from tensorflow_datasets.datasets.imagenet2012_real import imagenet2012_real_dataset_builder

from resnet_jax import config_check, report
from resnet_jax.data import eval_sets, input_pipeline, sources
from resnet_jax.data.input_pipeline import Layout
from resnet_jax.train import experiment, metrics, network, scoring

NUM_IMAGES = 12


class TinyReal(imagenet2012_real_dataset_builder.Builder):
  """TFDS's imagenet2012_real builder (its features, its reading of ILSVRC2012_img_val.tar and of
  the labels file) with real.json read from the folder the test writes instead of GitHub."""

  pkg_dir_path = epath.Path(imagenet2012_real_dataset_builder.__file__).parent  # its metadata

  def _get_real_labels(self, dl_manager):
    sets = json.loads((dl_manager.manual_dir / 'real.json').read_text())
    return {f'ILSVRC2012_val_{i + 1:08}.JPEG': labels for i, labels in enumerate(sets)}


def write_real(data_dir, label_sets, file_format):
  """ImageNet's validation tar (its own layout: flat ILSVRC2012_val_NNNNNNNN.JPEG) of photo crops
  of varied sizes, and ``label_sets`` as real.json; prepared by TinyReal into ``data_dir``."""
  manual = data_dir / 'downloads' / 'manual'
  manual.mkdir(parents=True, exist_ok=True)
  photos, rng = sample_photos(), np.random.default_rng(0)
  with tarfile.open(manual / 'ILSVRC2012_img_val.tar', 'w') as tar:
    for i in range(NUM_IMAGES):
      h, w = (int(v) for v in rng.integers(24, 40, size=2))
      y, x = (int(v) for v in rng.integers(0, 300, size=2))
      buffer = io.BytesIO()
      Image.fromarray(photos[i % 2][y : y + h, x : x + w]).save(buffer, 'JPEG')
      info = tarfile.TarInfo(f'ILSVRC2012_val_{i + 1:08}.JPEG')
      info.size = buffer.tell()
      tar.addfile(info, io.BytesIO(buffer.getvalue()))
  (manual / 'real.json').write_text(json.dumps(label_sets))
  TinyReal(data_dir=str(data_dir), file_format=file_format).download_and_prepare()
  return str(data_dir)


def real_config(tmp_path, data_dir, **overrides):
  """The tiny digits run with a 1000-way head (ReaL's classes) and the ReaL set beside its own."""
  return tiny(
    tmp_path,
    num_classes=1000,
    eval_sets='real=tiny_real@validation',
    data_dir=data_dir,
    **overrides,
  )


def test_label_set_errors_equal_a_numpy_reference():
  rng = np.random.default_rng(0)
  probs = rng.random((64, 10)).astype(np.float32)
  sets = np.full((64, 4), -1, np.int32)
  for row, k in zip(sets, rng.integers(0, 5, size=64), strict=True):
    row[:k] = rng.choice(10, size=k, replace=False)
  mask = (rng.random(64) < 0.9).astype(np.float32)
  top1, top5, scored = jax.device_get(scoring.label_set_errors(probs, sets, mask))
  ranked = np.argsort(-probs, axis=1)
  for i in range(64):
    labels = set(sets[i][sets[i] >= 0])
    keep = bool(mask[i]) and bool(labels)
    assert scored[i] == keep
    assert top1[i] == (keep and ranked[i, 0] not in labels)
    assert top5[i] == (keep and not labels & set(ranked[i, :5]))
  assert 0 < top1.sum() < scored.sum() and top5.sum() < top1.sum()  # hits, misses, top-5 hits


@pytest.mark.parametrize('file_format', ['array_record', 'tfrecord'])
def test_real_label_sets_are_read_on_every_path_and_padded_for_two_processes(file_format, tmp_path):
  """Each image's set, whichever way the split is read; evaluation batches of 1 and 2 processes
  cover each image once with its own set (the padding rows masked)."""
  sets = [[*range(i % 4), 100 + i] for i in range(NUM_IMAGES)]  # 1..4 labels, one its own
  data_dir = write_real(tmp_path / 'tfds', sets, file_format)
  for in_memory in (0, 2**30):
    c = real_config(tmp_path, data_dir, in_memory_max_bytes=in_memory, eval_batch_size=8)
    ((name, real),) = eval_sets.get_sources(c)
    assert (name, real.name, real.num_examples, real.num_classes) == ('real', 'tiny_real', 12, 1000)
    for processes in (1, 2):
      seen = []
      for p in range(processes):
        ds, steps = input_pipeline.eval_dataset(c, real, Layout(8, p, processes), mean_of(c))
        batches = list(ds.as_numpy_iterator())
        assert len(batches) == steps
        seen += [list(r[r >= 0]) for b in batches for r in b['label'][b['mask']]]
      assert sorted(seen, key=lambda s: s[-1]) == sets, (in_memory, processes)


@pytest.mark.slow
def test_real_scores_count_a_prediction_in_the_images_set_and_leave_out_empty_sets(tmp_path):
  """The run's own net scores ReaL: label sets built from its own top-5 on each image give the
  top-1 and top-5 errors and the count they must (3 of 12 images unlabelled)."""
  # First, the net's ranking of each image: each image's set names it (class 100 + i).
  first = write_real(tmp_path / 'first', [[100 + i] for i in range(NUM_IMAGES)], 'array_record')
  c = real_config(tmp_path, first)
  run = experiment.Experiment(c, str(tmp_path / 'run'))
  state = run.data_parallel.host(run.initial_state())
  model = network.build_model(c, 1000, train_bn_axis=False)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  ranked = {}
  ds, _ = input_pipeline.eval_dataset(c, run.eval_sets[0][1], Layout(64, 0, 1), mean_of(c))
  for batch in ds.as_numpy_iterator():
    logits = np.asarray(model.apply(variables, batch['image'], train=False))
    for row, labels, real in zip(logits, batch['label'], batch['mask'], strict=True):
      if real:
        order = np.argsort(-row)
        assert row[order[0]] - row[order[1]] > 1e-4  # no near-tie to flip on other devices
        ranked[int(labels[0]) - 100] = order
  run.checkpointer.close()
  assert sorted(ranked) == list(range(NUM_IMAGES))
  assert len({tuple(order[:5]) for order in ranked.values()}) > 1  # it ranks images apart

  def label_set(i):
    order = ranked[i]
    return [
      [],  # unlabelled: left out
      [int(order[500]), int(order[0])],  # right at top-1
      [int(order[2])],  # right at top-5 only
      [int(order[999])],  # wrong
    ][i % 4]

  second = write_real(
    tmp_path / 'second', [label_set(i) for i in range(NUM_IMAGES)], 'array_record'
  )
  run = experiment.Experiment(real_config(tmp_path, second), str(tmp_path / 'run'))
  result = run.evaluate(run.initial_state())
  run.checkpointer.close()
  assert result['real/num_examples'] == 9
  assert result['real/top1_err'] == pytest.approx(6 / 9, abs=1e-7)
  assert result['real/top5_err'] == pytest.approx(3 / 9, abs=1e-7)
  assert 'real/loss' not in result  # a set of labels has no single target's loss
  assert result['num_examples'] == 360  # the run's own eval split, scored as before


@pytest.mark.slow
def test_named_sets_are_logged_and_reported_beside_the_eval_split(tmp_path):
  """`main` as a user runs it, with the eval split scored a second time under a name: the same
  figures, in metrics.jsonl and as report's 'center on NAME' row."""
  workdir = tmp_path / 'run'
  flags = tiny_flags(tmp_path, num_train_steps=8, eval_sets='again=test')
  done = run_main(workdir, *flags)
  assert done.returncode == 0, done.stdout + done.stderr
  (last,) = [r for r in metrics.read(str(workdir)) if r['split'] == 'eval']
  for key in ('loss', 'top1_err', 'top5_err', 'num_examples'):
    assert last[f'again/{key}'] == last[key], key
  assert 'eval step 8 on again: top1_err' in done.stdout
  rows = report.run_rows(str(workdir))
  assert [r['protocol'] for r in rows] == ['center', 'center on again']
  assert rows[0]['top-1 err'] == rows[1]['top-1 err']
  assert rows[1]['paper top-1'] == '-'


@pytest.mark.parametrize(
  'value, says',
  [
    ('v2=imagenet_v2', None),  # a split of the run's own dataset named 'imagenet_v2'
    ('v2=@test', 'is not NAME=[DATASET@]SPLIT'),
    ('imagenet_v2@test', 'is not NAME=[DATASET@]SPLIT'),
    ('ema=test', "'ema' cannot name a set"),
    ('2x=test', "'2x' cannot name a set"),
    ('a=test,a=train', "'a' names two sets"),
  ],
)
def test_eval_sets_rule(value, says, tmp_path):
  c = tiny(tmp_path, eval_sets=value)
  if says is None:
    config_check.check(c, num_devices=8)
    return
  with pytest.raises(config_check.ConfigError, match=f'--config.eval_sets=.*{re.escape(says)}'):
    config_check.check(c, num_devices=8)


def test_a_set_of_other_classes_is_refused_with_one_line(tmp_path):
  data_dir = write_real(tmp_path / 'tfds', [[1]] * NUM_IMAGES, 'tfrecord')
  c = tiny(tmp_path, eval_sets='real=tiny_real@validation', data_dir=data_dir)  # a 10-way net
  says = r"set 'real' \(tiny_real\) has 1000 classes and the net 10"
  with pytest.raises(sources.source.DatasetError, match=says):
    experiment.Experiment(c, str(tmp_path / 'run'))


def test_eval_sets_parse():
  assert eval_sets.parse(' v2=imagenet_v2/matched-frequency@test , mini=train[99%:] ') == [
    eval_sets.EvalSet('v2', 'imagenet_v2/matched-frequency', 'test'),
    eval_sets.EvalSet('mini', '', 'train[99%:]'),
  ]
  assert eval_sets.parse('') == []
