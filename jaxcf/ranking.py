"""Top-k ranking quality: precision@k, recall@k and NDCG@k.

For each user, every item the user did not rate in training is a candidate;
the items the user rated >= `threshold` in validation are the relevant ones.
The model ranks the candidates by predicted rating; users with no relevant
item are left out of the averages.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxcf import steps
from jaxcf.data import Ratings


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
  masked = jnp.where(seen, -jnp.inf, scores)
  _, top = jax.lax.top_k(masked, k)  # [U, k]
  hits = jnp.take_along_axis(relevant, top, axis=1).astype(jnp.float32)
  n_relevant = relevant.sum(axis=1).astype(jnp.float32)
  has = n_relevant > 0
  discount = 1.0 / jnp.log2(jnp.arange(2, k + 2, dtype=jnp.float32))
  dcg = (hits * discount).sum(axis=1)
  ideal = jnp.cumsum(discount)[jnp.clip(n_relevant.astype(jnp.int32), 1, k)
                               - 1]
  users = has.sum()
  mean = lambda x: jnp.where(has, x, 0.0).sum() / jnp.maximum(users, 1)
  return {"precision": mean(hits.sum(axis=1) / k),
          "recall": mean(hits.sum(axis=1) / jnp.maximum(n_relevant, 1)),
          "ndcg": mean(dcg / ideal), "users": users}


def interaction_mask(users: np.ndarray, items: np.ndarray, n_users: int,
                     n_items: int) -> np.ndarray:
  """bool [n_users, n_items], True where a (user, item) pair occurs."""
  mask = np.zeros((n_users, n_items), bool)
  mask[np.asarray(users), np.asarray(items)] = True
  return mask


def evaluate_ranking(scores, train: Ratings, valid: Ratings, n_items: int,
                     k: int = 10, threshold: float = 4.0,
                     max_users: int = 20_000, seed: int = 0
                     ) -> dict[str, float]:
  """precision@k, recall@k and NDCG@k of a trained model on `valid`.

  scores: user rows int [U] -> predicted ratings [U, n_items] (e.g.
  `TrainedModel.scores`), or a `steps.TrainState` to score every pair with.
  Scores every item for up to `max_users` validation users (a seeded sample
  when there are more), so memory is max_users x n_items floats.
  """
  if isinstance(scores, steps.TrainState):
    scores = functools.partial(score_matrix, scores, n_items=n_items)
  train = [np.asarray(x) for x in train]
  valid = [np.asarray(x) for x in valid]
  users = np.unique(valid[0][valid[2] >= threshold])
  if len(users) > max_users:
    users = np.sort(np.random.default_rng(seed).choice(users, max_users,
                                                       replace=False))
  n_users = int(max(train[0].max(initial=0), valid[0].max(initial=0))) + 1
  row = np.full(n_users, -1)
  row[users] = np.arange(len(users))
  keep = row[train[0]] >= 0
  seen = interaction_mask(row[train[0][keep]], train[1][keep], len(users),
                          n_items)
  seen[:, 0] = True  # never recommend '#na#'
  good = (valid[2] >= threshold) & (row[valid[0]] >= 0)
  relevant = interaction_mask(row[valid[0][good]], valid[1][good],
                              len(users), n_items) & ~seen
  out = topk_metrics(scores(users), jnp.asarray(seen), jnp.asarray(relevant),
                     k=k)
  return {f"{name}@{k}" if name != "users" else "ranked_users": float(v)
          for name, v in out.items()}


def score_matrix(state: steps.TrainState, users: np.ndarray,
                 n_items: int, batch_size: int = 1 << 16) -> jax.Array:
  """Predicted ratings [len(users), n_items] for every item."""
  u = jnp.repeat(jnp.asarray(users, jnp.int32), n_items)
  i = jnp.tile(jnp.arange(n_items, dtype=jnp.int32), len(users))
  preds = jax.jit(steps.predict_all, static_argnums=3)(state, u, i,
                                                          batch_size)
  return preds.reshape(len(users), n_items)
