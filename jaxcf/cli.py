"""What jaxcf's command-line tools share: a user's mistake is one line on
stderr and exit status 2, never a traceback.

`main(argv, body, flag_values)` parses the flags and runs `body` with this
contract, returning the exit status: a script's __main__ exits with it, and
tests call it in-process with their own `absl.flags.FlagValues`.
"""

from __future__ import annotations

import os
import select
import signal
import stat
import sys
from typing import Callable

from absl import flags, logging

from jaxcf.errors import UserError


def error(message: str) -> int:
  """Prints `error: message` on stderr; returns exit status 2."""
  print(f"error: {message}", file=sys.stderr)
  return 2


def _quiet() -> None:
  """JAX's INFO log lines are noise on a terminal."""
  if "verbosity" in flags.FLAGS and not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def stdout_reader_gone() -> bool:
  """Whether stdout is a pipe whose reader has closed it (`train.py |
  head`): poll reports an error on the write end of such a pipe."""
  try:
    fd = sys.stdout.fileno()
    if not stat.S_ISFIFO(os.fstat(fd).st_mode) or not hasattr(select, "poll"):
      return False
  except (AttributeError, OSError, ValueError):  # not a file (a notebook)
    return False
  poller = select.poll()
  poller.register(fd, 0)  # POLLERR is always reported
  return any(events & select.POLLERR for _, events in poller.poll(0))


def _stop_writing_stdout() -> int:
  """stdout to /dev/null (no flush at exit can fail on it again); 141, the
  status SIGPIPE gives other tools."""
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, sys.stdout.fileno())
  os.close(devnull)
  return 128 + signal.SIGPIPE


def guarded(body: Callable[[], object]) -> int:
  """Runs body; a UserError is one line and 2, a stop by a signal its
  message and 128 + the signal's number. A reader that leaves early
  (`train.py | head`) stops the run as SIGPIPE stops other tools: quietly,
  141, stdout then going to /dev/null; what a run writes appears
  atomically, so nothing is left half written. Any other broken pipe (a
  socket, a subprocess) is not the user's doing and is raised."""
  from jaxcf import outputs  # pylint: disable=g-import-not-at-top
  try:
    body()
  except UserError as e:
    return error(str(e))
  except outputs.Stopped as e:
    print(str(e), file=sys.stderr)
    return 128 + e.signum
  except KeyboardInterrupt:  # where no checkpoint can be taken (sweeps)
    print("stopped by SIGINT; nothing was saved", file=sys.stderr)
    return 130
  except BrokenPipeError:
    if not stdout_reader_gone():
      raise
    return _stop_writing_stdout()
  return 0


def flush_output(code: int) -> int:
  """Flushes stdout and stderr before a script exits with `code`; returns
  the status to exit with: 141 where the reader of stdout has gone (lines
  still buffered are what it did not read), 1 with one line on stderr
  where a stream cannot be written (a full disk), else `code`."""
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except BrokenPipeError:
      gone = stream is sys.stdout and stdout_reader_gone()
      code = code or (_stop_writing_stdout() if gone else 1)
    except OSError as e:
      if stream is not sys.stderr:
        print(f"error: could not write standard output: {e}",
              file=sys.stderr)
      code = code or 1
  return code


def main(argv: list[str], body: Callable[[flags.FlagValues], object],
         flag_values: flags.FlagValues = flags.FLAGS) -> int:
  """Parses argv (argv[0] is the program) into flag_values and runs
  body(flag_values); returns the exit status. --help lists the flags."""
  if any(a in ("--help", "-h", "--helpfull", "--helpshort") for a in argv):
    return guarded(lambda: print(flag_values.get_help()))
  try:
    rest = flag_values(argv)
  except flags.Error as e:
    return error(f"{e}. See --help.")
  if len(rest) > 1:
    return error(f"unexpected arguments {' '.join(rest[1:])}; flags look "
                 "like --name=value")
  if flag_values is flags.FLAGS:
    _quiet()
  return guarded(lambda: body(flag_values))
