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
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
from typing import Any, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

from jaxcf import checkpoint, models, ranking, runinfo, training
from jaxcf import features as side_features
from jaxcf.data import CollabData, Ratings, Vocab
from jaxcf.errors import UserError

FORMAT = "jaxcf-model-1"
DOT_MODELS = ("dot", "dot_bias")


@dataclasses.dataclass(frozen=True)
class FoldedUser:
  """A user who was not trained, folded in from a few ratings.

  rows: the user's embedding rows by table name ('user_factors' [f],
  'user_bias' [1]); seen: item indices the user rated; constants: the
  user's side features, as table rows.
  """
  rows: Mapping[str, np.ndarray]
  seen: np.ndarray
  constants: Mapping[str, np.ndarray] = dataclasses.field(
      default_factory=dict)  # side-feature rows ('user_cat', 'user_cont')

  def __repr__(self) -> str:
    return f"FoldedUser({len(self.seen)} ratings)"


def _ids(values: Sequence) -> np.ndarray:
  """Vocabulary classes from JSON: int64 when every value is an int."""
  if all(isinstance(v, int) for v in values):
    return np.asarray(values, dtype=np.int64)
  return np.asarray(values, dtype=object)


class TrainedModel:
  """Parameters, vocabularies and training pairs of one trained model."""

  def __init__(self, spec: dict, params, model_state, users: Vocab,
               items: Vocab, item_key: str, titles: np.ndarray | None,
               item_ids: Mapping[Any, Any], train: Ratings, valid: Ratings,
               info: dict, side_vocab: dict | None = None):
    self.spec = spec  # model, n_factors, y_range, layers, side
    self.side_vocab = side_vocab  # categories and scales of user features
    self.users, self.items, self.item_key = users, items, item_key
    self.titles = titles  # [n_items] aligned with items (index 0: '#na#')
    self.item_ids = dict(item_ids)  # raw item id -> vocabulary key
    self.train, self.valid, self.info = train, valid, info
    self.module = _module(spec, len(users), len(items))
    self.state = training.TrainState(
        step=jnp.zeros([], jnp.int32), params=params, model_state=model_state,
        opt_state=None, rng=jax.random.key(0), apply_fn=self.module.apply,
        tx=None)
    t_users, t_items = np.asarray(train.users), np.asarray(train.items)
    self.user_trained = np.bincount(t_users, minlength=len(users)) > 0
    self.item_counts = np.bincount(t_items, minlength=len(items))
    self._seen = pd.Series(t_items).groupby(t_users).agg(
        lambda s: np.unique(s.to_numpy())).to_dict()

  # Building, saving, loading ----------------------------------------------

  @classmethod
  def from_training(cls, replica, params, model_state, data: CollabData,
                    info: dict | None = None) -> "TrainedModel":
    """From a trained state and the data it was trained on.

    replica: anything with model, n_factors, y_range and layers attributes
    (a `sweep.Replica`).
    """
    params = {k: ({"embedding": v["embedding"][:len(data.users if
                                                      k.startswith("user")
                                                      else data.items)]}
                  if k.startswith(("user_", "item_")) and "embedding" in v
                  else v) for k, v in params.items()}  # drop --mesh padding
    spec = {"model": replica.model, "n_factors": replica.n_factors,
            "y_range": list(replica.y_range) if replica.y_range else None,
            "layers": list(replica.layers) if replica.layers else None,
            "param_dtype": getattr(replica, "param_dtype", "float32"),
            "compute_dtype": getattr(replica, "compute_dtype", "float32")}
    side_vocab = None
    if replica.model == "side_nn":
      spec["side"] = {**data.side.spec, "id_dropout": replica.id_dropout}
      side_vocab = {"categories": data.side.categories,
                    "scales": data.side.scales}
    table = data.table
    titles, item_ids = None, {}
    if "title" in table:
      if data.item_key == "title":
        titles = data.items.decode(np.arange(len(data.items)))
        item_ids = dict(zip(table["item"], table["title"]))
      else:
        by_id = dict(zip(table["item"], table["title"]))
        titles = np.array(["#na#"] + [by_id[i] for i in data.items.classes],
                          dtype=object)
    return cls(spec, params, model_state, data.users, data.items,
               data.item_key, titles, item_ids, data.train, data.valid,
               info or {}, side_vocab)

  def save(self, path: str) -> None:
    """Writes the model (orbax, atomic) to the directory `path`."""
    arrays = {"params": self.state.params,
              "model_state": self.state.model_state,
              "train": _triples(self.train), "valid": _triples(self.valid)}
    plain = lambda a: [v.item() if hasattr(v, "item") else v for v in a]
    meta = {
        "format": FORMAT, "spec": self.spec, "item_key": self.item_key,
        "users": plain(self.users.classes), "items": plain(self.items.classes),
        "titles": None if self.titles is None else plain(self.titles),
        "item_ids": [plain(self.item_ids), plain(self.item_ids.values())],
        "side_vocab": self.side_vocab, "info": self.info,
        "pairs": [self.train.size, self.valid.size],
        "versions": runinfo.versions(),
        "saved": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }
    checkpoint.save(path, arrays, meta)

  @classmethod
  def load(cls, path: str, device=None) -> "TrainedModel":
    """Reads a model saved by `save` (or a workdir holding model/)."""
    if os.path.isdir(os.path.join(path, "model")):
      path = os.path.join(path, "model")
    meta = checkpoint.read_meta(path)
    if meta.get("format") != FORMAT:
      raise UserError(f"{path} holds a checkpoint, but not a jaxcf model "
                      f"(format {meta.get('format')!r}, expected {FORMAT!r})")
    users = Vocab.from_classes(_ids(meta["users"]))
    items = Vocab.from_classes(_ids(meta["items"]))
    spec = meta["spec"]
    module = _module(spec, len(users), len(items))
    dummy = jnp.zeros((1,), jnp.int32)
    shapes = jax.eval_shape(module.init, jax.random.key(0), dummy, dummy)
    shapes = dict(shapes)
    params = shapes.pop("params")
    n_train, n_valid = meta.get("pairs") or _pair_counts(path)
    pairs = lambda n: {"users": jax.ShapeDtypeStruct((n,), jnp.int32),
                       "items": jax.ShapeDtypeStruct((n,), jnp.int32),
                       "ratings": jax.ShapeDtypeStruct((n,), jnp.float32)}
    like = {"params": params, "model_state": shapes,
            "train": pairs(n_train), "valid": pairs(n_valid)}
    arrays = checkpoint.restore(path, like, device)
    titles = None if meta["titles"] is None else np.asarray(meta["titles"],
                                                            dtype=object)
    item_ids = dict(zip(*meta["item_ids"]))
    return cls(spec, arrays["params"], arrays["model_state"], users, items,
               meta["item_key"], titles, item_ids,
               Ratings(**arrays["train"]), Ratings(**arrays["valid"]),
               meta["info"], meta.get("side_vocab"))

  def export_npz(self, path: str) -> None:
    """Writes plain arrays that numpy alone reads (np.load, no pickle).

    Keys: 'params/<module>/<name>' and 'model_state/...' arrays (bfloat16
      weights widened to float32, which numpy has),
    'users', 'items' (ids or titles), 'titles' when known, and 'meta' (a
    JSON string: the model spec and item key).
    """
    flat = {}
    for prefix, tree in (("params", self.state.params),
                         ("model_state", self.state.model_state)):
      for keypath, leaf in jax.tree_util.tree_leaves_with_path(tree):
        name = "/".join(str(getattr(k, "key", k)) for k in keypath)
        if leaf.dtype == jnp.bfloat16:
          leaf = leaf.astype(jnp.float32)
        flat[f"{prefix}/{name}"] = np.asarray(leaf)
    text = lambda a: np.asarray([str(v) for v in a]) if a.dtype == object \
        else np.asarray(a)
    flat["users"] = text(self.users.classes)
    flat["items"] = text(self.items.classes)
    if self.titles is not None:
      flat["titles"] = text(self.titles[1:])
    flat["meta"] = np.asarray(json.dumps({"spec": self.spec,
                                          "item_key": self.item_key}))
    np.savez(path, **flat)

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
    out.update(columns)
    return pd.DataFrame(out)

  # Predictions and recommendations -----------------------------------------

  def predict(self, users: Iterable, items: Iterable,
              batch_size: int = 8192) -> np.ndarray:
    """Predicted ratings for pairs of user ids and items, any number."""
    users, items = list(users), list(items)
    if len(users) != len(items):
      raise UserError(f"predict needs as many users ({len(users)}) as items "
                      f"({len(items)})")
    u = np.array([self.user_index(x) for x in users], np.int32)
    i = np.array([self.item_index(x) for x in items], np.int32)
    return np.asarray(_predict(self.state, jnp.asarray(u), jnp.asarray(i),
                               batch_size))

  def predict_for(self, user, items: Iterable, times=None,
                  batch_size: int = 8192) -> np.ndarray:
    """Predicted ratings of one user (an id or a FoldedUser) for items.

    times: rating times in [0, 1] (see `features.scaled_times`) for models
    that use them; None stands for the latest.
    """
    state, row, _ = self._user_state(user)
    i = np.array([self.item_index(x) for x in items], np.int32)
    u = np.full(len(i), row, np.int32)
    t = None if times is None else jnp.asarray(times, jnp.float32)
    return np.asarray(_predict(state, jnp.asarray(u), jnp.asarray(i),
                               batch_size, t))

  def _user_state(self, user) -> tuple[training.TrainState, int, np.ndarray]:
    """(state, row, seen items) for a user id or a FoldedUser.

    A folded user's vectors go into row 0, the '#na#' row, of a copy of the
    parameters, so that every model predicts for it unchanged.
    """
    if isinstance(user, FoldedUser):
      return self._folded_state(user.rows, user.constants), 0, user.seen
    index = self.user_index(user)
    return self.state, index, self._seen.get(index, np.zeros(0, int))

  def recommend(self, user, k: int = 10, exclude_seen: bool = True
                ) -> pd.DataFrame:
    """The k items with the highest predicted rating for one user (an id or
    a FoldedUser): a table of item (and title), score."""
    state, row, seen = self._user_state(user)
    top = self._top_k(state, np.array([row]), [seen] if exclude_seen
                      else [np.zeros(0, int)], k)
    return self._item_frame(top[1][0], score=top[0][0])

  def recommend_many(self, users: Sequence, k: int = 10,
                     exclude_seen: bool = True) -> pd.DataFrame:
    """Top-k for many user ids in one jitted call (vmapped over users)."""
    rows = np.array([self.user_index(u) for u in users], np.int32)
    seen = [self._seen.get(r, np.zeros(0, int)) if exclude_seen
            else np.zeros(0, int) for r in rows]
    scores, items = self._top_k(self.state, rows, seen, k)
    frame = self._item_frame(items.reshape(-1), score=scores.reshape(-1))
    frame.insert(0, "rank", np.tile(np.arange(1, items.shape[1] + 1),
                                    len(rows)))
    frame.insert(0, "user", np.repeat(np.asarray(users, dtype=object),
                                      items.shape[1]))
    return frame

  def _top_k(self, state, rows: np.ndarray, seen: list[np.ndarray], k: int):
    n_items = len(self.items)
    k = min(k, n_items - 1)
    excluded = np.zeros((len(rows), n_items), bool)
    excluded[:, 0] = True  # '#na#'
    excluded[:, self.item_counts == 0] = True  # never trained
    for r, s in enumerate(seen):
      excluded[r, s] = True
    scores, items = _top_k_items(state, jnp.asarray(rows, jnp.int32),
                                 jnp.asarray(excluded), k)
    return np.asarray(scores), np.asarray(items)

  # Interpretation ------------------------------------------------------------

  def factors(self, kind: str = "item") -> pd.DataFrame:
    """The factor (embedding) matrix of items or users, a row per id."""
    table = self._table(kind, "factors")
    vocab = self.items if kind == "item" else self.users
    return pd.DataFrame(table[1:], index=vocab.classes)

  def biases(self, kind: str = "item") -> pd.DataFrame:
    """Learnt biases of trained items (or users), from the lowest up."""
    bias = self._table(kind, "bias")[:, 0]
    counts = (self.item_counts if kind == "item" else
              np.bincount(np.asarray(self.train.users),
                          minlength=len(self.users)))
    keep = np.nonzero(counts > 0)[0]
    keep = keep[keep > 0]
    if kind == "item":
      frame = self._item_frame(keep, bias=bias[keep], n_ratings=counts[keep])
    else:
      frame = pd.DataFrame({"user": self.users.decode(keep),
                            "bias": bias[keep], "n_ratings": counts[keep]})
    return frame.sort_values("bias", kind="stable").reset_index(drop=True)

  def similar_items(self, item, k: int = 10, min_ratings: int = 10
                    ) -> pd.DataFrame:
    """Items whose factors point the same way (cosine), among items rated at
    least `min_ratings` times in training: cosine alone ranks barely-rated
    items, whose factors hardly moved from their random start, first."""
    index = self.item_index(item)
    table = self._table("item", "factors")
    unit = table / np.maximum(np.linalg.norm(table, axis=1, keepdims=True),
                              1e-12)
    cosine = unit @ unit[index]
    eligible = self.item_counts >= max(1, min_ratings)
    eligible[[0, index]] = False
    order = np.argsort(-np.where(eligible, cosine, -np.inf), kind="stable")
    top = order[:min(k, int(eligible.sum()))]
    return self._item_frame(top, similarity=cosine[top],
                            n_ratings=self.item_counts[top])

  def pca(self, n: int = 3, top: int = 1000) -> pd.DataFrame:
    """The book's PCA of item factors over the `top` most-rated items: the
    centred factors projected on their first n principal directions."""
    table = self._table("item", "factors")
    order = np.argsort(-self.item_counts, kind="stable")
    chosen = order[:min(top, int((self.item_counts > 0).sum()))]
    x = table[chosen] - table[chosen].mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    proj = x @ vt[:n].T
    return self._item_frame(chosen, n_ratings=self.item_counts[chosen],
                            **{f"pc{j + 1}": proj[:, j] for j in range(n)})

  def _table(self, kind: str, what: str) -> np.ndarray:
    if kind not in ("item", "user"):
      raise UserError(f"kind must be 'item' or 'user', not {kind!r}")
    name = f"{kind}_{what}"
    if name not in self.state.params:
      raise UserError(f"model {self.spec['model']} has no {kind} {what}")
    # float32 whatever the stored dtype: numpy and pandas know no bfloat16.
    return np.asarray(self.state.params[name]["embedding"], np.float32)

  # Ranking quality -----------------------------------------------------------

  def ranking_metrics(self, k: int = 10, threshold: float = 4.0
                      ) -> dict[str, float]:
    """precision@k, recall@k and NDCG@k on the validation split."""
    return ranking.evaluate_ranking(self.state, self.train, self.valid,
                                    len(self.items), k=k,
                                    threshold=threshold)

  # New users -------------------------------------------------------------------

  def _folded_state(self, rows, constants) -> training.TrainState:
    """The state with a folded user's rows (and features) in row 0."""
    model_state = self.state.model_state
    if constants:
      model_state = {**model_state, "constants": _with_rows(
          model_state["constants"], constants, key=None)}
    return self.state.replace(params=_with_rows(self.state.params, rows),
                              model_state=model_state)

  def fold_in(self, ratings, l2: float = 5.0, steps: int = 200,
              features: Mapping[str, Any] | None = None) -> FoldedUser:
    """A new user's factors from a few ratings, the item side frozen.

    Args:
      ratings: {item: rating}, or (item, rating) pairs; items by title or id.
        None or empty gives the average trained user (the book's
        "representative user"): recommendations then follow the item biases.
        A side_nn model trained with id_dropout starts instead from its
        unknown-user row and the user's `features`.
      l2: ridge strength pulling the user towards that starting point.
      steps: gradient steps for the NN models.
      features: side_nn only: the user's features, e.g. {'age': 31,
        'gender': 'F', 'occupation': 'writer'}.

    Dot models are solved in closed form (ridge regression on the logit
    scale of sigmoid_range); NN models take `steps` Adam steps on the
    squared error.
    """
    pairs = list(ratings.items()) if isinstance(ratings, Mapping) else list(
        ratings or [])
    items = np.array([self.item_index(i) for i, _ in pairs], np.int32)
    values = np.array([float(r) for _, r in pairs], np.float64)
    params = self.state.params
    constants = {}
    vocab = self.side_vocab or {}
    if vocab.get("categories") or vocab.get("scales"):
      encoder = side_features.SideFeatures({}, {}, None, None, **vocab)
      constants = encoder.encode_user(features or {})
    elif features:
      raise UserError("this model takes no user features")
    if self.spec.get("side", {}).get("id_dropout"):
      rows = {"user_factors": np.asarray(params["user_factors"]["embedding"])[0]}
    else:
      trained = self.user_trained
      rows = {name: np.asarray(params[name]["embedding"])[trained].mean(0)
              for name in ("user_factors", "user_bias") if name in params}
    if len(pairs):
      if self.spec["model"] in DOT_MODELS:
        rows = self._ridge(items, values, rows, l2)
      else:
        rows = self._descend(items, values, rows, constants, l2, steps)
    return FoldedUser(rows={k: np.asarray(v, np.float32)
                            for k, v in rows.items()},
                      seen=np.unique(items), constants=constants)

  def _targets(self, values: np.ndarray) -> np.ndarray:
    y_range = self.spec["y_range"]
    if not y_range:
      return values
    low, high = y_range
    p = np.clip((values - low) / (high - low), 1e-3, 1 - 1e-3)
    return np.log(p / (1 - p))  # the score sigmoid_range maps to the rating

  def _ridge(self, items, values, prior, l2):
    params = self.state.params
    q = np.asarray(params["item_factors"]["embedding"], np.float64)[items]
    target = self._targets(values)
    has_bias = "user_bias" in prior
    if has_bias:
      target = target - np.asarray(params["item_bias"]["embedding"],
                                   np.float64)[items, 0]
      q = np.concatenate([q, np.ones((len(items), 1))], axis=1)
      mean = np.concatenate([prior["user_factors"], prior["user_bias"]])
    else:
      mean = prior["user_factors"].astype(np.float64)
    a = q.T @ q + l2 * np.eye(q.shape[1])
    w = np.linalg.solve(a, q.T @ target + l2 * mean)
    if has_bias:
      return {"user_factors": w[:-1], "user_bias": w[-1:]}
    return {"user_factors": w}

  def _descend(self, items, values, prior, constants, l2, steps):
    start = {k: jnp.asarray(v, jnp.float32) for k, v in prior.items()}
    state = self._folded_state(start, constants)
    rows = _fit_rows(state, start, jnp.asarray(items),
                     jnp.asarray(values, jnp.float32), l2, steps)
    return {k: np.asarray(v) for k, v in rows.items()}


def load(path: str, device=None) -> TrainedModel:
  """A model saved by train.py --workdir (pass the workdir or its model/)."""
  return TrainedModel.load(path, device)


def _triples(r: Ratings) -> dict:
  return {"users": r.users, "items": r.items, "ratings": r.ratings}


def _coerce(value, classes: np.ndarray):
  """'196' -> 196 for integer vocabularies (ids typed at a prompt)."""
  if classes.dtype.kind == "i" and isinstance(value, str) and \
      value.strip().lstrip("+-").isdigit():
    return int(value)
  return value


def _pair_counts(path: str) -> tuple[int, int]:
  """Lengths of the saved train/valid arrays, from orbax's metadata (for
  models saved before the metadata recorded them)."""
  with open(os.path.join(path, "arrays", "_METADATA")) as f:
    tree = json.load(f)["tree_metadata"]
  def length(split):
    for key, value in tree.items():
      if split in key and "ratings" in key:
        return int(value["value_metadata"]["write_shape"][0])
    raise UserError(f"{path}: the checkpoint holds no {split} ratings")
  return length("train"), length("valid")


def _with_rows(tree, rows: Mapping[str, Any], key: str | None = "embedding"):
  """tree with row 0 of tree[name][key] (or tree[name]) set to rows[name]."""
  tree = dict(tree)
  for name, value in rows.items():
    table = tree[name] if key is None else tree[name][key]
    table = table.at[0].set(jnp.asarray(value, table.dtype))
    tree[name] = table if key is None else {key: table}
  return tree


def _module(spec: dict, n_users: int, n_items: int):
  """The Flax module a saved spec describes."""
  side = dict(spec.get("side") or {})
  for name in ("user_cats", "item_cats"):
    if name in side:
      side[name] = tuple(side[name])
  return models.create(
      spec["model"], n_users, n_items, n_factors=spec["n_factors"],
      y_range=tuple(spec["y_range"]) if spec["y_range"] else None,
      layers=tuple(spec["layers"]) if spec["layers"] else None,
      param_dtype=spec.get("param_dtype", "float32"),
      compute_dtype=spec.get("compute_dtype", "float32"), **side)


@functools.partial(jax.jit, static_argnames="k")
def _top_k_items(state, rows, excluded, k):
  """(scores, items) [len(rows), k]: one top_k per user, vmapped."""
  n_items = excluded.shape[1]
  every = jnp.arange(n_items, dtype=jnp.int32)

  def one(row, mask):
    scores = training.predict(state, jnp.full((n_items,), row), every)
    return jax.lax.top_k(jnp.where(mask, -jnp.inf, scores), k)

  return jax.vmap(one)(rows, excluded)


_predict = jax.jit(training.predict_all, static_argnums=3)


@functools.partial(jax.jit, static_argnames="steps")
def _fit_rows(state, start, items, values, l2, steps):
  """Adam on a folded user's rows (in row 0), everything else frozen."""
  tx = optax.adam(1e-2)

  def loss(rows):
    s = state.replace(params=_with_rows(state.params, rows))
    preds = training.predict(s, jnp.zeros_like(items), items)
    prior = sum(jnp.sum((rows[k] - start[k])**2) for k in rows)
    return jnp.mean((preds - values)**2) + l2 * prior / items.shape[0]

  def step(carry, _):
    rows, opt = carry
    grads = jax.grad(loss)(rows)
    updates, opt = tx.update(grads, opt)
    return (optax.apply_updates(rows, updates), opt), None

  (rows, _), _ = jax.lax.scan(step, (start, tx.init(start)), None,
                              length=steps)
  return rows
