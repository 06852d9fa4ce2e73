"""Conjugate draws for the Gibbs sampler (`jaxcf.gibbs`): Wishart and
Normal-Wishart hyperparameters, Gaussian rows given their precision, Gamma
precisions, and `after`, which orders work that XLA must not run side by
side."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcf import rowkernels


def wishart(key, scale_chol, df):
  """A Wishart(W, df) draw, W = L L^T (Bartlett): L A A^T L^T."""
  k = scale_chol.shape[-1]
  kn, kc = jax.random.split(key)
  chi2 = 2.0 * jax.random.gamma(kc, (df - jnp.arange(k)) / 2.0)
  a = jnp.tril(jax.random.normal(kn, (k, k)), -1) + jnp.diag(jnp.sqrt(chi2))
  la = scale_chol @ a
  return la @ la.T


def normal_wishart(key, x, weight, beta0=2.0, extra_scatter=0.0,
                   extra_df=0.0):
  """(mu, Lam) given rows x [n, k] (weight [n]: 1 for rows that count), the
  prior mu0 = 0, beta0, W0 = I, nu0 = k. extra_scatter [k, k] and extra_df
  add other Gaussian terms in Lam (`jaxcf.featureprior`'s beta)."""
  k = x.shape[-1]
  n = jnp.sum(weight)
  mean = jnp.sum(x * weight[:, None], 0) / n
  centred = (x - mean) * weight[:, None]
  scatter = centred.T @ centred
  beta = beta0 + n
  w_inv = (jnp.eye(k) + scatter + extra_scatter
           + beta0 * n / beta * jnp.outer(mean, mean))
  w_chol = jnp.linalg.cholesky(jnp.linalg.inv(w_inv))
  kl, km = jax.random.split(key)
  lam = wishart(kl, w_chol, k + n + extra_df)
  mu_mean = n * mean / beta
  lam_chol = jnp.linalg.cholesky(beta * lam)
  mu = mu_mean + jax.scipy.linalg.solve_triangular(
      lam_chol.T, jax.random.normal(km, (k,)), lower=False)
  return mu, lam


def gaussian_rows(key, precision, shift):
  """Draws x_r ~ N(P_r^-1 h_r, P_r^-1) for every row r: precision [..., k,
  k], shift h [..., k] -> [..., k]. With P = L L^T and z ~ N(0, I): the
  mean L^-T L^-1 h plus the noise L^-T z, i.e. L^-T (L^-1 h + z). On the
  CPU one C++ kernel does all of it (`rowkernels.gaussian_rows`); else, or
  where it cannot be built, a Cholesky and two triangular solves, one after
  the other (see `jaxcf.gibbs.sweep` on why no two LAPACK calls may run side
  by side). Both give the same draw for the same key, to rounding."""
  z = jax.random.normal(key, shift.shape)
  if (precision.dtype == shift.dtype == jnp.float32
      and rowkernels.gaussian_unavailable() is None):
    rows = jnp.broadcast_shapes(precision.shape[:-1], shift.shape)
    return rowkernels.gaussian_rows(
        precision, jnp.broadcast_to(shift, rows),
        jnp.broadcast_to(z.astype(jnp.float32), rows))
  return gaussian_rows_lapack(precision, shift, z)


def gaussian_rows_lapack(precision, shift, z):
  """`gaussian_rows` given its noise z [..., k], by jnp.linalg.cholesky and
  two jax.scipy.linalg.solve_triangular calls."""
  low = jnp.linalg.cholesky(precision)
  solve = jax.scipy.linalg.solve_triangular
  y = solve(low, shift[..., None], lower=True)
  return solve(jnp.swapaxes(low, -1, -2), y + z[..., None],
               lower=False)[..., 0]


def gamma_precision(key, sum_squares, count, a0=1.0, b0=1.0):
  """A precision ~ Gamma(a0 + count/2, rate b0 + sum_squares/2)."""
  return jax.random.gamma(key, a0 + count / 2.0) / (b0 + sum_squares / 2.0)


def after(x, dependency):
  """x, as a value XLA computes only once `dependency` is computed: x + 0 *
  sum(dependency), which XLA cannot fold away for floats (0 * inf is nan).
  jax.lax.optimization_barrier does not order work on XLA's CPU backend."""
  return x + 0.0 * jnp.sum(dependency)
