"""A trained model as a person uses it, by user ids and item ids or titles.

    model = jaxcf.load("runs/book")            # what train.py --workdir saved
    model.predict([196, 186], ["Kolya (1996)", "L.A. Confidential (1997)"])
    model.recommend(196, k=10)                 # a table: item, title, score
    model.recommend_many([1, 2, 3], k=5)       # one top_k, vmapped over users
    model.similar_items("Star Wars (1977)")    # cosine, with a popularity floor
    model.biases().head()                      # the least liked, by bias
    model.pca(n=3)                             # the book's PCA of item factors
    me = model.fold_in({"Star Wars (1977)": 5, "Titanic (1997)": 2})
    model.recommend(me)                        # a new user, no retraining
    model.export_npz("model.npz")              # plain arrays, no pickle

Items are the vocabulary's keys: titles when the model was trained with
--item_name=title (an item id is accepted too and mapped to its title), ids
otherwise. Ids that were never in the data, or only in the validation split
(their rows never trained), are refused with a UserError that says which.
An ensemble predicts its members' mean; its interpretation (biases,
factors, PCA, neighbours) is its first member's, the best on validation.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from jaxcf import artifact as artifact_lib
from jaxcf import foldin, interpret, ranking, steps, uncertainty
from jaxcf import features as side_features
from jaxcf.data import CollabData, Vocab
from jaxcf.errors import UserError
from jaxcf.foldin import FoldedUser  # pylint: disable=unused-import


class TrainedModel(interpret.Interpretation):
  """An `artifact.Artifact` with lookups by id, predictions and more (its
  interpretation: `jaxcf.interpret`)."""

  def __init__(self, saved: artifact_lib.Artifact):
    self.artifact = saved
    self.users: Vocab = saved.users
    self.items: Vocab = saved.items
    self.item_key, self.titles = saved.item_key, saved.titles
    self.item_ids, self.info = saved.item_ids, saved.info
    self.train, self.valid = saved.train, saved.valid
    self.states = [steps.TrainState(
        step=jnp.zeros([], jnp.int32), params=jax.device_put(m.params),
        model_state=jax.device_put(m.model_state), opt_state=None,
        rng=jax.random.key(0), model=saved.module(m), tx=None)
                   for m in saved.members]
    self.specs = [m.spec for m in saved.members]
    t_users, t_items = np.asarray(self.train.users), np.asarray(
        self.train.items)
    self.user_trained = np.bincount(t_users, minlength=len(self.users)) > 0
    self.item_counts = np.bincount(t_items, minlength=len(self.items))
    self._seen = pd.Series(t_items).groupby(t_users).agg(
        lambda s: np.unique(s.to_numpy())).to_dict()
    # Ids and titles both: the ids behind each title (a title-keyed model),
    # the rows of each title (an id-keyed one).
    self._ids_of_title: dict = {}
    for raw, title in self.item_ids.items():
      self._ids_of_title.setdefault(title, []).append(raw)
    self._rows_of_title: dict = {}
    if self.titles is not None and self.item_key != "title":
      for row, title in enumerate(self.titles[1:], 1):
        self._rows_of_title.setdefault(title, []).append(row)

  @property
  def spec(self) -> dict:
    """The first member's spec, as JSON."""
    return self.specs[0].to_json()

  @property
  def state(self) -> steps.TrainState:
    """The first member's state."""
    return self.states[0]

  @classmethod
  def from_training(cls, spec, params, model_state, data: CollabData,
                    info: dict | None = None) -> "TrainedModel":
    """From one trained model (its spec or `sweep.Replica`, variables) and
    the data it was trained on."""
    return cls.from_members([(spec, params, model_state)], data, info)

  @classmethod
  def from_members(cls, members, data: CollabData, info: dict | None = None
                   ) -> "TrainedModel":
    """An ensemble predicting its members' mean, from [(spec, params,
    model_state)] (the best first: interpretation reads it) and the data
    they were trained on."""
    return cls(artifact_lib.Artifact.from_training(members, data, info))

  def save(self, path: str) -> None:
    """Writes the model (orbax, atomic) to the directory `path`."""
    self.artifact.save(path)

  def export_npz(self, path: str) -> None:
    """Plain arrays for numpy alone (see `artifact.export_npz`)."""
    artifact_lib.export_npz(self.artifact, path)

  # Lookups -------------------------------------------------------------------

  def user_index(self, user) -> int:
    """The row of a user id, or a UserError saying why there is none."""
    index = int(self.users.encode([_coerce(user, self.users.classes)])[0])
    if index == 0:
      raise UserError(f"user {user!r} is not in the data the model was "
                      "trained on; fold_in() their ratings instead")
    if not self.user_trained[index]:
      raise UserError(f"user {user!r} occurs only in the validation split, "
                      "so their factors never trained; fold_in() their "
                      "ratings instead")
    return index

  def item_index(self, item) -> int:
    """The row of an item (title or id), or a UserError saying why not."""
    key = _coerce(item, self.items.classes)
    index = int(self.items.encode([key])[0])
    if index == 0 and item in self.item_ids:
      index = int(self.items.encode([self.item_ids[item]])[0])
    rows = self._rows_of_title.get(item, []) if index == 0 else []
    if len(rows) > 1:
      ids = ", ".join(map(repr, self.items.decode(rows).tolist()))
      raise UserError(f"title {item!r} names {len(rows)} items (ids {ids}); "
                      "pass the id")
    if rows:
      index = rows[0]
    if index == 0:
      what = "title or id" if self.item_key == "title" else "item id"
      raise UserError(f"{what} {item!r} is not in the data the model was "
                      "trained on")
    if self.item_counts[index] == 0:
      raise UserError(f"item {item!r} occurs only in the validation split, "
                      "so its factors never trained")
    return index

  def _item_frame(self, indices, **columns) -> pd.DataFrame:
    indices = np.asarray(indices)
    out = {"item": self.items.decode(indices)}
    if self.titles is not None and self.item_key != "title":
      out["title"] = self.titles[indices]
    elif self._ids_of_title:  # titles keyed: the id (ids) behind each
      ids = [sorted(self._ids_of_title.get(t, [])) for t in out["item"]]
      out = {"item_id": [i[0] if len(i) == 1 else tuple(i) for i in ids],
             **out}
    out.update(columns)
    return pd.DataFrame(out)

  # Predictions and recommendations -----------------------------------------

  def predict(self, users, items, batch_size: int = steps.EVAL_BATCH,
              return_std: bool = False):
    """Predicted ratings for pairs of user ids and items, any number; one
    user (an id, a str being one id, or a FoldedUser) with many items
    predicts that user's. return_std (bpmf): (mean, std) of the predictive
    distribution, posterior and noise (`jaxcf.uncertainty`)."""
    if return_std and isinstance(users, FoldedUser):
      states, row, _ = self._user_states(users)
      i = jnp.asarray([self.item_index(x) for x in _listed(items)], jnp.int32)
      return uncertainty.predictive(states, jnp.full(i.shape, row), i)
    if return_std:
      users = [users] * len(_listed(items)) if _one(users) else users
    elif _one(users) or isinstance(users, FoldedUser):
      return self.predict_for(users, _listed(items), batch_size=batch_size)
    users, items = list(users), _listed(items)
    if len(users) != len(items):
      raise UserError(f"predict needs as many users ({len(users)}) as items "
                      f"({len(items)})")
    u = jnp.asarray([self.user_index(x) for x in users], jnp.int32)
    i = jnp.asarray([self.item_index(x) for x in items], jnp.int32)
    if return_std:
      return uncertainty.predictive(self.states, u, i)
    return _mean([_predict(s, u, i, batch_size) for s in self.states])

  def predict_for(self, user, items: Iterable, times=None,
                  batch_size: int = steps.EVAL_BATCH) -> np.ndarray:
    """Predicted ratings of one user (an id or a FoldedUser) for items.

    times: rating times in [0, 1] (see `features.scaled_times`) for models
    that use them; None stands for the latest.
    """
    states, row, _ = self._user_states(user)
    i = np.array([self.item_index(x) for x in _listed(items)], np.int32)
    u = jnp.asarray(np.full(len(i), row, np.int32))
    t = None if times is None else jnp.asarray(times, jnp.float32)
    return _mean([_predict(s, u, jnp.asarray(i), batch_size, t)
                  for s in states])

  def _user_states(self, user) -> tuple[list, int, np.ndarray]:
    """(member states, row, seen items) for a user id or a FoldedUser (its
    rows go into row 0, the '#na#' row, of a copy of each member)."""
    if isinstance(user, FoldedUser):
      return ([foldin.folded_state(s, rows, user.constants)
               for s, rows in zip(self.states, user.rows)], 0, user.seen)
    index = self.user_index(user)
    return self.states, index, self._seen.get(index, np.zeros(0, int))

  def scores(self, users: np.ndarray) -> jax.Array:
    """Predicted ratings [len(users), n_items] of every item for user
    rows, averaged over the members."""
    return ranking.scorer(self.states, len(self.items))(users)

  def recommend(self, user, k: int = 10, exclude_seen: bool = True,
                rank_by: str = "mean") -> pd.DataFrame:
    """The k items with the highest predicted rating for one user (an id or
    a FoldedUser): a table of item (and title), score. rank_by (bpmf):
    'lower' or 'upper' ranks by that end of the central 90% predictive
    interval instead of the mean (cautious or adventurous picks)."""
    states, row, seen = self._user_states(user)
    if rank_by != "mean":
      scores = uncertainty.bound_scores(states, row, len(self.items), rank_by)
    else:
      scores = ranking.scorer(states, len(self.items))(np.array([row]))
    top = self._top_k(scores, [seen if exclude_seen else np.zeros(0, int)],
                      k)
    real = np.isfinite(top[0][0])  # fewer candidates than k: fewer rows
    return self._item_frame(top[1][0][real], score=top[0][0][real])

  def recommend_many(self, users: Sequence, k: int = 10,
                     exclude_seen: bool = True) -> pd.DataFrame:
    """Top-k for many user ids in one call."""
    rows = np.array([self.user_index(u) for u in users], np.int32)
    seen = [self._seen.get(r, np.zeros(0, int)) if exclude_seen
            else np.zeros(0, int) for r in rows]
    scores, items = self._top_k(self.scores(rows), seen, k)
    real = np.isfinite(scores).reshape(-1)  # fewer candidates than k
    frame = self._item_frame(items.reshape(-1)[real],
                             score=scores.reshape(-1)[real])
    frame.insert(0, "rank", np.tile(np.arange(1, items.shape[1] + 1),
                                    len(rows))[real])
    frame.insert(0, "user", np.repeat(np.asarray(users, dtype=object),
                                      items.shape[1])[real])
    return frame

  def _top_k(self, scores: jax.Array, seen: list[np.ndarray], k: int):
    """(scores, items) [users, k] of the best items not excluded; excluded
    ones (-inf) fill the places when there are fewer than k."""
    n_items = len(self.items)
    k = min(interpret.positive(k, "k"), n_items - 1)
    excluded = np.zeros((len(seen), n_items), bool)
    excluded[:, 0] = True  # '#na#'
    excluded[:, self.item_counts == 0] = True  # never trained
    for r, s in enumerate(seen):
      excluded[r, s] = True
    top_scores, top_items = _top_k_items(scores, jnp.asarray(excluded), k)
    return np.asarray(top_scores), np.asarray(top_items)

  # Ranking quality -----------------------------------------------------------

  def ranking_metrics(self, k: int = 10, threshold: float = 4.0
                      ) -> dict[str, float]:
    """precision@k, recall@k and NDCG@k on the validation split."""
    interpret.positive(k, "k")
    return ranking.evaluate_ranking(ranking.scorer(self.states,
                                                   len(self.items)),
                                    self.train, self.valid,
                                    len(self.items), k=k,
                                    threshold=threshold)

  # New users -----------------------------------------------------------------

  def fold_in(self, ratings, l2: float = 5.0, steps: int = 200,
              features: Mapping[str, Any] | None = None) -> FoldedUser:
    """A new user's rows from a few ratings, the item side frozen (see
    `jaxcf.foldin`).

    Args:
      ratings: {item: rating}, or (item, rating) pairs; items by title or id.
        None or empty gives the average trained user (the book's
        "representative user"): recommendations then follow the item biases.
        A side_nn model trained with id_dropout starts instead from its
        unknown-user row and the user's `features`.
      l2: ridge strength pulling the user towards that starting point.
      steps: gradient steps for the models that are not solved in closed
        form.
      features: side_nn only: the user's features, e.g. {'age': 31,
        'gender': 'F', 'occupation': 'writer'}.
    """
    pairs = list(ratings.items()) if isinstance(ratings, Mapping) else list(
        ratings or [])
    items = np.array([self.item_index(i) for i, _ in pairs], np.int32)
    values = np.array([foldin.checked_rating(r, i, self.specs[0].y_range)
                       for i, r in pairs], np.float64)
    constants = {}
    vocab = self.artifact.side_vocab or {}
    if vocab.get("categories") or vocab.get("scales"):
      encoder = side_features.SideFeatures({}, {}, None, None, **vocab)
      constants = encoder.encode_user(features or {})
    elif features:
      raise UserError("this model takes no user features")
    rows = tuple(foldin.fold_member(state, spec, items, values,
                                    self.user_trained, constants, l2, steps)
                 for state, spec in zip(self.states, self.specs))
    return FoldedUser(rows=rows, seen=np.unique(items), constants=constants)


def load(path: str, device=None) -> TrainedModel:
  """A model saved by train.py --workdir (pass the workdir or its model/)."""
  return TrainedModel(artifact_lib.Artifact.load(path, device))


def _one(ids) -> bool:
  """Whether `ids` is one id (a str is one id, not its characters)."""
  return isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__")


def _listed(ids) -> list:
  return [ids] if _one(ids) else list(ids)


def _coerce(value, classes: np.ndarray):
  """'196' -> 196 for integer vocabularies (ids typed at a prompt)."""
  if classes.dtype.kind == "i" and isinstance(value, str) and \
      value.strip().lstrip("+-").isdigit():
    return int(value)
  return value


def _mean(predictions: list) -> np.ndarray:
  return np.asarray(predictions[0] if len(predictions) == 1 else
                    jnp.mean(jnp.stack(predictions), axis=0))


@functools.partial(jax.jit, static_argnames="k")
def _top_k_items(scores, excluded, k):
  """(scores, items) [users, k]: the top k of each row not excluded."""
  return jax.lax.top_k(jnp.where(excluded, -jnp.inf, scores), k)


_predict = jax.jit(steps.predict_all, static_argnums=3)
