"""The side information each MovieLens release ships, as two plain tables.

  users(release, folder): user, gender, age, occupation; ml-100k's u.user
    and ml-1m's users.dat (the later releases hold no demographics: None).
    ml-1m codes age in seven bands (1: under 18, 18: 18-24, ..., 56: 56+)
    and occupation as 0-20; the occupations are named as its README does.
  items(release, folder): item, year (NaN when unknown), then one 0/1
    column per genre, `genre:<name>`. ml-100k: u.item's 19 flags and its
    release date's year; the other releases: the '|'-separated genres of
    movies.dat/movies.csv and the year that ends the title, '(1995)'.
"""

from __future__ import annotations

from pathlib import Path
import re

import numpy as np
import pandas as pd

from jaxcf import io, mlread, movielens
from jaxcf.errors import UserError

ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's",
                 "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
                 "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
                 "Sci-Fi", "Thriller", "War", "Western")
# ml-1m's README, "USERS FILE DESCRIPTION".
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin",
    "college/grad student", "customer service", "doctor/health care",
    "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer",
    "programmer", "retired", "sales/marketing", "scientist", "self-employed",
    "technician/engineer", "tradesman/craftsman", "unemployed", "writer")
_YEAR = re.compile(r"\((\d{4})\)\s*$")


def users(release: movielens.Release, folder: Path) -> pd.DataFrame | None:
  """The release's users table, or None when it ships none."""
  if release.layout == "100k":
    return _users_100k(folder / "u.user")
  if (folder / "users.dat").exists():
    return _users_dat(folder / "users.dat")
  return None


def items(release: movielens.Release, folder: Path) -> pd.DataFrame:
  """The release's items table: item, year, genre:<name> columns."""
  if release.layout == "100k":
    return _items_100k(folder / "u.item")
  path = folder / release.files[1]
  ids, titles, genres = mlread.movies(release.layout, path)
  names = sorted({g for text in genres for g in text.split("|") if g}
                 - {"(no genres listed)"})
  out = pd.DataFrame({"item": np.asarray(ids, np.int64),
                      "year": [_title_year(t) for t in titles]})
  sets = [set(text.split("|")) for text in genres]
  for name in names:
    out[f"genre:{name}"] = np.array([name in s for s in sets], np.float64)
  return out


def _title_year(title: str) -> float:
  match = _YEAR.search(title)
  return float(match.group(1)) if match else np.nan


def _users_100k(path: Path) -> pd.DataFrame:
  raw, line = io.read_columns(str(path), {"user": 0, "age": 1, "gender": 2,
                                          "occupation": 3},
                              sep="|", header=False, what="users file")
  return pd.DataFrame({
      "user": io.parse_ids(raw["user"].to_numpy()),
      "gender": raw["gender"].str.strip().to_numpy(),
      "age": io.parse_numbers(raw["age"].to_numpy(), line, path=str(path),
                              name="age", what="users file"),
      "occupation": raw["occupation"].str.strip().to_numpy()})


def _users_dat(path: Path) -> pd.DataFrame:
  """users.dat: user::gender::age::occupation::zip (zip left out)."""
  rows = []
  for number, parts in mlread.dat_lines(path):
    ok = (len(parts) == 5 and parts[0].isdigit() and parts[2].isdigit()
          and parts[3].isdigit() and int(parts[3]) < len(ML1M_OCCUPATIONS))
    if not ok:
      raise UserError(f"{path}, line {number}: not "
                      "user::gender::age::occupation(0-20)::zip; delete "
                      "the folder to download it again")
    rows.append((int(parts[0]), parts[1], float(parts[2]),
                 ML1M_OCCUPATIONS[int(parts[3])]))
  return pd.DataFrame(rows, columns=["user", "gender", "age", "occupation"])


def _items_100k(path: Path) -> pd.DataFrame:
  cols = {"item": 0, "date": 2,
          **{f"g{g}": 5 + g for g in range(len(ML100K_GENRES))}}
  raw, line = io.read_columns(str(path), cols, sep="|", header=False,
                              encoding="latin-1", what="items file",
                              optional=("date",))
  year = pd.to_datetime(raw["date"], format="%d-%b-%Y",
                        errors="coerce").dt.year
  out = pd.DataFrame({"item": io.parse_ids(raw["item"].to_numpy()),
                      "year": year.to_numpy(dtype=np.float64)})
  for g, name in enumerate(ML100K_GENRES):
    out[f"genre:{name}"] = io.parse_numbers(
        raw[f"g{g}"].to_numpy(), line, path=str(path), name=f"genre {name}",
        what="items file")
  return out

