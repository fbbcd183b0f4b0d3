"""Prints the commands of the README's "Set up" section, one a line, exactly as written.

.ci/run runs them in a fresh virtualenv, so CI checks what a newcomer who follows the README gets
(no torch, no pinned versions, nothing this machine installed by hand).
"""

import pathlib
import re
import sys

text = (pathlib.Path(__file__).parent.parent / 'README.md').read_text()
section = text.split('\n## Set up\n', 1)[1].split('\n## ', 1)[0]
blocks = re.findall(r'```bash\n(.*?)```', section, flags=re.S)
commands = [line.strip() for block in blocks for line in block.strip().splitlines()]
if len(commands) != 2 or not all(c.startswith('pip install') for c in commands):
  sys.exit(f'.ci/readme_setup.py: expected the two set-up commands, found {commands}')
print('\n'.join(commands))
