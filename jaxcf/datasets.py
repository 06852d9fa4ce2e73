"""One call from a data source and a split choice to `CollabData`.

Sources: a MovieLens release by name (found or downloaded by
`jaxcf.movielens`, read by `jaxcf.mlread`), or any ratings file
(`jaxcf.io.read_ratings`) with an optional items file for titles.
Splits: 'random' (fastai's RandomSplitter), 'ratio:0.9' (a seeded 90/10
holdout), 'temporal:0.2' or 'leave_last_out' (each user's latest ratings),
the official MovieLens 100k splits u1..u5/ua/ub, or a file of validation
(user, item) pairs.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from jaxcf import data, io, items, mlread, movielens
from jaxcf.errors import UserError


@dataclasses.dataclass(frozen=True)
class Source:
  """Where ratings come from. Without ratings_file: the MovieLens release
  `dataset`.

  Attributes:
    dataset: a `movielens.RELEASES` name ('movielens' is ml-100k).
    ratings_file: a CSV/TSV of ratings, or None for the release.
    data_dir: a folder that is or holds the release's folder (see
      `movielens.find`).
    columns: ratings-file columns [user, item, rating(, timestamp)], names or
      positions; None finds them.
    sep: the ratings file's separator; None guesses.
    items_file: an items file with titles, for item_name='title'.
    item_columns: the items file's [id, title] columns.
    item_sep: the items file's separator; None guesses.
    encoding: of the ratings and items files; None decides per file
      (`textfile.encoding_of`).
  """
  ratings_file: str | None = None
  data_dir: str | None = None
  dataset: str = "ml-100k"
  columns: Sequence[io.Column] | None = None
  sep: str | None = None
  items_file: str | None = None
  item_columns: Sequence[io.Column] = (0, 1)
  item_sep: str | None = None
  encoding: str | None = None

  @property
  def release(self) -> movielens.Release | None:
    """The MovieLens release read, or None for a ratings file."""
    if self.ratings_file is not None:
      return None
    return movielens.RELEASES[
        "ml-100k" if self.dataset == "movielens" else self.dataset]


def read_table(source: Source, log=None):
  """Reads the ratings (with titles when known) and describes where from.

  Returns:
    (table, where, ml_folder): the ratings DataFrame, a phrase naming the
    file(s), and the MovieLens release's folder (None for a ratings file).
  """
  release = source.release
  if release is not None:
    folder = movielens.find(source.data_dir, release=release)
    table = mlread.read(release, folder, log)
    return table, str(folder / release.files[0]), folder
  table = io.read_ratings(source.ratings_file, columns=source.columns,
                          sep=source.sep, encoding=source.encoding)
  if source.items_file:
    titles = items.read_titles(source.items_file, columns=source.item_columns,
                               sep=source.item_sep, encoding=source.encoding)
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
    split: 'random', 'ratio:TRAIN_SHARE', 'temporal:VALID_SHARE',
      'leave_last_out', or an official MovieLens 100k split (u1..u5, ua,
      ub); see `data.parse_split`.
    valid_pct, seed: the random split's validation share and seed (ratio's
      seed too).
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
  kind, arg = data.parse_split(split, movielens.SPLITS)
  table, where, folder = read_table(source, log)
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
  elif kind in ("random", "ratio"):
    share = valid_pct if kind == "random" else 1 - arg
    how = f"random {share:.0%} validation (seed {seed})"
    train_rows, valid_rows = data.random_split(len(table), share, seed)
  elif kind in ("temporal", "leave_last_out"):
    if "timestamp" not in table:
      raise UserError(f"--split={split} needs rating times: name the "
                      "timestamp column in --columns")
    how = ("each user's last rating" if arg is None else
           f"each user's latest {arg:.0%}") + " for validation"
    train_rows, valid_rows = data.latest_per_user(
        table["user"].to_numpy(), table["timestamp"].to_numpy(), arg)
  elif source.release is not movielens.ML100K:
    raise UserError(f"--split={split}: the official splits exist only for "
                    "MovieLens 100k; use --split=random, ratio:0.9, "
                    "temporal:0.2, leave_last_out or --valid_file")
  else:
    path = movielens.split_file(folder, split)
    how = f"official split {split} ({path.name})"
    train_rows, valid_rows = data.pairs_split(table, data.read_pairs(
        str(path)), str(path))
  if len(valid_rows) == 0:
    raise UserError(f"{how} leaves no validation rows; raise --valid_pct")

  prepared = dataclasses.replace(
      data.prepare(table, train_rows, valid_rows, item_key=item_key),
      folder=folder, release=source.release)
  if log:
    n_ids = table["item"].nunique()
    items = (f"{n_ids:,} items" if item_key == "item" else
             f"{n_ids:,} item ids with {prepared.n_items - 1:,} titles")
    log(f"read {len(table):,} ratings from {where}: "
        f"{prepared.n_users - 1:,} users, {items}; {how}: "
        f"{len(train_rows):,} train / {len(valid_rows):,} valid rows")
  return prepared
