"""The one exception type for mistakes a user can fix (bad file, bad flag)."""


class UserError(Exception):
  """A problem with the user's input, reported as one line without a traceback.

  The message must say what is wrong, where (file, line, flag), and what to do.
  Command-line tools catch it, print it to stderr and exit with status 2.
  """
