"""Top-k ranking quality: precision@k, recall@k and NDCG@k.

For each user, every item the user did not rate in training is a candidate;
the items the user rated >= `threshold` in validation are the relevant ones.
The model ranks the candidates by predicted rating; users with no relevant
item are left out of the averages.

`evaluate_ranking` runs in blocks of users sized to a memory budget: a
block's scores against every item [block, n_items] come from the model
(its family's cheap all-items path where it has one, e.g. one matmul for
the factor models), its seen items are masked on the device, `lax.top_k`
picks the k best and the metrics are summed on the device; only the
block's seen and relevant pairs cross from the host.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcf import models, steps
from jaxcf.data import Ratings
from jaxcf.progress import Bar


def _user_metrics(scores, seen, relevant, k):
  """precision, recall, ndcg [U] (0 for users with nothing relevant) and
  which users count [U]: the top k of scores [U, I] where not seen, the
  hits among them in relevant [U, I]."""
  _, top = jax.lax.top_k(jnp.where(seen, -jnp.inf, scores), k)  # [U, k]
  hits = jnp.take_along_axis(relevant, top, axis=1).astype(jnp.float32)
  n_relevant = relevant.sum(axis=1).astype(jnp.float32)
  discount = 1.0 / jnp.log2(jnp.arange(2, k + 2, dtype=jnp.float32))
  has = n_relevant > 0
  dcg = (hits * discount).sum(axis=1)
  ideal = jnp.cumsum(discount)[jnp.clip(n_relevant.astype(jnp.int32), 1, k)
                               - 1]
  keep = lambda x: jnp.where(has, x, 0.0)
  return {"precision": keep(hits.sum(axis=1) / k),
          "recall": keep(hits.sum(axis=1) / jnp.maximum(n_relevant, 1)),
          "ndcg": keep(dcg / ideal)}, has


@functools.partial(jax.jit, static_argnames="k")
def topk_metrics(scores: jax.Array, seen: jax.Array, relevant: jax.Array,
                 k: int = 10) -> dict[str, jax.Array]:
  """Ranking metrics of scores [users, items].

  Args:
    scores: predicted ratings [U, I].
    seen: bool [U, I], items excluded from ranking (rated in training, and
      the '#na#' column).
    relevant: bool [U, I], the relevant items (never `seen`).
    k: the cut-off.

  Returns:
    precision, recall, ndcg (means over users with a relevant item) and
    users (how many such users), as scalars.
  """
  per_user, has = _user_metrics(scores, seen, relevant, k)
  users = has.sum()
  out = {name: v.sum() / jnp.maximum(users, 1) for name, v in
         per_user.items()}
  return {**out, "users": users}


@dataclasses.dataclass(frozen=True)
class Scorer:
  """Scores of every item for a block of users, as a traceable function of
  the models' variables: `fn(variables, users int32 [U]) -> [U, n_items]`
  (fn static and hashable, so one compiled program serves every block and
  every call with the same models)."""
  fn: Callable
  variables: Any

  def __call__(self, users) -> jax.Array:
    return _scores(self.fn, self.variables, jnp.asarray(users, jnp.int32))


@functools.partial(jax.jit, static_argnums=0)
def _scores(fn, variables, users):
  return fn(variables, users)


@dataclasses.dataclass(frozen=True)
class MeanScores:
  """The mean over models of their all-items scores: each model a (family
  scores function or None, module, n_items); None predicts every pair
  (`score_matrix`)."""
  models: tuple

  def __call__(self, variables: tuple, users: jax.Array) -> jax.Array:
    out = []
    for (fn, module, n_items), v in zip(self.models, variables):
      if fn is not None:  # tables padded for a mesh have extra rows
        out.append(fn(v, module, users)[:, :n_items])
      else:
        state = steps.TrainState(step=0, params=v["params"], model_state={
            k: x for k, x in v.items() if k != "params"}, opt_state=None,
                                 rng=None, model=module, tx=None)
        out.append(_pairwise(state, users, n_items))
    return out[0] if len(out) == 1 else jnp.mean(jnp.stack(out), axis=0)


def scorer(states, n_items: int) -> Scorer:
  """The Scorer of one state or the mean of several: each model's family's
  all-items scores where it has them (one matmul for the factor models),
  else a prediction for every (user, item) pair."""
  states = states if isinstance(states, (list, tuple)) else [states]
  models_ = tuple((models.family_of(s.model).scores, s.model, n_items)
                  for s in states)
  variables = tuple({"params": s.params, **s.model_state} for s in states)
  return Scorer(MeanScores(models_), variables)


@functools.partial(jax.jit, static_argnums=(0, 6))
def _block_sums(fn, variables, users, seen_rows, seen_items, relevant, k):
  """Sums over a block of users (int32 [B]) of precision, recall and ndcg,
  and how many users count. Pairs (row in the block, item) mark seen
  items (rows past the block: padding, dropped); relevant [B, R] lists
  each user's relevant items (-1: none)."""
  scores = fn(variables, users) if fn is not None else variables
  scores = scores.at[seen_rows, seen_items].set(-jnp.inf, mode="drop")
  scores = scores.at[:, 0].set(-jnp.inf)  # never '#na#'
  if scores.shape[1] < k:  # fewer items than k: pad with never-relevant ones
    scores = jnp.pad(scores, ((0, 0), (0, k - scores.shape[1])),
                     constant_values=-jnp.inf)
  _, top = jax.lax.top_k(scores, k)  # [B, k]
  # Relevant items that were seen (none, in data of unique pairs) drop out.
  ranked = (relevant >= 0) & jnp.isfinite(
      jnp.take_along_axis(scores, jnp.maximum(relevant, 0), axis=1))
  hit = ((relevant[:, :, None] == top[:, None, :])
         & ranked[:, :, None]).any(axis=1).astype(jnp.float32)  # [B, k]
  n_relevant = ranked.sum(axis=1).astype(jnp.float32)
  discount = 1.0 / jnp.log2(jnp.arange(2, k + 2, dtype=jnp.float32))
  has = n_relevant > 0
  ideal = jnp.cumsum(discount)[jnp.clip(n_relevant.astype(jnp.int32), 1, k)
                               - 1]
  keep = lambda x: jnp.where(has, x, 0.0).sum()
  return {"precision": keep(hit.sum(axis=1) / k),
          "recall": keep(hit.sum(axis=1) / jnp.maximum(n_relevant, 1)),
          "ndcg": keep((hit * discount).sum(axis=1) / ideal),
          "users": has.sum()}


def _pairs_by_user(users: np.ndarray, items: np.ndarray, row: np.ndarray,
                   n_rows: int):
  """(row of each pair's user among the ranked ones, item), sorted by row,
  and where each row's pairs start [n_rows + 1]; pairs of other users
  dropped, repeated pairs once."""
  r = row[users]
  keep = r >= 0
  # Sorted by row, each (row, item) once: items keyed by title can repeat.
  pairs = np.unique(np.stack([r[keep], items[keep]]).astype(np.int64),
                    axis=1)
  r, it = pairs[0], pairs[1]
  return r, it, np.searchsorted(r, np.arange(n_rows + 1))


def block_size(n_items: int, budget_bytes: int = 256 << 20) -> int:
  """Users per block: their scores ([block, n_items] float32, and a few
  temporaries of that size) within the budget."""
  return int(np.clip(budget_bytes // (12 * max(n_items, 1)), 16, 4096))


def evaluate_ranking(scores, train: Ratings, valid: Ratings, n_items: int,
                     k: int = 10, threshold: float = 4.0,
                     max_users: int = 20_000, seed: int = 0,
                     block: int | None = None, log: Callable | None = None
                     ) -> dict[str, float]:
  """precision@k, recall@k and NDCG@k of a trained model on `valid`.

  scores: a `Scorer` (one compiled program per block: scores, masking,
  top-k and sums), a `steps.TrainState` (its `scorer`), or any function
  users int32 [U] -> [U, n_items]. Ranks every item for up to `max_users`
  validation users with a relevant item (a seeded sample when there are
  more), `block` users at a time (default: `block_size`); `log`, when
  given, gets a progress bar if that takes more than a couple of seconds.
  """
  if isinstance(scores, steps.TrainState):
    scores = scorer(scores, n_items)
  train = [np.asarray(x) for x in train[:3]]
  valid = [np.asarray(x) for x in valid[:3]]
  users = np.unique(valid[0][valid[2] >= threshold])
  if len(users) > max_users:
    users = np.sort(np.random.default_rng(seed).choice(users, max_users,
                                                       replace=False))
  n_users = int(max(train[0].max(initial=0), valid[0].max(initial=0))) + 1
  row = np.full(n_users, -1)
  row[users] = np.arange(len(users))
  seen = _pairs_by_user(train[0], train[1], row, len(users))
  good = valid[2] >= threshold
  relevant = _pairs_by_user(valid[0][good], valid[1][good], row, len(users))
  block = min(block or block_size(n_items), max(len(users), 1))
  totals = {"precision": 0.0, "recall": 0.0, "ndcg": 0.0, "users": 0}
  start, bar = time.perf_counter(), None
  for lo in range(0, len(users), block):
    hi = min(lo + block, len(users))
    rows = np.zeros(block, np.int32)
    rows[:hi - lo] = users[lo:hi]  # a padded last block: one compilation
    pairs = _block_pairs(*seen, lo, hi, block)
    lists = _block_lists(*relevant, lo, hi, block)
    if isinstance(scores, Scorer):
      sums = _block_sums(scores.fn, scores.variables, rows, *pairs, lists,
                         k)
    else:
      sums = _block_sums(None, scores(rows), rows, *pairs, lists, k)
    for name, value in jax.device_get(sums).items():
      totals[name] += value
    if log and bar is None and time.perf_counter() - start > 2.0:
      bar = Bar("ranking", len(users))
    if bar:
      bar.update(hi, f"{hi:,} of {len(users):,} users")
  if bar:
    bar.close(f"{time.perf_counter() - start:.1f}s")
  count = max(int(totals["users"]), 1)
  return {**{f"{name}@{k}": float(totals[name] / count)
             for name in ("precision", "recall", "ndcg")},
          "ranked_users": float(totals["users"])}


def _pow2(n: int, least: int = 16) -> int:
  return max(least, 1 << int(np.ceil(np.log2(max(n, 1)))))


def _block_pairs(rows, items, starts, lo, hi, block):
  """The pairs of block rows [lo, hi), rows made local, padded to a power
  of two in length (so few distinct shapes compile) with rows past the
  block."""
  a, b = starts[lo], starts[hi]
  size = _pow2(b - a)
  local = np.full(size, block, np.int32)  # past the block: dropped
  chosen = np.zeros(size, np.int32)
  local[:b - a] = rows[a:b] - lo
  chosen[:b - a] = items[a:b]
  return local, chosen


def _block_lists(rows, items, starts, lo, hi, block):
  """int32 [block, R]: each block row's items, -1 padded (R a power of
  two)."""
  a, b = starts[lo], starts[hi]
  counts = np.diff(starts[lo:hi + 1])
  out = np.full((block, _pow2(counts.max(initial=1), 4)), -1, np.int32)
  local = rows[a:b] - lo
  position = np.arange(b - a) - (starts[lo:hi][local] - a)
  out[local, position] = items[a:b]
  return out


def _pairwise(state: steps.TrainState, users, n_items: int,
              batch_size: int = 1 << 16) -> jax.Array:
  """Traceable: predictions [len(users), n_items] of every pair."""
  u = jnp.repeat(users, n_items)
  i = jnp.tile(jnp.arange(n_items, dtype=jnp.int32), users.shape[0])
  return steps.predict_all(state, u, i, batch_size).reshape(users.shape[0],
                                                           n_items)


def score_matrix(state: steps.TrainState, users: np.ndarray,
                 n_items: int, batch_size: int = 1 << 16) -> jax.Array:
  """Predicted ratings [len(users), n_items] for every item, by predicting
  each (user, item) pair."""
  return jax.jit(_pairwise, static_argnums=(2, 3))(
      state, jnp.asarray(users, jnp.int32), n_items, batch_size)
