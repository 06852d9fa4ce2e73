"""Synthetic ratings of any size, generated on the device in chunks.

A low-rank ground truth — user and item factors of rank `rank`, user and
item biases — plus Gaussian noise, clipped to [1, 5]. Items are drawn with a
popularity skew (item index ~ n_items * u^2), users uniformly. Nothing passes
through pandas or Python objects per row, so 100M ratings take seconds and
about 1.2 GB on the device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from jaxcf.data import CollabData, Ratings, Vocab
from jaxcf.errors import UserError


def _chunk(key, truth, size: int, n_users: int, n_items: int, noise: float):
  k_user, k_item, k_noise = jax.random.split(key, 3)
  users = jax.random.randint(k_user, (size,), 1, n_users + 1, jnp.int32)
  u = jax.random.uniform(k_item, (size,))
  items = 1 + jnp.minimum((n_items * u * u).astype(jnp.int32), n_items - 1)
  pu, qi, bu, bi = truth
  score = 3.5 + bu[users] + bi[items] + jnp.sum(pu[users] * qi[items], -1)
  ratings = jnp.clip(score + noise * jax.random.normal(k_noise, (size,)),
                     1.0, 5.0)
  return users, items, ratings


def generate(n_users: int, n_items: int, n_ratings: int, *, rank: int = 8,
             noise: float = 0.5, valid_pct: float = 0.01, seed: int = 0,
             chunk: int = 10_000_000, log=print) -> CollabData:
  """CollabData of synthetic ratings; ids 1..n are their own indices.

  The last `valid_pct` of the (independent, identically drawn) rows are the
  validation split. `table` is empty: there is no source file.
  """
  for name, value in (("n_users", n_users), ("n_items", n_items),
                      ("n_ratings", n_ratings)):
    if value < 1:
      raise UserError(f"--{name}={value} must be positive")
  if not 0 < valid_pct < 1:
    raise UserError(f"--valid_pct={valid_pct} must lie strictly between 0 "
                    "and 1")
  key = jax.random.key(seed)
  k_truth, k_rows = jax.random.split(key)
  ks = jax.random.split(k_truth, 4)
  scale = 1.0 / np.sqrt(rank)
  truth = (jax.random.normal(ks[0], (n_users + 1, rank)) * scale,
           jax.random.normal(ks[1], (n_items + 1, rank)) * scale,
           0.3 * jax.random.normal(ks[2], (n_users + 1,)),
           0.5 * jax.random.normal(ks[3], (n_items + 1,)))
  make = jax.jit(_chunk, static_argnums=(2, 3, 4, 5))
  parts = []
  for start in range(0, n_ratings, chunk):
    size = min(chunk, n_ratings - start)
    parts.append(make(jax.random.fold_in(k_rows, start // chunk), truth,
                      size, n_users, n_items, noise))
  users, items, ratings = (jnp.concatenate(p) if len(p) > 1 else p[0]
                           for p in zip(*parts))
  n_valid = max(1, int(valid_pct * n_ratings))
  cut = n_ratings - n_valid
  if cut < 1:
    raise UserError(f"--n_ratings={n_ratings} leaves no training rows")
  train = Ratings(users[:cut], items[:cut], ratings[:cut])
  valid = Ratings(users[cut:], items[cut:], ratings[cut:])
  if log:
    log(f"generated {n_ratings:,} synthetic ratings ({n_users:,} users x "
        f"{n_items:,} items, rank {rank}, noise {noise}): {cut:,} train / "
        f"{n_valid:,} valid rows")
  empty = np.zeros(0, np.int64)
  return CollabData(
      users=Vocab.from_classes(np.arange(1, n_users + 1)),
      items=Vocab.from_classes(np.arange(1, n_items + 1)),
      train=train, valid=valid,
      table=pd.DataFrame({"user": empty, "item": empty,
                          "rating": np.zeros(0, np.float32)}),
      train_rows=empty, valid_rows=empty, item_key="item")
