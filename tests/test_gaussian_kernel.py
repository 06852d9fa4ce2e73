"""The Gibbs sampler's Gaussian rows kernel (`rowkernels.gaussian_rows`,
`gaussianrows.cc`): against float64 numpy, under vmap, on matrices that are
not positive definite, and against the jnp (LAPACK) path it replaces."""

import platform
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcf import conjugate, rowkernels


@pytest.fixture(autouse=True)
def _kernel_or_skip():
  why = rowkernels.gaussian_unavailable()
  if why is not None:
    pytest.skip(f"the Gaussian rows kernel cannot be built here: {why}")


def _has_avx2() -> bool:
  if platform.machine() not in ("x86_64", "AMD64"):
    return False
  try:
    flags = open("/proc/cpuinfo").read()
  except OSError:
    return False
  return bool(re.search(r"\bavx2\b", flags) and re.search(r"\bfma\b", flags))


# Each build the kernel has on this CPU: what it picks, and each forced.
VARIANTS = ["auto", "baseline"] + (["avx2"] if _has_avx2() else [])


def _problem(n, k, seed=0, lead=()):
  """Precisions [*lead, n, k, k] (positive definite, condition ~10, and a
  little asymmetric: the kernel must use (P + P^T) / 2), shifts and noise
  [*lead, n, k], all float32."""
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(*lead, n, k, 2 * k))
  p = a @ np.swapaxes(a, -1, -2) / (2 * k) + np.eye(k)
  skew = rng.normal(size=p.shape)
  p = p + 1e-2 * (skew - np.swapaxes(skew, -1, -2))
  h = rng.normal(size=(*lead, n, k))
  z = rng.normal(size=(*lead, n, k))
  return (p.astype(np.float32), h.astype(np.float32), z.astype(np.float32))


def _float64(p, h, z):
  """L^-T (L^-1 h + z), L the Cholesky factor of (P + P^T) / 2, in
  float64."""
  p = np.asarray(p, np.float64)
  low = np.linalg.cholesky((p + np.swapaxes(p, -1, -2)) / 2)
  y = np.linalg.solve(low, np.asarray(h, np.float64)[..., None])
  return np.linalg.solve(np.swapaxes(low, -1, -2),
                         y + np.asarray(z, np.float64)[..., None])[..., 0]


def _kernel(variant="auto"):
  return jax.jit(lambda p, h, z: rowkernels.gaussian_rows(p, h, z, variant))


def _assert_rows_close(got, p, h, z, tol=1e-5):
  """Each row within tol of its float64 value, relative to the norms of its
  mean and noise parts (their sum can cancel)."""
  got = np.asarray(got, np.float64)
  want = _float64(p, h, z)
  scale = (np.linalg.norm(_float64(p, h, 0 * z), axis=-1)
           + np.linalg.norm(_float64(p, 0 * h, z), axis=-1))
  err = np.linalg.norm(got - want, axis=-1) / scale
  assert np.all(err < tol), (err.max(), np.argmax(err))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("k", [1, 3, 13, 50, 64])
@pytest.mark.parametrize("n", [1, 7, 9, 943])
def test_the_mean_solve_and_the_noise_transform_match_float64(variant, k, n):
  p, h, z = _problem(n, k, seed=k * 1000 + n)
  run = _kernel(variant)
  zero = np.zeros_like(h)
  _assert_rows_close(run(p, h, zero), p, h, zero)  # P^-1 h
  _assert_rows_close(run(p, zero, z), p, zero, z)  # L^-T z
  _assert_rows_close(run(p, h, z), p, h, z)


def test_the_builds_agree_to_rounding():
  p, h, z = _problem(37, 50, seed=1)
  base = np.asarray(_kernel("baseline")(p, h, z))
  for variant in VARIANTS:
    np.testing.assert_allclose(_kernel(variant)(p, h, z), base, rtol=1e-4,
                               atol=1e-5)


def test_vmap_equals_each_batch_alone():
  p, h, z = _problem(9, 13, seed=2, lead=(4,))
  kernel = lambda p, h, z: rowkernels.gaussian_rows(p, h, z)
  got = np.asarray(jax.jit(jax.vmap(kernel))(p, h, z))
  assert got.shape == (4, 9, 13)
  for c in range(4):
    np.testing.assert_array_equal(got[c], _kernel()(p[c], h[c], z[c]))
  _assert_rows_close(got, p, h, z)
  # A shared precision, broadcast over the mapped shifts and noise.
  shared = np.asarray(jax.jit(jax.vmap(kernel, in_axes=(None, 0, 0)))(
      p[0], h, z))
  _assert_rows_close(shared, np.broadcast_to(p[0], p.shape), h, z)


def test_vmapped_draws_with_keys_use_the_kernel_and_match_float64():
  """The sampler's use: chains vmapped over keys and their precisions."""
  p, h, _ = _problem(9, 13, seed=3, lead=(4,))
  keys = jax.random.split(jax.random.key(0), 4)
  draw = jax.jit(jax.vmap(conjugate.gaussian_rows))
  assert "jaxcf_gaussian_rows" in draw.lower(keys, p, h).as_text()
  got = draw(keys, p, h)
  z = jax.vmap(lambda key, h: jax.random.normal(key, h.shape))(keys, h)
  _assert_rows_close(got, p, h, np.asarray(z))


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_matrix_that_is_not_positive_definite_gives_a_nan_row(variant):
  p, h, z = _problem(9, 5, seed=4)
  p[3] -= 10.0 * np.eye(5, dtype=np.float32)  # indefinite
  p[5, 2, 2] = np.nan
  got = np.asarray(_kernel(variant)(p, h, z))
  bad = [3, 5]
  assert np.all(np.isnan(got[bad]))
  good = np.setdiff1d(np.arange(9), bad)
  assert np.all(np.isfinite(got[good]))
  _assert_rows_close(got[good], p[good], h[good], z[good])
  # The LAPACK path gives NaN rows there too.
  lapack = np.asarray(conjugate.gaussian_rows_lapack(p, h, z))
  assert np.all(np.isnan(lapack[bad])) and np.all(np.isfinite(lapack[good]))


@pytest.mark.parametrize("k", [3, 50])
def test_the_kernel_and_the_jnp_path_draw_the_same_rows(monkeypatch, k):
  p, h, _ = _problem(943, k, seed=5)
  key = jax.random.key(7)

  def draw():  # a new function each time: jit's cache holds the old trace
    fn = jax.jit(lambda key, p, h: conjugate.gaussian_rows(key, p, h))
    return fn.lower(key, p, h).as_text(), np.asarray(fn(key, p, h))

  text, kernel = draw()
  assert "jaxcf_gaussian_rows" in text and "lapack_" not in text
  monkeypatch.setattr(rowkernels, "gaussian_unavailable", lambda: "off")
  text, fallback = draw()
  assert "jaxcf_gaussian_rows" not in text and "lapack_" in text
  np.testing.assert_allclose(kernel, fallback, rtol=1e-4, atol=1e-5)
  z = np.asarray(jax.random.normal(key, h.shape))
  _assert_rows_close(kernel, p, h, z)
