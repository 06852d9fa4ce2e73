"""The one exception type for mistakes a user can fix (bad file, bad flag),
and the file system's refusals turned into it."""

import contextlib
import errno
import os


class UserError(Exception):
  """A problem with the user's input, reported as one line without a traceback.

  The message must say what is wrong, where (file, line, flag), and what to do.
  Command-line tools catch it, print it to stderr and exit with status 2.
  """


def write_error(e: BaseException) -> str | None:
  """The reason if `e` (or what caused it) is the file system refusing a
  write (full disk, quota, permissions, read-only...), else None."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno is not None:
      return os.strerror(e.errno)
    text = str(e)  # orbax and tensorstore wrap them in other exceptions
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                 errno.EIO):
      if os.strerror(code) in text:
        return os.strerror(code)
    e = e.__cause__ or e.__context__
  return None


@contextlib.contextmanager
def saving(path: str, outcome: str):
  """Turns a write error inside into one line, `<reason> while saving
  <path>; <outcome>` (outcome: what the user has left)."""
  try:
    yield
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    reason = write_error(e)
    if reason is None:
      raise
    raise UserError(f"{reason} while saving {path}; {outcome}") from None
