"""The fast path for ratings files of plain numbers (`io.read_ratings`).

A file whose fields are all plain numbers (digits, signs, a decimal point
outside the id columns; a vectorised byte check decides) is parsed by
pandas' C parser straight into numeric arrays, a million lines at a time,
with no Python object per field. Anything else (string ids, `TRUE`, `1e3`,
a bad line) returns None here and takes `io`'s checked path, which names
the first bad line.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd


def read_numbers(path: str, cols: Mapping[str, int], *, sep: str,
                 header: bool, encoding: str, chunk_rows: int
                 ) -> pd.DataFrame | None:
  """user, item (int64), rating (float32) and maybe timestamp (int64) from
  the 0-based columns `cols` of a file separated by the one character
  `sep`, or None when the file is not plain numbers or does not parse."""
  if not _plain_numbers(path, sep, header,
                        [cols["user"], cols["item"]]):
    return None
  kinds = {"user": np.int64, "item": np.int64, "rating": np.float64,
           "timestamp": np.float64}
  by_position = {c: k for k, c in cols.items()}
  parts = {k: [] for k in cols}
  try:
    reader = pd.read_csv(
        # No usecols: with it the parser would let a line with extra
        # fields pass; without it such a line stops the read.
        path, sep=sep, header=None, skiprows=1 if header else 0,
        encoding=encoding, engine="c",
        dtype={c: kinds[k] for c, k in by_position.items()},
        na_filter=False, skip_blank_lines=True, chunksize=chunk_rows)
    with reader:
      for chunk in reader:
        for c, k in by_position.items():
          parts[k].append(chunk[c].to_numpy())
  except (ValueError, OverflowError, pd.errors.ParserError,
          pd.errors.EmptyDataError, IndexError):
    return None
  arrays = {k: np.concatenate(v) if v else np.zeros(0, kinds[k])
            for k, v in parts.items()}
  if not (np.isfinite(arrays["rating"]).all()
          and np.isfinite(arrays.get("timestamp", 0.0)).all()
          and (np.abs(arrays["rating"]) <= np.finfo(np.float32).max).all()):
    return None
  out = pd.DataFrame({"user": arrays["user"], "item": arrays["item"],
                      "rating": arrays["rating"].astype(np.float32)})
  if "timestamp" in arrays:
    out["timestamp"] = arrays["timestamp"].astype(np.int64)
  return out


_BLOCK = 1 << 24  # bytes read at a time by _plain_numbers
_INTEGER_BYTES = np.zeros(256, bool)
_INTEGER_BYTES[list(b"0123456789- \r")] = True  # '+1' is not '1' as an id
_NUMBER_BYTES = _INTEGER_BYTES.copy()
_NUMBER_BYTES[ord(".")] = True


def _plain_numbers(path: str, sep: str, header: bool,
                   id_columns: Sequence[int]) -> bool:
  """Whether every field after the header is a plain number: digits, signs,
  spaces, and a decimal point outside the id columns; no '+' and no
  leading zero.

  pandas' C parser would read 'TRUE' as 1 and '1.0' or '1e3' as integer
  ids; the checked path reads them differently (or refuses them), so the
  fast path takes only files this check passes (letters, quotes or
  exponents send a file to the checked path). One pass over the bytes in
  16 MiB blocks cut at line ends, vectorised.
  """
  if not sep.isascii():
    return False
  with open(path, "rb") as f:
    if header:
      f.readline()
    rest = b""
    while True:
      block = f.read(_BLOCK)
      if block:
        cut = block.rfind(b"\n") + 1
        if cut == 0:  # no line ends here yet
          rest += block
          continue
        data, rest = rest + block[:cut], block[cut:]
      else:  # the last line, which may lack its line end
        data, rest = (rest + b"\n" if rest else b""), b""
      if data and not _plain_lines(np.frombuffer(data, np.uint8), ord(sep),
                                   id_columns):
        return False
      if not block:
        return True


def _plain_lines(b: np.ndarray, sep: int, id_columns: Sequence[int]) -> bool:
  """`_plain_numbers` for whole lines of bytes b (uint8)."""
  is_sep, is_end = b == sep, b == ord("\n")
  if not (_NUMBER_BYTES[b] | is_sep | is_end).all():
    return False
  # A leading zero ('07', '-0') makes an id other than the number: the
  # checked path keeps such ids as text. (Boolean passes, no index arrays.)
  zero_then_digit = (b[1:-1] == ord("0")) & (b[2:] - ord("0") < 10)
  after_start = is_sep[:-2] | is_end[:-2] | (b[:-2] == ord(" "))
  if (zero_then_digit & after_start).any() or (
      b[0] == ord("0") and b.size > 1 and 0 <= int(b[1]) - ord("0") < 10):
    return False
  if ((b[:-1] == ord("-")) & (b[1:] == ord("0"))).any():
    return False
  dots = np.flatnonzero(b == ord("."))
  if not dots.size:
    return True
  # The field of each '.': the separators since its line's start.
  seps = np.cumsum(is_sep)
  ends = np.flatnonzero(is_end)
  line = np.searchsorted(ends, dots) - 1
  before = np.where(line >= 0, seps[ends[np.maximum(line, 0)]], 0)
  return not np.isin(seps[dots] - before, id_columns).any()
