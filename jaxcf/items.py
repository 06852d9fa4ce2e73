"""Items files: item id -> title (u.item, movies.csv), and titles attached
to ratings."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from jaxcf import io
from jaxcf.errors import UserError



def read_titles(path: str, *, columns: Sequence[io.Column] = (0, 1),
                sep: str | None = None, header: bool | None = None,
                encoding: str | None = None) -> pd.DataFrame:
  """Reads an items file mapping item id -> title (e.g. u.item, movies.csv).

  Returns:
    A DataFrame with columns item (int64 or str, unique) and title (str,
    verbatim: u.item has titles with a trailing space, which fastai keeps).
  """
  what = "items file"
  if len(columns) != 2:
    raise UserError(f"--item_columns names {len(columns)} columns; give 2 "
                    "(item id, title)")
  raw, line = io.read_columns(path, dict(zip(("item", "title"), columns)),
                              sep=sep, header=header, encoding=encoding,
                              what=what)
  out = pd.DataFrame({"item": io.parse_ids(raw["item"].to_numpy()),
                      "title": raw["title"].astype(str).to_numpy()})
  dup = out["item"].duplicated().to_numpy()
  if dup.any():
    i = int(np.argmax(dup))
    raise UserError(f"{what} {path}, line {line[i]}: item id "
                    f"{io.show(out['item'].iloc[i])} appears twice; each item "
                    "needs one title")
  return out


def attach_titles(ratings: pd.DataFrame, titles: pd.DataFrame,
                  titles_path: str) -> pd.DataFrame:
  """Adds a title column; every rated item must have a title."""
  if ratings["item"].dtype != titles["item"].dtype:
    ratings = ratings.assign(item=ratings["item"].astype(str))
    titles = titles.assign(item=titles["item"].astype(str))
  mapping = pd.Series(titles["title"].to_numpy(), index=titles["item"])
  title = ratings["item"].map(mapping)
  missing = title.isna().to_numpy()
  if missing.any():
    ids = pd.unique(ratings["item"][missing])
    raise UserError(f"items file {titles_path}: no title for {len(ids)} rated "
                    f"item id(s), e.g. {io.show(ids[0])}; add them or drop "
                    "--items_file to key items by id")
  return ratings.assign(title=title.to_numpy(dtype=object))
