"""What jaxcf's command-line tools share: a user's mistake is one line on
stderr and exit status 2, never a traceback."""

from __future__ import annotations

import sys
from typing import Callable

from absl import app, flags, logging

from jaxcf.errors import UserError


def fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def parse_flags(argv):
  """absl's flag parsing, but a bad flag ends like any other mistake."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(f"{e}. See --helpfull.")


def run(body: Callable[[], object]) -> None:
  """app.run of `body` with jaxcf's error handling."""

  def main(argv):
    if not flags.FLAGS["verbosity"].present:  # JAX's INFO lines are noise
      logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
      fail(f"unexpected arguments {' '.join(argv[1:])}; flags look like "
           "--name=value")
    try:
      body()
    except UserError as e:
      fail(str(e))

  app.run(main, flags_parser=parse_flags)
