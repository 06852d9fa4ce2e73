"""The observed ratings as the Gibbs sampler (`jaxcf.gibbs`) reads them.

A sweep needs, for every row of one side (users, or items), sums over the
ratings of that row: counts, sums of per-rating values, sums of values
times the other side's factors, and Gram matrices sum_i V_i V_i^T. Two
layouts give the same sums:

  Dense   the ratings and a 0/1 mask as [n_users, n_items] matrices: every
          sum is a matmul or a row reduction. Fast while the matrix is
          small and not too sparse (ML-100k: 6% observed, 13 MB).
  Sparse  the N ratings as lists, kept twice (sorted by user and by item):
          every sum is a segment sum over a row's contiguous run, the Gram
          matrices in chunks of ratings, so memory grows with N, not with
          n_users x n_items (ml-10m and larger).

Per-rating values travel as a `values` array: [n_users, n_items] (0 where
unrated) for Dense, [N] in user order for Sparse. `side` is 0 (users) or
1 (items). Gram matrices are built from the outer products' upper
triangles (k(k+1)/2 numbers, not k^2) and mirrored.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

GRAM_CHUNK_BYTES = 64 << 20  # of outer products per chunk (Sparse)


def _triangle(k: int):
  rows, cols = np.triu_indices(k)
  where = np.zeros((k, k), np.int32)
  where[rows, cols] = where[cols, rows] = np.arange(len(rows))
  return rows, cols, where


@flax.struct.dataclass
class Dense:
  """ratings, mask: float32 [n_users, n_items] (0 where unrated)."""
  ratings: jax.Array
  mask: jax.Array

  def residual(self, mean, user_bias, item_bias):
    """r - m - b_u - c_i for every rating (a bias None: left out)."""
    x = self.ratings - mean
    if user_bias is not None:
      x = x - user_bias[:, None]
    if item_bias is not None:
      x = x - item_bias[None, :]
    return self.mask * x

  def minus_dots(self, values, users, items):
    """values - U_u . V_i for every rating."""
    return values - self.mask * (users @ items.T)

  def row_sums(self, values, side: int):
    return jnp.sum(values, 1 - side)

  def counts(self, side: int):
    return jnp.sum(self.mask, 1 - side)

  def weighted(self, values, other, side: int):
    """[n, k]: sum over each row's ratings of value times the other side's
    factors."""
    return (values if side == 0 else values.T) @ other

  def gram(self, other, side: int):
    """[n, k, k]: sum over each row's ratings of V V^T (V: other side)."""
    rows, cols, where = _triangle(other.shape[-1])
    mask = self.mask if side == 0 else self.mask.T
    return (mask @ (other[:, rows] * other[:, cols]))[:, where]

  def total(self, values):
    return jnp.sum(values)

  def size(self):
    return jnp.sum(self.mask)


@flax.struct.dataclass
class Sparse:
  """The N training ratings, by user (`users`, `items`, `ratings` sorted by
  user) and `by_item`, the permutation that sorts them by item."""
  users: jax.Array      # int32 [N], ascending
  items: jax.Array      # int32 [N]
  ratings: jax.Array    # float32 [N]
  by_item: jax.Array    # int32 [N]
  n_users: int = flax.struct.field(pytree_node=False)
  n_items: int = flax.struct.field(pytree_node=False)

  def _rows(self, side: int):
    """(row and other side's column of each rating, sorted by row; the
    permutation from user order to that order, or None; the row count)."""
    if side == 0:
      return self.users, self.items, None, self.n_users
    return (self.items[self.by_item], self.users[self.by_item], self.by_item,
            self.n_items)

  def residual(self, mean, user_bias, item_bias):
    x = self.ratings - mean
    if user_bias is not None:
      x = x - user_bias[self.users]
    if item_bias is not None:
      x = x - item_bias[self.items]
    return x

  def minus_dots(self, values, users, items):
    return values - jnp.sum(users[self.users] * items[self.items], -1)

  def row_sums(self, values, side: int):
    rows, _, perm, n = self._rows(side)
    values = values if perm is None else values[perm]
    return jax.ops.segment_sum(values, rows, n, indices_are_sorted=True)

  def counts(self, side: int):
    return self.row_sums(jnp.ones_like(self.ratings), side)

  def weighted(self, values, other, side: int):
    rows, cols, perm, n = self._rows(side)
    values = values if perm is None else values[perm]
    return jax.ops.segment_sum(values[:, None] * jnp.asarray(other)[cols],
                               rows, n, indices_are_sorted=True)

  def gram(self, other, side: int):
    other = jnp.asarray(other)
    rows_of, cols, _, n = self._rows(side)
    k = other.shape[-1]
    rows, cols_t, where = _triangle(k)
    size = len(rows)
    total = rows_of.shape[0]
    chunk = max(1, min(total, GRAM_CHUNK_BYTES // (4 * size)))
    pad = -total % chunk
    # Padding rates row n (dropped at the end) with the other side's row 0.
    seg = jnp.concatenate([rows_of, jnp.full(pad, n, rows_of.dtype)])
    col = jnp.concatenate([cols, jnp.zeros(pad, cols.dtype)])
    seg, col = seg.reshape(-1, chunk), col.reshape(-1, chunk)

    def add(acc, block):
      s, c = block
      v = other[c]
      return acc.at[s].add(v[:, rows] * v[:, cols_t],
                           indices_are_sorted=True), None

    acc, _ = jax.lax.scan(add, jnp.zeros((n + 1, size), other.dtype),
                          (seg, col))
    return acc[:n][:, where]

  def total(self, values):
    return jnp.sum(values)

  def size(self):
    return jnp.asarray(self.ratings.shape[0], jnp.float32)


def dense(users, items, ratings, n_users: int, n_items: int) -> Dense:
  """The Dense layout of (user, item, rating) lists."""
  r = jnp.zeros((n_users, n_items), jnp.float32).at[users, items].set(ratings)
  mask = jnp.zeros((n_users, n_items), jnp.float32).at[users, items].set(1.0)
  return Dense(r, mask)


def sparse(users, items, ratings, n_users: int, n_items: int) -> Sparse:
  """The Sparse layout of (user, item, rating) lists (numpy arrays)."""
  order = np.argsort(users, kind="stable")
  users, items = users[order].astype(np.int32), items[order].astype(np.int32)
  by_item = np.argsort(items, kind="stable").astype(np.int32)
  return Sparse(jnp.asarray(users), jnp.asarray(items),
                jnp.asarray(ratings[order], jnp.float32), jnp.asarray(by_item),
                n_users, n_items)
