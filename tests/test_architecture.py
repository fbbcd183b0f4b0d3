"""The package's shape: no import cycles, and docs/DESIGN.md lists exactly the modules there are."""

import ast
import os
import re

from helpers import REPO

PACKAGE = os.path.join(REPO, 'resnet_jax')


def package_imports() -> dict[str, set[str]]:
  """Module -> the package modules it imports, at module level or inside functions alike."""
  modules = {f[:-3] for f in os.listdir(PACKAGE) if f.endswith('.py') and f != '__init__.py'}
  graph = {}
  for name in modules:
    with open(os.path.join(PACKAGE, f'{name}.py')) as f:
      tree = ast.parse(f.read())
    targets = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module == 'resnet_jax':
        targets |= {alias.name for alias in node.names}
      elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith('resnet_jax.'):
        targets.add(node.module.split('.')[1])
      elif isinstance(node, ast.Import):
        targets |= {a.name.split('.')[1] for a in node.names if a.name.startswith('resnet_jax.')}
    graph[name] = targets & modules
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
  """One import cycle as a path (first module repeated at the end), or []."""
  state, stack = {}, []

  def visit(node):
    state[node] = 'open'
    stack.append(node)
    for target in sorted(graph[node]):
      if state.get(target) == 'open':
        return [*stack[stack.index(target) :], target]
      if target not in state and (cycle := visit(target)):
        return cycle
    state[node] = 'done'
    stack.pop()
    return []

  for node in sorted(graph):
    if node not in state and (cycle := visit(node)):
      return cycle
  return []


def test_no_import_cycles():
  graph = package_imports()
  assert graph['train'] >= {'experiment'} and 'train' not in graph['evaluate']
  assert find_cycle(graph) == [], ' -> '.join(find_cycle(graph))
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']


def test_design_lists_every_module():
  with open(os.path.join(REPO, 'docs', 'DESIGN.md')) as f:
    design = f.read()
  listed = set(re.findall(r'^\| `(\w+)\.py` \|', design, flags=re.M))
  assert listed == set(package_imports()), 'docs/DESIGN.md module table is out of date'
