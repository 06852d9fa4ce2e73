"""Reading delimited rating and item files into checked pandas tables.

Every row of the file is either returned or reported: a malformed line stops
the read with a `UserError` naming the file, the line and what to do. Blank
lines are the only lines skipped.
"""

from __future__ import annotations

import math
import re
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from jaxcf import fastread, textfile
from jaxcf.errors import UserError

Column = str | int  # a header name, or a 0-based position

# Header names recognised when `--columns` is not given (lower case).
KNOWN_NAMES = {
    "user": ("user", "user_id", "userid", "uid", "user id"),
    "item": ("item", "item_id", "itemid", "iid", "movie", "movie_id",
             "movieid", "movie id", "item id"),
    "rating": ("rating", "ratings", "score", "stars"),
    "timestamp": ("timestamp", "time", "ts", "date"),
}
_SEPARATORS = ("::", "\t", ",", ";", "|")
# An integer id as a program would print it: no sign but '-', no leading
# zero; '01' and '+1' are other ids than '1', kept as the text written.
_INT = re.compile(r"0|-?[1-9]\d*")


def sniff_separator(first_line: str) -> str:
  """Guesses the separator from a file's first non-blank line."""
  for sep in _SEPARATORS:
    if sep in first_line:
      return sep
  return r"\s+"


def _encoding(path: str, encoding: str | None, what: str = "file") -> str:
  """`encoding`, or what the file is (`textfile.encoding_of`)."""
  return textfile.encoding_of(path, encoding, what)


def decide_encoding(path: str) -> str:
  """UTF-8 when the whole file decodes as UTF-8, else latin-1."""
  return _encoding(path, None)


@textfile.decompressed
def read_columns(path: str, columns: Mapping[str, Column], *,
                 sep: str | None = None, header: bool | None = None,
                 encoding: str | None = None, what: str = "file",
                 numeric: str | None = None, optional: Sequence[str] = ()
                 ) -> tuple[pd.DataFrame, np.ndarray]:
  """Reads the named columns of a delimited text file as strings.

  Args:
    path: the file.
    columns: output name -> header name or 0-based position in the file.
    sep: the field separator; None guesses it from the first line.
    header: whether the first line names the columns; None decides: yes when
      a column is given by name, when a requested field of the first line is
      a usual column name (user, movieId, title, ...), or when the field of
      the `numeric` column is not a number.
    encoding: text encoding; None tries UTF-8, then latin-1.
    what: how messages name the file ("ratings file", ...).
    numeric: the key of a column whose data fields are numbers (the rating).
    optional: keys of columns whose fields may be empty.

  Returns:
    (table, line): a DataFrame with one str column per key of `columns`, and
    the 1-based line number in the file of each row (for messages).
  """
  textfile.check_file(path, what)
  encoding = _encoding(path, encoding, what)
  first = textfile.first_line(path, encoding)
  if sep is None:
    sep = sniff_separator(first)
  if header is None:
    header = _looks_like_header(first, sep, columns, numeric)
  engine = "python" if len(sep) > 1 else "c"
  sep_flag, columns_flag = (("--items_sep", "--item_columns")
                            if what == "items file" else ("--sep", "--columns"))
  try:
    raw = pd.read_csv(path, sep=sep, header=None, dtype=str, engine=engine,
                      encoding=encoding, keep_default_na=False,
                      na_filter=False, skip_blank_lines=False)
  except pd.errors.EmptyDataError:
    raise UserError(f"{path}: the file is empty") from None
  except pd.errors.ParserError as e:
    detail = str(e).replace("Error tokenizing data. C error: ", "").strip()
    raise UserError(f"{what} {path}: {detail}; check {sep_flag} (used "
                    f"{sep!r}) "
                    "and that every line has the same number of fields"
                    ) from None
  line = np.arange(1, len(raw) + 1)
  names = list(raw.iloc[0]) if header else None
  if header:
    raw, line = raw.iloc[1:], line[1:]
  blank = raw.apply(lambda c: c.isna() | (c.str.strip() == "")).all(axis=1)
  raw, line = raw[~blank.to_numpy()], line[~blank.to_numpy()]

  table = {}
  for out_name, col in columns.items():
    if isinstance(col, str):
      found = [i for i, n in enumerate(names) if str(n).strip() == col]
      if not found:
        raise UserError(
            f"{what} {path}: no column named {col!r} in the header "
            f"{[str(n).strip() for n in names]} (separator {sep!r}); name the "
            f"columns with {columns_flag}, or pass {sep_flag}")
      col = found[0]
    if col >= raw.shape[1]:
      raise UserError(
          f"{what} {path}: found {raw.shape[1]} column(s) with separator "
          f"{sep!r}, but the {out_name} column is at position {col}; pass "
          f"{sep_flag} or {columns_flag}")
    values = raw.iloc[:, col]
    missing = values.isna().to_numpy()
    if out_name not in optional:
      missing = missing | (values.str.strip() == "").to_numpy()
    if missing.any():
      i = int(np.argmax(missing))
      raise UserError(
          f"{what} {path}, line {line[i]}: the {out_name} field is missing "
          f"({raw.shape[1]} fields expected, separator {sep!r}); fix the line "
          f"or pass {sep_flag}")
    table[out_name] = values.to_numpy(dtype=object)
  return pd.DataFrame(table), line


def show(value) -> str:
  """An id for a message: 196 or 'Toy Story (1995)', numpy scalars unwrapped."""
  if isinstance(value, tuple):
    return "(" + ", ".join(show(v) for v in value) + ")"
  return repr(value.item() if hasattr(value, "item") else value)


def _split(line: str, sep: str) -> list[str]:
  return re.split(sep, line) if sep == r"\s+" else line.split(sep)


def _looks_like_header(first: str, sep: str, columns: Mapping[str, Column],
                       numeric: str | None) -> bool:
  if any(isinstance(c, str) for c in columns.values()):
    return True
  fields = [f.strip().strip('"').lower() for f in _split(first, sep)]
  names = {n for aliases in KNOWN_NAMES.values() for n in aliases}
  names |= {"title", "name", "movie_title"}
  if any(c < len(fields) and fields[c] in names for c in columns.values()):
    return True
  col = columns.get(numeric)
  return col is not None and col < len(fields) and not _is_number(fields[col])


def _is_number(text: str) -> bool:
  try:
    float(text)
    return True
  except ValueError:
    return False


def parse_ids(values: np.ndarray) -> np.ndarray:
  """int64 ids when every value is a canonical integer that int64 holds
  ('7', '-3'; not '07', '+7' or 2^63), else the strings as written."""
  series = pd.Series(values, dtype=object).astype(str).str.strip()
  if series.str.fullmatch(_INT.pattern).all():
    long = series.str.len() > 18  # past 18 digits, check the range
    if all(-2**63 <= int(v) < 2**63 for v in series[long]):
      return series.astype(np.int64).to_numpy()
  return series.to_numpy(dtype=object)


def parse_numbers(values: np.ndarray, line: np.ndarray, *, path: str,
                  name: str, what: str) -> np.ndarray:
  """Parses finite float64 numbers, or raises naming the first bad line."""
  numbers = pd.to_numeric(pd.Series(values, dtype=object).astype(str).str.strip(),
                          errors="coerce").to_numpy(
      dtype=np.float64)
  bad = ~np.isfinite(numbers)
  if name == "rating":  # kept in float32
    bad |= np.abs(np.nan_to_num(numbers)) > np.finfo(np.float32).max
  if bad.any():
    i = int(np.argmax(bad))
    text = str(values[i]).strip()
    kind = "not a number" if math.isnan(numbers[i]) and not _is_number(
        values[i]) else "not a finite number"
    if re.fullmatch(r"[+-]?\d+,\d+", text):
      kind = (f"written with a decimal comma; write {text.replace(',', '.')}"
              " (the file's separator is not ',')")
    elif math.isfinite(numbers[i]):
      kind = "too large for a float32 rating (at most 3.4e38)"
    raise UserError(f"{what} {path}, line {line[i]}: {name} {values[i]!r} is "
                    f"{kind}; fix or remove the line")
  return numbers


def parse_columns_flag(text: str | Sequence[str] | None) -> list[Column] | None:
  """'user,item,rating' or '0,1,2' -> column names or positions; '' -> None."""
  if text is None:
    return None
  parts = text.split(",") if isinstance(text, str) else list(text)
  parts = [p.strip() for p in parts if p.strip()]
  if not parts:
    return None
  return [int(p) if p.isdigit() else p for p in parts]


def _auto_columns(path: str, sep: str | None, encoding: str | None,
                  what: str) -> dict[str, Column]:
  """Finds user/item/rating[/timestamp] by header names, else positions."""
  encoding = _encoding(path, encoding, what)
  first = textfile.first_line(path, encoding)
  sep = sep or sniff_separator(first)
  fields = [f.strip().strip('"') for f in _split(first, sep)]
  lower = [f.lower() for f in fields]
  found = {}
  for key, aliases in KNOWN_NAMES.items():
    for alias in aliases:
      if alias in lower:
        found[key] = fields[lower.index(alias)]
        break
  if all(k in found for k in ("user", "item", "rating")):
    return found
  if len(fields) > 2 and re.fullmatch(r"[+-]?\d+,\d+", fields[2]):
    raise UserError(
        f"{what} {path}, line 1: rating {fields[2]!r} is written with a "
        f"decimal comma; write {fields[2].replace(',', '.')} (the file's "
        "separator is not ',')")
  if any(_is_number(f) for f in fields[2:3]):
    cols = {"user": 0, "item": 1, "rating": 2}
    if len(fields) > 3 and _is_number(fields[3]):
      cols["timestamp"] = 3
    return cols
  raise UserError(
      f"{what} {path}: cannot tell which columns hold user, item and rating "
      f"(first line {first[:80]!r}); pass --columns=USER,ITEM,RATING by "
      "header name or 0-based position")


@textfile.decompressed
def read_ratings(path: str, *, columns: Sequence[Column] | None = None,
                 sep: str | None = None, header: bool | None = None,
                 encoding: str | None = None,
                 chunk_rows: int = 1_000_000) -> pd.DataFrame:
  """Reads a ratings file: one (user, item, rating[, timestamp]) per line.

  Args:
    path: a CSV/TSV/'::'-separated file, with or without a header line.
    columns: [user, item, rating] or [user, item, rating, timestamp], each a
      header name or a 0-based position; None finds them by common header
      names (userId, movieId, rating, ...) or takes positions 0, 1, 2[, 3].
    sep, header, encoding: as in `read_columns`.
    chunk_rows: lines parsed at a time. A file of integer ids and finite
      numbers is read by pandas' C parser straight into numeric arrays,
      `chunk_rows` lines at a time (no Python object per field, so a 100M-row
      file needs about its arrays' memory); any other file goes through
      the checked string path, which names the first bad line.

  Returns:
    A DataFrame with columns user and item (int64 when every id is an
    integer, else str), rating (float32, fractional allowed) and, when a
    timestamp column is named, timestamp (int64). One row per line.
  """
  what = "ratings file"
  textfile.check_file(path, what)
  # Decided once here: finding it reads the whole file, and the column
  # guess, the fast path and the checked path all need it.
  encoding = _encoding(path, encoding, what)
  if columns is None:
    cols = _auto_columns(path, sep, encoding, what)
  else:
    if len(columns) not in (3, 4):
      raise UserError(f"--columns names {len(columns)} columns; give 3 "
                      "(user,item,rating) or 4 (user,item,rating,timestamp)")
    twice = [c for c in columns if list(columns).count(c) > 1]
    if twice:
      raise UserError(f"--columns={','.join(map(str, columns))} names column"
                      f" {twice[0]!r} twice; each of user, item, rating"
                      "(, timestamp) needs its own")
    cols = dict(zip(("user", "item", "rating", "timestamp"), columns))
  # Given positions, the first line is a header only if it names columns:
  # a line whose rating does not parse is reported, never skipped.
  numeric = "rating" if columns is None else None
  fast = _read_numeric(path, cols, sep=sep, header=header, encoding=encoding,
                       chunk_rows=chunk_rows, numeric=numeric)
  if fast is not None:
    if len(fast) == 0:
      raise UserError(f"{what} {path} holds no ratings (only a header or "
                      "blank lines)")
    return fast
  raw, line = read_columns(path, cols, sep=sep, header=header,
                           encoding=encoding, what=what, numeric=numeric)
  if len(raw) == 0:
    raise UserError(f"{what} {path} holds no ratings (only a header or blank "
                    "lines)")
  out = pd.DataFrame({
      "user": parse_ids(raw["user"].to_numpy()),
      "item": parse_ids(raw["item"].to_numpy()),
      "rating": parse_numbers(raw["rating"].to_numpy(), line, path=path,
                              name="rating", what=what).astype(np.float32),
  })
  if "timestamp" in raw:
    out["timestamp"] = parse_numbers(
        raw["timestamp"].to_numpy(), line, path=path, name="timestamp",
        what=what).astype(np.int64)
  return out


def _read_numeric(path: str, cols: Mapping[str, Column], *, sep, header,
                  encoding, chunk_rows: int, numeric: str | None
                  ) -> pd.DataFrame | None:
  """The fast path of `read_ratings` (`jaxcf.fastread`), or None when the
  file needs the checked one (string ids, a malformed or non-finite field,
  a multi-character separator, ...): that path then reports or reads it.
  `encoding` is already decided; here the separator, the header and named
  columns' positions are."""
  first = textfile.first_line(path, encoding)
  sep = sep or sniff_separator(first)
  if len(sep) != 1:
    return None
  if header is None:
    header = _looks_like_header(first, sep, cols, numeric)
  if any(isinstance(c, str) for c in cols.values()):
    if not header:
      return None
    fields = [f.strip() for f in _split(first, sep)]
    if any(isinstance(c, str) and fields.count(c) != 1
           for c in cols.values()):
      return None
    cols = {k: fields.index(c) if isinstance(c, str) else c
            for k, c in cols.items()}
  return fastread.read_numbers(path, cols, sep=sep, header=header,
                               encoding=encoding, chunk_rows=chunk_rows)
