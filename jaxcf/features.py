"""Side information for MovieLens 100k: who rated, what, and when.

User features (u.user): gender and occupation (categorical), age
(continuous). Item features (u.item): the 19 genre flags and the release
year (continuous). Time: each rating's timestamp scaled to [0, 1] over the
data set. Tables are aligned with a `CollabData`'s vocabularies; row 0
('#na#') and unknown categories get code 0 and the mean of continuous
features (0 after standardising).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import numpy as np
import pandas as pd

from jaxcf import io
from jaxcf.data import CollabData
from jaxcf.errors import UserError

KINDS = ("user", "item", "time")
USER_CATS = ("gender", "occupation")
USER_CONTS = ("age",)
GENRES = 19


@dataclasses.dataclass(frozen=True)
class SideFeatures:
  """Feature tables for SideNN, and how to encode a new user's features.

  spec: SideNN's attributes (user_cats, user_conts, item_cats, item_conts,
    use_time). constants: the tables ('user_cat' int32 [n_users, k],
    'user_cont', 'item_cont' float32 [n, m]). train_times/valid_times:
    float32 [n] rating times in [0, 1], or None. categories: for each
    categorical user feature its values (code i + 1); scales: (mean, std) of
    each continuous user feature.
  """
  spec: dict[str, Any]
  constants: dict[str, np.ndarray]
  train_times: np.ndarray | None
  valid_times: np.ndarray | None
  categories: dict[str, list]
  scales: dict[str, tuple[float, float]]

  def encode_user(self, features: Mapping[str, Any]
                  ) -> dict[str, np.ndarray]:
    """{'age': 31, 'gender': 'F', 'occupation': 'writer'} -> table rows.

    Missing or unknown values get the unknown code / the mean.
    """
    unknown = set(features) - set(self.categories) - set(self.scales)
    if unknown:
      raise UserError(f"unknown user feature(s) {sorted(unknown)}; known: "
                      f"{sorted(self.categories) + sorted(self.scales)}")
    rows = {}
    if self.categories:
      rows["user_cat"] = np.array(
          [_code(self.categories[name], features.get(name))
           for name in self.categories], np.int32)
    if self.scales:
      rows["user_cont"] = np.array(
          [(float(features[name]) - mean) / std
           if features.get(name) is not None else 0.0
           for name, (mean, std) in self.scales.items()], np.float32)
    return rows


def _code(values: list, value) -> int:
  return values.index(value) + 1 if value in values else 0


def read_users(folder: Path) -> pd.DataFrame:
  """u.user: user, age, gender, occupation (zip code left out)."""
  path = str(folder / "u.user")
  raw, line = io.read_columns(path, {"user": 0, "age": 1, "gender": 2,
                                     "occupation": 3},
                              sep="|", header=False, what="users file")
  return pd.DataFrame({
      "user": io.parse_ids(raw["user"].to_numpy()),
      "age": io.parse_numbers(raw["age"].to_numpy(), line, path=path,
                              name="age", what="users file"),
      "gender": raw["gender"].str.strip().to_numpy(),
      "occupation": raw["occupation"].str.strip().to_numpy()})


def read_items(folder: Path) -> pd.DataFrame:
  """u.item: item, release year (NaN if unknown), genre0..genre18."""
  path = str(folder / "u.item")
  cols = {"item": 0, "date": 2, **{f"genre{g}": 5 + g for g in range(GENRES)}}
  raw, line = io.read_columns(path, cols, sep="|", header=False,
                              encoding="latin-1", what="items file",
                              optional=("date",))
  year = pd.to_datetime(raw["date"], format="%d-%b-%Y", errors="coerce").dt.year
  out = pd.DataFrame({"item": io.parse_ids(raw["item"].to_numpy()),
                      "year": year.to_numpy(dtype=np.float64)})
  for g in range(GENRES):
    out[f"genre{g}"] = io.parse_numbers(raw[f"genre{g}"].to_numpy(), line,
                                        path=path, name=f"genre {g}",
                                        what="items file")
  return out


def _standardise(x: np.ndarray) -> tuple[np.ndarray, float, float]:
  mean = float(np.nanmean(x))
  std = float(np.nanstd(x)) or 1.0
  z = (x - mean) / std
  return np.where(np.isnan(z), 0.0, z), mean, std


def movielens(data: CollabData, folder: Path,
              kinds: Sequence[str] = KINDS) -> SideFeatures:
  """Side features of MovieLens 100k for `data`'s users, items and rows."""
  bad = set(kinds) - set(KINDS)
  if bad:
    raise UserError(f"--side={','.join(kinds)}: unknown {sorted(bad)}; "
                    f"choose from {', '.join(KINDS)}")
  spec = {"user_cats": (), "user_conts": 0, "item_cats": (), "item_conts": 0,
          "use_time": "time" in kinds}
  constants, categories, scales = {}, {}, {}
  if "user" in kinds:
    users = read_users(folder).set_index("user")
    ids = data.users.classes
    missing = ~pd.Index(ids).isin(users.index)
    if missing.any():
      raise UserError(f"{folder / 'u.user'} has no row for user "
                      f"{io.show(ids[missing][0])}")
    users = users.loc[ids]
    cat = np.zeros((len(data.users), len(USER_CATS)), np.int32)
    for k, name in enumerate(USER_CATS):
      values = sorted(users[name].unique())
      categories[name] = values
      cat[1:, k] = [values.index(v) + 1 for v in users[name]]
    cont = np.zeros((len(data.users), len(USER_CONTS)), np.float32)
    for k, name in enumerate(USER_CONTS):
      cont[1:, k], mean, std = _standardise(users[name].to_numpy(np.float64))
      scales[name] = (mean, std)
    constants.update(user_cat=cat, user_cont=cont)
    spec.update(user_cats=tuple(len(categories[n]) + 1 for n in USER_CATS),
                user_conts=len(USER_CONTS))
  if "item" in kinds:
    items = read_items(folder).set_index("item")
    if data.item_key == "title":  # the first id of each title stands for it
      first = data.table.drop_duplicates("title").set_index("title")["item"]
      ids = first.loc[data.items.classes].to_numpy()
    else:
      ids = data.items.classes
    items = items.loc[ids]
    year, _, _ = _standardise(items["year"].to_numpy())
    genres = items[[f"genre{g}" for g in range(GENRES)]].to_numpy()
    cont = np.zeros((len(data.items), GENRES + 1), np.float32)
    cont[1:] = np.column_stack([genres, year])
    constants["item_cont"] = cont
    spec["item_conts"] = GENRES + 1
  train_times = valid_times = None
  if "time" in kinds:
    scaled = scaled_times(data.table)
    train_times, valid_times = scaled[data.train_rows], scaled[data.valid_rows]
  return SideFeatures(spec=spec, constants=constants,
                      train_times=train_times, valid_times=valid_times,
                      categories=categories, scales=scales)


def scaled_times(table: pd.DataFrame) -> np.ndarray:
  """float32 [rows]: each rating's timestamp scaled to [0, 1] over table."""
  if "timestamp" not in table:
    raise UserError("--side=time needs rating timestamps")
  t = table["timestamp"].to_numpy(np.float64)
  return ((t - t.min()) / max(t.max() - t.min(), 1.0)).astype(np.float32)


def attach(data: CollabData, side: SideFeatures) -> CollabData:
  """`data` with the side features (and rating times on the device)."""
  put = lambda t: None if t is None else jax.device_put(t)
  return dataclasses.replace(
      data, side=side, train=data.train._replace(times=put(side.train_times)),
      valid=data.valid._replace(times=put(side.valid_times)))
