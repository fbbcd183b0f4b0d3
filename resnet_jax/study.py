"""Runs every run of a study (configs/experiments/*.py) in turn, one workdir each, resumably.

  python -m resnet_jax.study --study=configs/experiments/digits_degradation.py --root=DIR \\
    [--only=plain20,resnet20] [--config.FIELD=VALUE ...]

A study module lists its runs in ``RUNS`` and builds each with ``get_config(run)``. Run ``r``
trains with ``python -m resnet_jax.main --config=STUDY:r --workdir=ROOT/r`` plus the extra
``--config.`` flags, so running the same command again resumes the unfinished runs (finished
ones only confirm their final step). The first failing run stops the study with its exit code.
A study may name, in ``STARTS_FROM``, runs that start from an earlier run's weights: they get
``--config.init_from=ROOT/<that run>``.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys

from resnet_jax import cli, storage


def _module(path: str):
  spec = importlib.util.spec_from_file_location('_resnet_jax_study', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def study_runs(path: str) -> tuple[str, ...]:
  return tuple(_module(path).RUNS)


def starts_from(path: str) -> dict[str, str]:
  """The study's ``STARTS_FROM`` ({run: earlier run}): a run that starts from another run's
  weights, ``--config.init_from=ROOT/<earlier run>`` (a transfer study's fine-tunes)."""
  return dict(getattr(_module(path), 'STARTS_FROM', {}))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--study', required=True, help='configs/experiments/NAME.py')
  parser.add_argument('--root', required=True, help='one workdir per run under this (or gs://)')
  parser.add_argument('--only', default='', help='comma-separated subset of the runs')
  args, extra = parser.parse_known_args(argv)
  if not storage.path(args.study).is_file():
    cli.fail(f'--study={args.study}: no such file (studies are in configs/experiments/).')
  runs = study_runs(args.study)
  chosen = [r for r in args.only.split(',') if r] or list(runs)
  unknown = sorted(set(chosen) - set(runs))
  if unknown:
    cli.fail(f'--only: {unknown} are not runs of {args.study}; its runs: {", ".join(runs)}.')
  sources = starts_from(args.study)
  for run in chosen:
    workdir = str(storage.path(args.root) / run)
    if run in sources:
      extra_run = [f'--config.init_from={storage.path(args.root) / sources[run]}']
    else:
      extra_run = []
    print(f'study {args.study}: run {run} -> {workdir}', flush=True)
    command = [
      sys.executable,
      '-m',
      'resnet_jax.main',
      f'--config={args.study}:{run}',
      f'--workdir={workdir}',
      *extra_run,
      *extra,
    ]
    code = subprocess.call(command)
    if code:
      print(f'study stopped: run {run} exited with {code}', file=sys.stderr, flush=True)
      sys.exit(code)


if __name__ == '__main__':
  main()
