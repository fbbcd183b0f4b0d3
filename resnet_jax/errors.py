"""The project's error for what a user can fix (reported by ``cli`` in one line, exit code 2)."""


class UserError(Exception):
  """Something the user can fix; the message says what was wrong and what to do."""
