"""The MovieLens releases' files as a ratings table, parsed once and then
read back from compact arrays.

Layouts (`movielens.Release.layout`):
  100k  u.data (tab-separated), u.item ('|', latin-1): `movielens.load`.
  dat   ratings.dat `user::movie::rating::time`, movies.dat
        `movie::title::genres` (titles hold ':' and ','; latin-1 in ml-1m,
        decided per file), users.dat `user::gender::age::occupation::zip`
        (ml-1m).
  csv   ratings.csv `userId,movieId,rating,timestamp` and movies.csv
        `movieId,title,genres` (UTF-8, quoted titles), both with headers.

The first read of a release stores its columns as .npy files in a folder
of `<cache>/arrays/`, keyed by the files' paths, sizes and modification
times, with each rating's item position precomputed; later reads map them
(ml-25m: seconds instead of a 25M-line parse).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
import shutil
import tempfile

import numpy as np
import pandas as pd

from jaxcf import io, movielens
from jaxcf.errors import UserError

_FORMAT = 2  # of the cached arrays; bump when what they hold changes
_COLUMNS = ("user", "item", "rating", "timestamp", "where", "item_ids",
            "titles", "genres")


def read(release: movielens.Release, folder: Path, log=None) -> pd.DataFrame:
  """The release's ratings: user, item (the movie id), rating (float32),
  timestamp and the item's title; one row per rating, in file order."""
  if release.layout == "100k":
    return movielens.load(folder)
  ratings_path, items_path = (folder / f for f in release.files)
  cache = _cache_path(release, ratings_path, items_path)
  if cache.is_dir():
    try:
      return _table({c: np.load(cache / f"{c}.npy", mmap_mode="r",
                                allow_pickle=False) for c in _COLUMNS})
    except (OSError, ValueError):
      pass  # damaged: parse again
  if log:
    log(f"parsing {ratings_path} (once; the arrays are cached in "
        f"{cache.parent})")
  arrays = (_read_dat if release.layout == "dat" else _read_csv)(
      ratings_path, items_path)
  _store(cache, arrays)
  return _table(arrays)


def _table(a: dict) -> pd.DataFrame:
  """The table from the arrays: per-item titles spread over the ratings
  through each rating's item position `where` (genres stay in the cache)."""
  titles = np.asarray(a["titles"]).astype(object)
  return pd.DataFrame({"user": np.asarray(a["user"], np.int64),
                       "item": np.asarray(a["item"], np.int64),
                       "rating": np.asarray(a["rating"]),
                       "timestamp": np.asarray(a["timestamp"]),
                       "title": titles[a["where"]]})


def _read_dat(ratings: Path, items: Path) -> dict:
  """ratings.dat and movies.dat of ml-1m/ml-10m."""
  # '::' splits into fields 0, 2, 4, 6 with ':' as the separator, which
  # keeps pandas' C parser (a two-character separator would not).
  try:
    raw = pd.read_csv(ratings, sep=":", header=None, usecols=[0, 2, 4, 6],
                      dtype={0: np.int64, 2: np.int64, 4: np.float32,
                             6: np.int64}, engine="c")
  except (ValueError, pd.errors.ParserError) as e:
    raise UserError(f"{ratings}: not in MovieLens' user::movie::rating::time "
                    f"layout ({str(e).splitlines()[0][:100]}); delete the "
                    "folder to download it again") from None
  ids, titles, genres = movies("dat", items)
  return _arrays(raw.iloc[:, 0], raw.iloc[:, 1], raw.iloc[:, 2],
                 raw.iloc[:, 3], ids, titles, genres, items)


def _read_csv(ratings: Path, items: Path) -> dict:
  """ratings.csv and movies.csv of ml-20m, ml-25m, ml-32m, ml-latest."""
  table = io.read_ratings(str(ratings), columns=["userId", "movieId",
                                                 "rating", "timestamp"],
                          sep=",", header=True)
  ids, titles, genres = movies("csv", items)
  return _arrays(table["user"], table["item"], table["rating"],
                 table["timestamp"], ids, titles, genres, items)


def movies(layout: str, path: Path) -> tuple[list, list, list]:
  """(ids, titles, genres) of movies.dat ('dat': movie::title::genres,
  titles may hold '::') or movies.csv ('csv': movieId,title,genres with a
  header, titles quoted); genres '|'-separated as written."""
  if layout == "csv":
    try:
      table = pd.read_csv(path, dtype=str, keep_default_na=False,
                          encoding=io.decide_encoding(str(path)))
      ids = table["movieId"].astype(np.int64)
    except (KeyError, ValueError, pd.errors.ParserError) as e:
      raise UserError(f"{path}: not MovieLens' movieId,title,genres layout "
                      f"({str(e).splitlines()[0][:100]})") from None
    return list(ids), list(table["title"]), list(table["genres"])
  ids, titles, genres = [], [], []
  for number, parts in dat_lines(path):
    if len(parts) < 3 or not parts[0].isdigit():
      raise UserError(f"{path}, line {number}: not movie::title::genres")
    ids.append(int(parts[0]))
    titles.append("::".join(parts[1:-1]))
    genres.append(parts[-1])
  return ids, titles, genres


def dat_lines(path: Path):
  """(line number, fields) of each non-empty line of a '::' file, in the
  encoding the whole file decodes in (`io.decide_encoding`)."""
  with open(path, encoding=io.decide_encoding(str(path)), newline="") as f:
    for number, line in enumerate(f, 1):
      line = line.rstrip("\r\n")
      if line:
        yield number, line.split("::")


def _arrays(user, item, rating, timestamp, ids, titles, genres,
            items: Path) -> dict:
  """The columns as the cache holds them: items sorted by id, each rating's
  item position among them (every rated item must have a title), ids in
  int32 where they fit."""
  ids = np.asarray(ids, np.int64)
  order = np.argsort(ids, kind="stable")
  ids = ids[order]
  if (np.diff(ids) == 0).any():
    raise UserError(f"{items}: movie {ids[np.argmax(np.diff(ids) == 0)]} "
                    "appears twice")
  item = np.asarray(item, np.int64)
  where = np.searchsorted(ids, item)
  known = where < len(ids)
  known[known] = ids[where[known]] == item[known]
  if not known.all():
    raise UserError(f"{items} has no title for movie {item[~known][0]}, "
                    "which is rated; the release's files do not belong "
                    "together (delete the folder to download it again)")
  small = lambda x: x.astype(np.int32) if (
      x.size == 0 or (x.min() >= -2**31 and x.max() < 2**31)) else x
  user = np.asarray(user, np.int64)
  return {"user": small(user), "item": small(item),
          "rating": np.asarray(rating, np.float32),
          "timestamp": np.asarray(timestamp, np.int64),
          "where": where.astype(np.int32), "item_ids": ids,
          "titles": np.asarray(titles, dtype=str)[order],
          "genres": np.asarray(genres, dtype=str)[order]}


def _cache_path(release, *files: Path) -> Path:
  key = hashlib.sha256(f"{_FORMAT}|{release.name}".encode())
  for f in files:
    stat = f.stat()
    key.update(f"|{f.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
  return movielens.cache_root() / "arrays" / (
      f"{release.name}-{key.hexdigest()[:16]}")


def _store(path: Path, arrays: dict) -> None:
  """Writes the cache folder beside and renames it into place; a cache that
  cannot be written is skipped (the next run parses again)."""
  tmp = None
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".tmp-"))
    for name in _COLUMNS:
      np.save(tmp / f"{name}.npy", arrays[name], allow_pickle=False)
    os.replace(tmp, path)
  except OSError:
    if tmp is not None:
      shutil.rmtree(tmp, ignore_errors=True)
