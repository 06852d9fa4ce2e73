"""Side information of the MovieLens releases: who rated, what, and when.

User features (ml-100k's u.user, ml-1m's users.dat; the later releases
have none): gender and occupation (categorical), age (continuous). Item
features (every release): the genre flags and the year (continuous).
Time: each rating's timestamp scaled to [0, 1] over the data set
(`jaxcf.sidefiles` reads the files). Tables are aligned with a
`CollabData`'s vocabularies; row 0 ('#na#') and unknown categories get code
0 and the mean of continuous features (0 after standardising).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import numpy as np
import pandas as pd

from jaxcf import io, movielens, sidefiles
from jaxcf.data import CollabData
from jaxcf.errors import UserError

KINDS = ("user", "item", "time")
USER_CATS = ("gender", "occupation")
USER_CONTS = ("age",)


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


def _standardise(x: np.ndarray) -> tuple[np.ndarray, float, float]:
  mean = float(np.nanmean(x))
  std = float(np.nanstd(x)) or 1.0
  z = (x - mean) / std
  return np.where(np.isnan(z), 0.0, z), mean, std


def movielens(data: CollabData, folder: Path, kinds: Sequence[str] = KINDS,
              release: movielens.Release = movielens.ML100K) -> SideFeatures:
  """Side features of a MovieLens release for `data`'s users, items and
  rows; `folder` holds the release's files."""
  bad = set(kinds) - set(KINDS)
  if bad:
    raise UserError(f"--side={','.join(kinds)}: unknown {sorted(bad)}; "
                    f"choose from {', '.join(KINDS)}")
  spec = {"user_cats": (), "user_conts": 0, "item_cats": (), "item_conts": 0,
          "use_time": "time" in kinds}
  constants, categories, scales = {}, {}, {}
  if "user" in kinds:
    users = sidefiles.users(release, folder)
    if users is None:
      raise UserError(f"--side=user: {release.name} holds no user "
                      "demographics (ml-100k and ml-1m do); use "
                      "--side=item,time")
    users = users.set_index("user")
    ids = data.users.classes
    missing = ~pd.Index(ids).isin(users.index)
    if missing.any():
      raise UserError(f"{folder} has no user features for user "
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
    items = sidefiles.items(release, folder).set_index("item")
    if data.item_key == "title":  # the first id of each title stands for it
      first = data.table.drop_duplicates("title").set_index("title")["item"]
      ids = first.loc[data.items.classes].to_numpy()
    else:
      ids = data.items.classes
    missing = ~pd.Index(ids).isin(items.index)
    if missing.any():
      raise UserError(f"{folder} has no item features for item "
                      f"{io.show(ids[missing][0])}")
    items = items.loc[ids]
    year, _, _ = _standardise(items["year"].to_numpy(np.float64))
    genres = items[[c for c in items if c.startswith("genre:")]].to_numpy()
    cont = np.zeros((len(data.items), genres.shape[1] + 1), np.float32)
    cont[1:] = np.column_stack([genres, year])
    constants["item_cont"] = cont
    spec["item_conts"] = genres.shape[1] + 1
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
