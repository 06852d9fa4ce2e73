"""From a ratings table to encoded, split arrays on the device.

A ratings table is a DataFrame with columns user, item, rating (and maybe
timestamp, title), as `jaxcf.io` and `jaxcf.movielens` return. This module
builds the vocabularies (index 0 is `#na#`, the unknown id, as in fastai),
chooses the validation rows and puts int32/float32 arrays on the device.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, NamedTuple

import jax
import numpy as np
import pandas as pd

from jaxcf import io
from jaxcf.errors import UserError

UNKNOWN = "#na#"


def _ids(values) -> np.ndarray:
  """Ids as an array; strings as Python objects, because numpy's
  fixed-width strings drop trailing NUL characters ('a\\0' -> 'a')."""
  array = np.asarray(values)
  if array.dtype.kind in "US":
    array = np.asarray(values, dtype=object)
  return array


class Vocab:
  """A sorted vocabulary of ids; index 0 stands for any unknown id.

  Attributes:
    classes: the distinct known ids, sorted (numbers numerically, strings by
      code point); id `classes[i]` encodes as `i + 1`.
  """

  def __init__(self, values):
    self.classes = np.asarray(pd.unique(_ids(values)))
    self.classes.sort()
    self._index = pd.Index(self.classes)

  @classmethod
  def from_classes(cls, classes) -> "Vocab":
    """A vocabulary of already sorted, distinct ids (as saved)."""
    vocab = cls.__new__(cls)
    vocab.classes = _ids(classes)
    vocab._index = pd.Index(vocab.classes)
    return vocab

  def __len__(self) -> int:
    """Number of rows an embedding table needs: the ids plus `#na#`."""
    return len(self.classes) + 1

  def encode(self, values) -> np.ndarray:
    """ids -> int32 indices in [1, len); ids not in the vocabulary -> 0."""
    return (self._index.get_indexer(_ids(values)) + 1).astype(np.int32)

  def decode(self, indices) -> np.ndarray:
    """indices -> ids (object array); 0 decodes to '#na#'."""
    indices = np.asarray(indices)
    if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
      raise IndexError(f"indices must lie in [0, {len(self)})")
    table = np.concatenate([np.array([UNKNOWN], dtype=object),
                            self.classes.astype(object)])
    return table[indices]


class Ratings(NamedTuple):
  """Encoded rating triples on the device (a pytree).

  users, items: int32 [n] vocabulary indices; ratings: float32 [n];
  times: float32 [n] when to the model rating times matter (side features),
  else None.
  """
  users: jax.Array
  items: jax.Array
  ratings: jax.Array
  times: jax.Array | None = None

  @property
  def size(self) -> int:
    """The number of ratings (len() stays the tuple's: 4 fields)."""
    return int(self.ratings.shape[0])

  def take(self, rows) -> "Ratings":
    """The rows `rows` of every field (a gather on the device)."""
    return jax.tree.map(lambda x: x[rows], self)


@dataclasses.dataclass(frozen=True)
class CollabData:
  """Everything training needs: vocabularies and the two encoded splits.

  Attributes:
    users, items: vocabularies of user ids and item keys (titles when
      `item_key == 'title'`), built from all rows. Rows of ids that occur
      only in validation never receive a gradient.
    train, valid: encoded ratings on the default device.
    table: the source table; `train_rows`/`valid_rows` index into it.
    item_key: the table column that identifies items ('item' or 'title').
    folder: the MovieLens folder the data came from (None for other files).
    release: which MovieLens release (`movielens.Release`), or None.
    side: side features (`jaxcf.features.SideFeatures`) once attached.
  """
  users: Vocab
  items: Vocab
  train: Ratings
  valid: Ratings
  table: pd.DataFrame
  train_rows: np.ndarray
  valid_rows: np.ndarray
  item_key: str
  folder: Any = None
  release: Any = None
  side: Any = None

  @property
  def n_users(self) -> int:
    return len(self.users)

  @property
  def n_items(self) -> int:
    return len(self.items)

  def content_hash(self) -> str:
    """SHA-256 of what training sees: the vocabularies, both splits (with
    rating times) and the side-feature tables. A rerun on edited data gets
    another hash (the resume fingerprint holds it)."""
    digest = hashlib.sha256()
    parts = [self.users.classes, self.items.classes, *self.train,
             *self.valid]
    if self.side is not None:
      parts += [self.side.constants[k] for k in sorted(self.side.constants)]
    for part in parts:
      if part is None:
        continue
      array = np.asarray(part)
      if array.dtype == object:  # string ids: their text, unambiguously
        array = np.asarray([f"{type(v).__name__}:{v}" for v in array.tolist()])
      digest.update(f"{array.dtype}{array.shape}".encode())
      digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


DUPLICATES = ("error", "keep_last", "mean")


def resolve_duplicates(table: pd.DataFrame, how: str = "error",
                       source: str = "the ratings"
                       ) -> tuple[pd.DataFrame, int]:
  """Handles (user, item id) pairs rated more than once.

  how: 'error' refuses them (naming how many and an example), 'keep_last'
  keeps the last in file order, 'mean' averages their ratings (keeping the
  latest timestamp). Returns (table, number of rows removed).
  """
  if how not in DUPLICATES:
    raise UserError(f"--duplicates={how} must be one of "
                    f"{', '.join(DUPLICATES)}")
  dup = table.duplicated(["user", "item"], keep="last").to_numpy()
  if not dup.any():
    return table, 0
  count = int(dup.sum())
  if how == "error":
    first = table.loc[dup, ["user", "item"]].iloc[0]
    raise UserError(
        f"{source}: {count} rating(s) repeat an earlier (user, item) pair, "
        f"e.g. {io.show((first['user'], first['item']))}; pass "
        "--duplicates=keep_last or --duplicates=mean")
  if how == "keep_last":
    return table[~dup].reset_index(drop=True), count
  grouped = table.groupby(["user", "item"], sort=False)
  merged = grouped.agg({c: ("mean" if c == "rating" else "max" if
                            c == "timestamp" else "first")
                        for c in table.columns if c not in ("user", "item")})
  merged = merged.reset_index()[list(table.columns)]
  merged["rating"] = merged["rating"].astype(np.float32)
  return merged, count


def check_range(table: pd.DataFrame, y_range, clip: bool = False
                ) -> tuple[pd.DataFrame, int]:
  """Ratings outside y_range = (low, high): an error, or clipped if `clip`.

  Returns (table, number of ratings clipped).
  """
  if y_range is None:
    return table, 0
  low, high = y_range
  r = table["rating"].to_numpy()
  out = (r < low) | (r > high)
  if not out.any():
    return table, 0
  if not clip:
    raise UserError(
        f"{int(out.sum())} rating(s) lie outside --y_range={low:g},{high:g} "
        f"(from {r.min():g} to {r.max():g}); widen --y_range or pass "
        "--clip_ratings")
  return table.assign(rating=np.clip(r, low, high).astype(np.float32)), int(
      out.sum())


def random_split(n: int, valid_pct: float, seed: int
                 ) -> tuple[np.ndarray, np.ndarray]:
  """fastai's RandomSplitter: shuffle all rows, the first valid_pct are valid.

  Returns:
    (train_rows, valid_rows): int64 row indices, disjoint, covering [0, n).
  """
  if not 0.0 < valid_pct < 1.0:
    raise UserError(f"--valid_pct={valid_pct} must lie strictly between 0 "
                    "and 1")
  perm = np.random.default_rng(seed).permutation(n)
  cut = int(valid_pct * n)
  return perm[cut:], perm[:cut]


def parse_split(text: str, official=()) -> tuple[str, object]:
  """--split's value as (kind, argument): ('random', None), ('official',
  'u1'), ('ratio', train share), ('temporal', validation share per user) or
  ('leave_last_out', None); a UserError for anything else."""
  if text in ("random", "leave_last_out"):
    return text, None
  if text in official:
    return "official", text
  kind, _, value = text.partition(":")
  if kind in ("ratio", "temporal"):
    try:
      share = float(value)
    except ValueError:
      share = float("nan")
    if 0 < share < 1:
      return kind, share
  raise UserError(
      f"--split={text} must be random, ratio:TRAIN_SHARE (e.g. ratio:0.9), "
      "temporal:VALID_SHARE (each user's latest, e.g. temporal:0.2), "
      "leave_last_out" + (f", or an official MovieLens split: "
                          f"{', '.join(official)}" if official else ""))


def latest_per_user(users, times, share: float | None
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Each user's latest ratings go to validation: the last `share` of them
  (at least one), or with share None the last one (leave-last-out). A user
  keeps at least one rating in training (users with one rating keep it
  there); equal times keep file order.

  Returns:
    (train_rows, valid_rows), as for `random_split`.
  """
  n = len(users)
  codes = pd.factorize(np.asarray(users))[0]
  order = np.lexsort((np.arange(n), np.asarray(times), codes))
  sorted_codes = codes[order]
  starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
  counts = np.diff(np.r_[starts, n])
  rank = np.arange(n) - np.repeat(starts, counts)
  k = (np.ones_like(counts) if share is None else
       np.maximum(1, np.floor(share * counts).astype(counts.dtype)))
  k = np.minimum(k, counts - 1)
  valid = np.zeros(n, bool)
  valid[order] = rank >= np.repeat(counts - k, counts)
  rows = np.arange(n)
  return rows[~valid], rows[valid]


def pairs_split(table: pd.DataFrame, pairs: pd.DataFrame, source: str
                ) -> tuple[np.ndarray, np.ndarray]:
  """Validation rows are those whose (user, item) is listed in `pairs`.

  Args:
    table: ratings with user and item columns (raw ids).
    pairs: a DataFrame with user and item columns; every pair must occur in
      `table` and be listed once.
    source: where the pairs came from, for messages.

  Returns:
    (train_rows, valid_rows), as for `random_split`.
  """
  pairs = pairs[["user", "item"]]
  dup = pairs.duplicated()
  if dup.any():
    first = tuple(pairs[dup].iloc[0])
    raise UserError(f"{source}: {int(dup.sum())} (user, item) pair(s) are "
                    f"listed twice, e.g. {io.show(first)}; list each once")
  keys = table[["user", "item"]]
  if any(keys[c].dtype != pairs[c].dtype for c in ("user", "item")):
    keys, pairs = keys.astype(str), pairs.astype(str)
  index = pd.MultiIndex.from_frame(pairs)
  in_valid = pd.MultiIndex.from_frame(keys).isin(index)
  found = index.isin(pd.MultiIndex.from_frame(keys))
  if not found.all():
    first = tuple(pairs[~found].iloc[0])
    raise UserError(f"{source}: {int((~found).sum())} of {len(pairs)} "
                    f"validation pair(s) are not in the ratings, e.g. "
                    f"(user, item) = {io.show(first)}; is it the split for this data?")
  rows = np.arange(len(table))
  return rows[~in_valid], rows[in_valid]


def prepare(table: pd.DataFrame, train_rows: np.ndarray,
            valid_rows: np.ndarray, *, item_key: str = "item",
            device=None) -> CollabData:
  """Encodes ids with vocabularies of all rows and puts the splits on device.

  Args:
    table: ratings (user, item, rating[, title, ...]).
    train_rows, valid_rows: row indices into `table`.
    item_key: 'item' to key items by id, 'title' by title (the book's choice
      for MovieLens, where 18 ids share a title).
    device: a jax device or sharding; None means the default device.
  """
  if item_key not in table:
    raise UserError(f"--item_name={item_key}: the ratings have no {item_key!r}"
                    " column (titles need an items file)")
  if len(train_rows) == 0:
    raise UserError("the split leaves no training rows; lower --valid_pct or "
                    "check the validation file")
  users, items = Vocab(table["user"]), Vocab(table[item_key])
  u = users.encode(table["user"])
  i = items.encode(table[item_key])
  r = table["rating"].to_numpy(np.float32)

  def put(rows):
    return Ratings(*(jax.device_put(x[rows], device) for x in (u, i, r)))

  return CollabData(users=users, items=items, train=put(train_rows),
                    valid=put(valid_rows), table=table,
                    train_rows=np.asarray(train_rows),
                    valid_rows=np.asarray(valid_rows), item_key=item_key)


def read_pairs(path: str) -> pd.DataFrame:
  """Reads (user, item) pairs: the first two columns of a TSV/CSV file.

  A header line is allowed (fastai-splits files start with 'user movie');
  further columns (a rating, a timestamp, as in u1.test) are ignored.
  """
  raw, _ = io.read_columns(path, {"user": 0, "item": 1},
                           what="validation file")
  if len(raw) == 0:
    raise UserError(f"validation file {path} lists no (user, item) pairs")
  return pd.DataFrame({"user": io.parse_ids(raw["user"].to_numpy()),
                       "item": io.parse_ids(raw["item"].to_numpy())})
