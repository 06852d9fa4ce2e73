"""One call from a data source and a split choice to `CollabData`.

Sources: MovieLens 100k (found or downloaded by `jaxcf.movielens`), or any
ratings file (`jaxcf.io.read_ratings`) with an optional items file for titles.
Splits: 'random' (fastai's RandomSplitter), the official MovieLens splits
u1..u5/ua/ub, or a file of validation (user, item) pairs.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from jaxcf import data, io, items, movielens
from jaxcf.errors import UserError


@dataclasses.dataclass(frozen=True)
class Source:
  """Where ratings come from. Without ratings_file: MovieLens 100k.

  Attributes:
    ratings_file: a CSV/TSV of ratings, or None for MovieLens 100k.
    data_dir: a folder that is or holds ml-100k/ (see `movielens.find`).
    columns: ratings-file columns [user, item, rating(, timestamp)], names or
      positions; None finds them.
    sep: the ratings file's separator; None guesses.
    items_file: an items file with titles, for item_name='title'.
    item_columns: the items file's [id, title] columns.
    item_sep: the items file's separator; None guesses.
  """
  ratings_file: str | None = None
  data_dir: str | None = None
  columns: Sequence[io.Column] | None = None
  sep: str | None = None
  items_file: str | None = None
  item_columns: Sequence[io.Column] = (0, 1)
  item_sep: str | None = None


def read_table(source: Source):
  """Reads the ratings (with titles when known) and describes where from.

  Returns:
    (table, where, ml_folder): the ratings DataFrame, a phrase naming the
    file(s), and the MovieLens folder (None for a ratings file).
  """
  if source.ratings_file is None:
    folder = movielens.find(source.data_dir)
    return movielens.load(folder), str(folder / "u.data"), folder
  table = io.read_ratings(source.ratings_file, columns=source.columns,
                          sep=source.sep)
  if source.items_file:
    titles = items.read_titles(source.items_file, columns=source.item_columns,
                            sep=source.item_sep)
    table = items.attach_titles(table, titles, source.items_file)
  return table, source.ratings_file, None


def load(source: Source = Source(), *, item_name: str = "title",
         split: str = "random", valid_pct: float = 0.2, seed: int = 42,
         valid_file: str | None = None, duplicates: str = "error",
         y_ranges=(), clip: bool = False, log=print) -> data.CollabData:
  """Reads, splits and encodes ratings; puts them on the device.

  Args:
    source: where the ratings come from (default: MovieLens 100k).
    item_name: 'title' keys items by title (the book's choice), 'movie' or
      'item' by id.
    split: 'random', or an official MovieLens split (u1..u5, ua, ub).
    valid_pct, seed: the random split's validation share and seed.
    valid_file: a TSV/CSV of validation (user, item id) pairs; overrides
      `split`.
    duplicates: what to do with repeated (user, item id) pairs: 'error',
      'keep_last' or 'mean' (see `data.resolve_duplicates`).
    y_ranges: the models' (low, high) ranges: ratings outside any of them
      are an error, or clipped into the narrowest with `clip`.
    log: where the summary lines go (None: silent).
  """
  item_key = {"title": "title", "movie": "item", "item": "item"}.get(item_name)
  if item_key is None:
    raise UserError(f"--item_name={item_name} must be 'title' or 'movie'")
  table, where, folder = read_table(source)
  say = log or (lambda _: None)
  table, removed = data.resolve_duplicates(table, duplicates, where)
  if removed:
    say(f"{removed:,} repeated (user, item) rating(s) resolved by "
        f"--duplicates={duplicates}")
  ranges = [r for r in y_ranges if r is not None]
  if ranges:
    narrowest = (max(r[0] for r in ranges), min(r[1] for r in ranges))
    if narrowest[0] >= narrowest[1]:
      raise UserError("the --y_range values share no common range")
    table, clipped = data.check_range(table, narrowest, clip)
    if clipped:
      say(f"warning: {clipped:,} rating(s) clipped into "
          f"[{narrowest[0]:g}, {narrowest[1]:g}] (--clip_ratings)")
  if item_key == "title" and "title" not in table:
    raise UserError("--item_name=title needs titles: pass --items_file (with "
                    "--item_columns=ID,TITLE) or use --item_name=movie")

  if valid_file:
    how = f"validation pairs from {valid_file}"
    train_rows, valid_rows = data.pairs_split(table, data.read_pairs(
        valid_file), valid_file)
  elif split == "random":
    how = f"random {valid_pct:.0%} validation (seed {seed})"
    train_rows, valid_rows = data.random_split(len(table), valid_pct, seed)
  elif folder is None:
    raise UserError(f"--split={split}: the official splits exist only for "
                    "MovieLens 100k; use --split=random or --valid_file")
  else:
    path = movielens.split_file(folder, split)
    how = f"official split {split} ({path.name})"
    train_rows, valid_rows = data.pairs_split(table, data.read_pairs(
        str(path)), str(path))
  if len(valid_rows) == 0:
    raise UserError(f"{how} leaves no validation rows; raise --valid_pct")

  prepared = dataclasses.replace(
      data.prepare(table, train_rows, valid_rows, item_key=item_key),
      folder=folder)
  if log:
    n_ids = table["item"].nunique()
    items = (f"{n_ids:,} items" if item_key == "item" else
             f"{n_ids:,} item ids with {prepared.n_items - 1:,} titles")
    log(f"read {len(table):,} ratings from {where}: "
        f"{prepared.n_users - 1:,} users, {items}; {how}: "
        f"{len(train_rows):,} train / {len(valid_rows):,} valid rows")
  return prepared
