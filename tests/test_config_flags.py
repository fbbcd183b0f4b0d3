"""Every config field of every recipe can be set from the command line, through absl's parser."""

import ast
import glob
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from absl import flags
from ml_collections import config_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(
  os.path.relpath(p, REPO)
  for p in glob.glob(os.path.join(REPO, 'configs', '*.py'))
  if not p.endswith('__init__.py')
)
# A recipe with a config argument is launched with one (configs/cifar10.py:56).
ARGUMENTS = {'configs/cifar10.py': ':56'}


def parse(recipe: str, *overrides: str):
  argv = ['prog', f'--config={recipe}{ARGUMENTS.get(recipe, "")}', *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file(
    'config', None, 'config', flag_values=values, lock_config=True, sys_argv=argv
  )
  values(argv)
  return values.config


def another_value(value):
  """A different value of the same type, as a user would type it."""
  if isinstance(value, bool):
    return str(not value), not value
  if isinstance(value, int):
    return str(value + 1), value + 1
  if isinstance(value, float):
    return repr(value * 2 + 0.5), value * 2 + 0.5
  if isinstance(value, str):
    return 'gs://bucket/some path', 'gs://bucket/some path'
  if isinstance(value, tuple):
    changed = tuple(type(v)(v * 2 + 1) for v in value)
    return str(changed), changed
  raise AssertionError(f'a field of type {type(value).__name__} cannot be typed on a command line')


@pytest.mark.parametrize('recipe', RECIPES)
def test_every_field_of_every_recipe_parses_from_the_command_line(recipe):
  config = parse(recipe)
  fields = config.to_dict()
  assert len(fields) > 60
  for name, value in fields.items():
    typed, expected = another_value(value)
    assert parse(recipe, f'--config.{name}={typed}')[name] == expected, name


def test_the_readme_data_dir_override_parses_for_every_recipe():
  for recipe in RECIPES:
    assert parse(recipe, '--config.data_dir=/data/tfds').data_dir == '/data/tfds'


@pytest.mark.slow
def test_every_command_answers_help_with_its_usage_and_exit_code_0():
  commands = ['main', 'evaluate', 'convert', 'export', 'benchmark', 'prepare', 'mean_image']
  commands += ['summary', 'plot', 'report', 'study']
  env = dict(os.environ, PYTHONPATH=REPO)

  def ask(command):
    return subprocess.run(
      [sys.executable, '-m', f'resnet_jax.{command}', '--help'],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
    )

  with ThreadPoolExecutor(3) as pool:
    answers = dict(zip(commands, pool.map(ask, commands), strict=True))
  for command, answer in answers.items():
    assert answer.returncode == 0, (command, answer.stderr[-2000:])
    with open(os.path.join(REPO, 'resnet_jax', f'{command}.py')) as f:  # (importing defines flags)
      first_line = ast.get_docstring(ast.parse(f.read())).splitlines()[0]
    said = ' '.join((answer.stdout + answer.stderr).split())  # argparse wraps its description
    assert ' '.join(first_line.split()) in said, (command, said[:500])
    assert 'Traceback' not in answer.stderr, command
