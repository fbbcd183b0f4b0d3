"""The package's shape, as docs/DESIGN.md states it: the module tables list exactly the modules
there are, every import goes down the layers the design lists (or stays in its own package), and
no import cycle exists."""

import ast
import os
import re

from helpers import REPO

PACKAGE = os.path.join(REPO, 'resnet_jax')
DESIGN = os.path.join(REPO, 'docs', 'DESIGN.md')


def package_modules() -> set[str]:
  """Every module as its path under resnet_jax/ without '.py': 'main', 'models/resnet', ..."""
  found = set()
  for folder, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith('.py') and f != '__init__.py':
        found.add(os.path.relpath(os.path.join(folder, f[:-3]), PACKAGE).replace(os.sep, '/'))
  return found


def _imported(node, modules: set[str]) -> set[str]:
  """The package modules one import statement names."""
  if isinstance(node, ast.ImportFrom) and (node.module or '').split('.')[0] == 'resnet_jax':
    base = node.module.split('.')[1:]
    names = {'/'.join([*base, alias.name]) for alias in node.names}
    return (names & modules) or ({'/'.join(base)} & modules)
  if isinstance(node, ast.Import):
    return {'/'.join(a.name.split('.')[1:]) for a in node.names} & modules
  return set()


def package_imports() -> dict[str, set[str]]:
  """Module -> the package modules it imports, at module level or inside functions alike."""
  modules = package_modules()
  graph = {}
  for name in modules:
    with open(os.path.join(PACKAGE, f'{name}.py')) as f:
      tree = ast.parse(f.read())
    graph[name] = set().union(*(_imported(node, modules) for node in ast.walk(tree))) - {name}
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


def design_layers() -> list[set[str]]:
  """DESIGN.md's layers, top first: each a set of packages ('train/') and top-level modules."""
  with open(DESIGN) as f:
    block = re.search(r'```text\nlayers, top first:\n(.*?)```', f.read(), flags=re.S).group(1)
  layers = []
  for line in block.strip().splitlines():
    members = line.split('#')[0].split(':', 1)[1]
    layers.append(set(members.replace(',', ' ').split()))
  return layers


def unit(module: str) -> str:
  """What a layer lists a module by: its package ('data/') or, at the top level, its name."""
  return module.split('/')[0] + '/' if '/' in module else module


def layer_violations(graph: dict[str, set[str]], layers: list[set[str]]) -> list[str]:
  """Imports that go up the layers, or across between two packages of one layer."""
  rank = {member: i for i, layer in enumerate(layers) for member in layer}
  wrong = []
  for module, targets in sorted(graph.items()):
    for target in sorted(targets):
      a, b = unit(module), unit(target)
      if a != b and rank[b] <= rank[a] and (rank[b] < rank[a] or a.endswith('/')):
        wrong.append(f'{module} imports {target}')
  return wrong


def test_no_import_cycles():
  graph = package_imports()
  assert graph['train/loop'] >= {'train/experiment'} and 'train/loop' not in graph['evaluate']
  assert {'train/network', 'data/sources'} <= graph['train/experiment']
  assert find_cycle(graph) == [], ' -> '.join(find_cycle(graph))
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']


def test_imports_go_down_the_layers():
  graph, layers = package_imports(), design_layers()
  listed = set().union(*layers)
  assert listed == {unit(m) for m in graph}, 'docs/DESIGN.md layers: listed != present'
  assert layer_violations(graph, layers) == []
  # The check itself: an upward import, and one across two packages of a layer, are caught.
  toy = [{'main'}, {'train/'}, {'models/', 'data/'}, {'errors'}]
  assert layer_violations({'models/a': {'train/b'}, 'train/b': set()}, toy) == [
    'models/a imports train/b'
  ]
  assert layer_violations({'data/a': {'models/b'}, 'models/b': {'errors'}}, toy) == [
    'data/a imports models/b'
  ]


def test_design_lists_every_module():
  with open(DESIGN) as f:
    design = f.read()
  listed = set(re.findall(r'^\| `([\w/]+)\.py` \|', design, flags=re.M))
  assert listed == package_modules(), 'docs/DESIGN.md module tables are out of date'
