"""What jaxcf's command-line tools share: a user's mistake is one line on
stderr and exit status 2, never a traceback.

`main(argv, body, flag_values)` parses the flags and runs `body` with this
contract, returning the exit status: a script's __main__ exits with it, and
tests call it in-process with their own `absl.flags.FlagValues`.
"""

from __future__ import annotations

import os
import signal
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


def guarded(body: Callable[[], object]) -> int:
  """Runs body; a UserError is one line and 2, a stop by a signal its
  message and 128 + the signal's number. A reader that leaves early
  (`train.py | head`) stops the run as SIGPIPE stops other tools: quietly,
  141; what a run writes appears atomically, so nothing is left half
  written."""
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
    # Python would print a traceback flushing stdout at exit: no more of it.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 128 + signal.SIGPIPE
  return 0


def main(argv: list[str], body: Callable[[flags.FlagValues], object],
         flag_values: flags.FlagValues = flags.FLAGS) -> int:
  """Parses argv (argv[0] is the program) into flag_values and runs
  body(flag_values); returns the exit status. --help lists the flags."""
  if any(a in ("--help", "-h", "--helpfull", "--helpshort") for a in argv):
    print(flag_values.get_help())
    return 0
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
