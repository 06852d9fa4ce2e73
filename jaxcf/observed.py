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

Both build the Gram matrices the same way (`RowLists`): each row's
columns, padded, in buckets of rows with similar counts, so a row's
Gram matrix is one small matmul of its gathered factors, X_r^T X_r. That
costs about 1.2 N k^2 multiply-adds; the dense product mask @ (V x V)
costs n_users n_items k^2 / 2 (ML-100k u1 at 50 factors: 2.5x slower).

Per-rating values travel as a `values` array: [n_users, n_items] (0 where
unrated) for Dense, [N] in user order for Sparse. `side` is 0 (users) or
1 (items).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

# A bucket's gathered factors stay under this many rows x columns (x k x 4
# bytes: 32 MB at 16 factors), split into several buckets otherwise.
BUCKET_CELLS = 1 << 19


@flax.struct.dataclass
class RowLists:
  """Each row's columns on the other side, for Gram matrices: rows with a
  similar count of ratings share a bucket, their columns padded with m
  (the index of a zero row appended to the other side's factors).

  rows: per bucket int32 [B] (rows without ratings are in none: their
  Gram matrix is 0); cols: per bucket int32 [B, L], L a multiple of 8
  (growing by ~1.4x from bucket to bucket: at most ~40% padding).
  """
  rows: tuple
  cols: tuple
  n: int = flax.struct.field(pytree_node=False)

  def gram(self, other):
    """[n, k, k]: sum over each row's columns c of other[c] other[c]^T."""
    other = jnp.asarray(other)
    k = other.shape[-1]
    padded = jnp.concatenate([other, jnp.zeros((1, k), other.dtype)])
    out = jnp.zeros((self.n, k, k), other.dtype)
    for rows, cols in zip(self.rows, self.cols):
      x = padded[cols]  # [B, L, k]
      out = out.at[rows].set(jnp.einsum("blk,blj->bkj", x, x),
                             unique_indices=True)
    return out


def row_lists(rows: np.ndarray, cols: np.ndarray, n: int, m: int
              ) -> RowLists:
  """The RowLists of pairs (rows [N] in [0, n), cols [N] in [0, m))."""
  rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int32)
  order = np.argsort(rows, kind="stable")
  cols = cols[order]
  counts = np.bincount(rows, minlength=n)
  starts = np.concatenate([[0], np.cumsum(counts)])
  out_rows, out_cols = [], []
  low, length = 0, 8
  while low < counts.max(initial=0):
    chosen = np.nonzero((counts > low) & (counts <= length))[0]
    step = max(1, BUCKET_CELLS // length)
    for lo in range(0, len(chosen), step):
      part = chosen[lo:lo + step]
      at = starts[part][:, None] + np.arange(length)[None, :]
      real = np.arange(length)[None, :] < counts[part][:, None]
      out_rows.append(jnp.asarray(part, jnp.int32))
      out_cols.append(jnp.asarray(
          np.where(real, cols[np.minimum(at, len(cols) - 1)], m), jnp.int32))
    low, length = length, -(-int(length * 1.4) // 8) * 8
  return RowLists(tuple(out_rows), tuple(out_cols), n)


@flax.struct.dataclass
class Dense:
  """ratings, mask: float32 [n_users, n_items] (0 where unrated); lists:
  the `RowLists` of users and of items, for the Gram matrices."""
  ratings: jax.Array
  mask: jax.Array
  lists: tuple

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
    return self.lists[side].gram(other)

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
  lists: tuple          # `RowLists` of users and of items
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
    return self.lists[side].gram(other)

  def total(self, values):
    return jnp.sum(values)

  def size(self):
    return jnp.asarray(self.ratings.shape[0], jnp.float32)


def dense(users, items, ratings, n_users: int, n_items: int) -> Dense:
  """The Dense layout of (user, item, rating) lists."""
  r = jnp.zeros((n_users, n_items), jnp.float32).at[users, items].set(ratings)
  mask = jnp.zeros((n_users, n_items), jnp.float32).at[users, items].set(1.0)
  return Dense(r, mask, _lists(users, items, n_users, n_items))


def _lists(users, items, n_users: int, n_items: int) -> tuple:
  return (row_lists(users, items, n_users, n_items),
          row_lists(items, users, n_items, n_users))


def sparse(users, items, ratings, n_users: int, n_items: int) -> Sparse:
  """The Sparse layout of (user, item, rating) lists (numpy arrays)."""
  order = np.argsort(users, kind="stable")
  users, items = users[order].astype(np.int32), items[order].astype(np.int32)
  by_item = np.argsort(items, kind="stable").astype(np.int32)
  return Sparse(jnp.asarray(users), jnp.asarray(items),
                jnp.asarray(ratings[order], jnp.float32), jnp.asarray(by_item),
                _lists(users, items, n_users, n_items), n_users, n_items)
