"""Feature-regressed prior means for the Gibbs sampler (`jaxcf.gibbs`),
as in Macau (Simm et al. 2015, "Macau: scalable Bayesian multi-relational
factorization with side information using MCMC"):

  U_u ~ N(mu + beta^T x_u, Lam^-1),   beta ~ MN(0, I / lam_beta, Lam^-1)

with x_u [d] a row's features and beta [d, k] the features' factors. With
x_u the user's rated items, each weighted 1/sqrt(n_u) (`implicit_features`),
this is Bayesian SVD++ (Koren 2008): U_u = P_u + |N(u)|^-1/2 sum_j Y_j with
P_u ~ N(mu, Lam^-1) and Y = beta, only reparametrised; the items' side with
the users who rated each item is the "flipped" variant (Rendle, Zhang &
Koren 2019). Features come from the training ratings only. With
`--side_prior` the MovieLens side features (`side_columns`: gender,
occupation, age; genres, year) are further columns of x.

The conditionals, for the n rows R [n, k] and features X [n, d]:

  beta | R, mu, Lam ~ MN(A^-1 X^T (R - mu), A^-1, Lam^-1),
                      A = X^T X + lam_beta I
  lam_beta | beta   ~ Gamma(1 + d k / 2, 1 + tr(beta Lam beta^T) / 2)
  (mu, Lam) | R, beta: the Normal-Wishart of `gibbs.normal_wishart` on the
                      rows R - X beta, its scale matrix plus lam_beta
                      beta^T beta and its degrees of freedom plus d.

A is d x d and changes with lam_beta, so A^-1 and its square root come from
the thin SVD X = P diag(s) Q^T, Q [d, r], computed once:

  A^-1 v    = Q diag(1 / (s^2 + lam)) Q^T v + (v - Q Q^T v) / lam
  A^-1/2 v  = Q diag((s^2 + lam)^-1/2) Q^T v + (v - Q Q^T v) / sqrt(lam)

about 4 d r k multiply-adds per draw (ML-100k users: 1682 x 943 x k).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxcf.errors import UserError

# The features are dense [n, d] matrices with an SVD: refused above this
# many cells (ML-1M's 6,040 x 3,706 fit; ML-10M's 69,878 x 10,677 do not).
MAX_CELLS = 1 << 26


@flax.struct.dataclass
class Features:
  """One side's features x [n, d] (float32, 0 for rows without any) and
  the thin SVD's right singular vectors q [d, r] and values s [r]."""
  x: jax.Array
  q: jax.Array
  s: jax.Array


def implicit_features(rows: np.ndarray, cols: np.ndarray, n: int, m: int
                      ) -> np.ndarray:
  """[n, m] float32: row r's columns (its rated items, or raters) each
  1/sqrt(count of r); rows [N], cols [N] the training pairs."""
  x = np.zeros((n, m), np.float32)
  x[rows, cols] = 1.0
  counts = x.sum(1, keepdims=True)
  return x / np.sqrt(np.maximum(counts, 1.0))


def side_columns(constants: dict) -> tuple[np.ndarray, np.ndarray]:
  """(users [n_users, a], items [n_items, b]) float32 from
  `features.SideFeatures.constants`: each categorical user feature one-hot
  (the unknown code 0 all zeros), the continuous ones as they are
  (standardised), the items' genres and year; row 0 ('#na#') zero."""
  cat = np.asarray(constants["user_cat"])
  cols = [np.eye(cat[:, c].max() + 1, dtype=np.float32)[cat[:, c], 1:]
          for c in range(cat.shape[1])]
  users = np.concatenate(cols + [np.asarray(constants["user_cont"],
                                            np.float32)], 1)
  items = np.asarray(constants["item_cont"], np.float32).copy()
  users[0], items[0] = 0.0, 0.0
  return users, items


def feature_pair(users: np.ndarray, items: np.ndarray, n_users: int,
                 n_items: int, implicit: bool, side=None
                 ) -> tuple[Features, Features]:
  """The users' and the items' Features: implicit feedback from the
  training pairs (users [N], items [N]) when `implicit`, and the
  `side_columns` pair `side` (or None) beside it."""
  parts = ([], [])
  if implicit:
    if n_users * n_items > MAX_CELLS:
      raise UserError(
          f"--implicit holds {n_users:,} users x {n_items:,} items as a "
          f"dense matrix, over its limit of {MAX_CELLS:,} cells: drop "
          "--implicit for data this large")
    parts[0].append(implicit_features(users, items, n_users, n_items))
    parts[1].append(implicit_features(items, users, n_items, n_users))
  if side is not None:
    parts[0].append(side[0])
    parts[1].append(side[1])
  return tuple(features(np.concatenate(p, 1)) for p in parts)


def features(x: np.ndarray) -> Features:
  """The Features of x [n, d] (its SVD in float64, once)."""
  x = np.asarray(x, np.float32)
  _, s, qt = np.linalg.svd(x.astype(np.float64), full_matrices=False)
  return Features(jnp.asarray(x), jnp.asarray(qt.T, jnp.float32),
                  jnp.asarray(s, jnp.float32))


def _apply(f: Features, v, lam, power):
  """A^power v for v [d, k], A = X^T X + lam I, power -1 or -1/2."""
  inner = f.q.T @ v
  scale = (f.s**2 + lam) ** power
  return f.q @ (scale[:, None] * inner) + (v - f.q @ inner) * lam**power


def draw_beta(key, f: Features, rows, mu, lam_chol, lam_beta):
  """beta [d, k] given the rows [n, k], mu [k], Lam = lam_chol lam_chol^T
  and lam_beta. Rows that do not count ('#na#') have no features (0)."""
  target = f.x.T @ (rows - mu)
  mean = _apply(f, target, lam_beta, -1.0)
  z = jax.random.normal(key, mean.shape)
  # rows of z L^-1 have covariance Lam^-1: solve L^T w^T = z^T.
  noise = jax.scipy.linalg.solve_triangular(lam_chol, z.T, lower=True,
                                            trans=1).T
  return mean + _apply(f, noise, lam_beta, -0.5)


def draw_lam_beta(key, beta, lam, a0=1.0, b0=1.0):
  """lam_beta ~ Gamma(a0 + d k / 2, b0 + tr(beta Lam beta^T) / 2)."""
  d, k = beta.shape
  quad = jnp.sum((beta @ lam) * beta)
  return jax.random.gamma(key, a0 + d * k / 2.0) / (b0 + quad / 2.0)


def prior_means(f: Features, beta):
  """[n, k]: each row's regressed part of the prior mean, x_u^T beta."""
  return f.x @ beta
