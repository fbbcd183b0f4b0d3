"""Prints constraints.txt: the installed version of every package that
deep-residual-jax[dev,convert,export] (resnet_jax's distribution) needs.

python .ci/constraints.py > constraints.txt   (after the test suite has passed)
"""

import datetime
import importlib.metadata as metadata
import re

from packaging.requirements import Requirement


def closure(root: str, extras: set[str]) -> dict[str, str]:
  """Installed name -> version for ``root[extras]`` and everything it requires, recursively."""
  versions, seen, todo = {}, {}, [(root, extras)]
  while todo:
    name, wanted = todo.pop()
    try:
      dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
      continue
    key = re.sub(r'[-_.]+', '-', dist.metadata['Name']).lower()
    if key in seen and wanted <= seen[key]:
      continue
    seen[key] = seen.get(key, set()) | wanted
    versions[dist.metadata['Name']] = dist.version.split('+')[0]  # torch's '+cpu' build label
    for line in dist.requires or []:
      req = Requirement(line)
      if req.marker and not any(req.marker.evaluate({'extra': e}) for e in wanted | {''}):
        continue
      todo.append((req.name, set(req.extras)))
  versions.pop(root, None)
  return versions


if __name__ == '__main__':
  print(
    f'# The versions the test suite last passed with (CPU, Python 3.11, {datetime.date.today()}).\n'
    "#   pip install torch==2.13.0 && pip install -c constraints.txt -e '.[dev,convert]'\n"
    '# Lower bounds live in pyproject.toml. Regenerate: python .ci/constraints.py > constraints.txt'
  )
  for name, version in sorted(
    closure('deep-residual-jax', {'dev', 'convert', 'export'}).items(),
    key=lambda item: item[0].lower(),
  ):
    print(f'{name}=={version}')
