"""A minimal progress bar on stderr (redrawn in place on a terminal)."""

from __future__ import annotations

import sys
import time


class Bar:
  """Shows `label [#####.....]  45%  detail` for work measured in units.

  On a terminal the line is redrawn in place; elsewhere (CI logs) a line is
  written at most every `every_s` seconds and once at the end.
  """

  def __init__(self, label: str, total: float | None, *, width: int = 30,
               every_s: float = 5.0, stream=None):
    self.label, self.total, self.width = label, total, width
    self.stream = stream or sys.stderr
    self.tty = getattr(self.stream, "isatty", lambda: False)()
    self.every_s = 0.1 if self.tty else every_s
    self.start = self.last = time.perf_counter()
    self.done = 0.0
    self.drawn = False

  def update(self, done: float, detail: str = "") -> None:
    self.done = done
    now = time.perf_counter()
    if now - self.last >= self.every_s:
      self.last = now
      self._draw(detail)

  def close(self, detail: str = "") -> None:
    """Draws the final state, unless off a terminal with nothing shown yet
    (work that ended before the first line was due leaves no trace)."""
    if self.tty or self.drawn:
      self._draw(detail)
    if self.tty:
      self.stream.write("\n")
    self.stream.flush()

  def _draw(self, detail: str) -> None:
    if self.total:
      frac = min(1.0, self.done / self.total)
      fill = int(round(frac * self.width))
      bar = f"[{'#' * fill}{'.' * (self.width - fill)}] {frac:4.0%}"
    else:
      bar = f"{time.perf_counter() - self.start:6.1f}s"
    text = f"{self.label} {bar} {detail}".rstrip()
    self.drawn = True
    if self.tty:
      self.stream.write("\r" + text.ljust(79))
    else:
      self.stream.write(text + "\n")
    self.stream.flush()


def wait_with_progress(x, label: str, expected_s: float | None) -> None:
  """Blocks until the jax.Array x is computed, drawing a bar if it takes a
  while.

  A compiled call runs asynchronously; progress is its elapsed time against
  `expected_s` (the previous call's duration; None: just the time).
  """
  start = time.perf_counter()
  bar = None
  while not x.is_ready():
    time.sleep(0.02)
    elapsed = time.perf_counter() - start
    if bar is None and elapsed > 1.0:
      bar = Bar(label, expected_s)
    if bar is not None:
      bar.update(elapsed, f"{elapsed:.0f}s")
  if bar is not None:
    bar.close(f"{time.perf_counter() - start:.1f}s")
