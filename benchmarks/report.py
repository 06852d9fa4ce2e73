"""What the benchmark scripts share: printing and saving a markdown table."""

from __future__ import annotations

import os


def emit(lines: list[str], out: str | None) -> str:
  """Prints the table's lines and, when `out` is given, writes them there."""
  text = "\n".join(lines)
  print(text)
  if out:
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
      f.write(text + "\n")
  return text
