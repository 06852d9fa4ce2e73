"""Feature-regressed priors of BPMF (`jaxcf.featureprior`, `--implicit`):
each conditional against its closed form in float64 numpy, the features of
implicit feedback, the sweep in both layouts, a planted matrix, limits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcf import conjugate, errors, featureprior, gibbs, observed, sweep
from jaxcf import training

DRAWS = 20_000


def test_implicit_features_weight_each_rated_column_by_one_over_root_n():
  rows = np.array([1, 1, 1, 2, 3, 3])
  cols = np.array([0, 2, 4, 4, 1, 1])  # (3, 1) twice: one feature
  x = featureprior.implicit_features(rows, cols, 5, 5)
  want = np.zeros((5, 5))
  want[1, [0, 2, 4]] = 1 / np.sqrt(3)
  want[2, 4] = 1.0
  want[3, 1] = 1.0
  np.testing.assert_allclose(x, want, rtol=1e-6)  # rows 0, 4: none


@pytest.mark.parametrize("n,d", [(7, 4), (3, 5)], ids=["n>d", "n<d"])
def test_draw_beta_is_the_matrix_normal_posterior(n, d):
  """beta ~ MN(A^-1 X^T (R - mu), A^-1, Lam^-1), A = X^T X + lam I: the
  mean and the covariance of vec(beta) (a Kronecker product), with A
  inverted directly (not through the SVD the sampler uses)."""
  rng = np.random.default_rng(0)
  k, lam_beta = 2, 0.7
  x = rng.normal(size=(n, d)).astype(np.float32)
  rows = rng.normal(size=(n, k)).astype(np.float32)
  mu = np.array([0.3, -0.2], np.float32)
  lam = np.array([[2.0, 0.4], [0.4, 1.0]])
  f = featureprior.features(x)
  lam_chol = jnp.linalg.cholesky(jnp.asarray(lam, jnp.float32))
  keys = jax.random.split(jax.random.key(1), DRAWS)
  beta = np.asarray(jax.vmap(lambda key: featureprior.draw_beta(
      key, f, rows, mu, lam_chol, lam_beta))(keys), np.float64)
  x64 = x.astype(np.float64)
  a_inv = np.linalg.inv(x64.T @ x64 + lam_beta * np.eye(d))
  mean = a_inv @ x64.T @ (rows - mu)
  np.testing.assert_allclose(beta.mean(0), mean, atol=0.03)
  # vec by rows: cov(beta[i, a], beta[j, b]) = A^-1[i, j] Lam^-1[a, b]
  flat = beta.reshape(DRAWS, d * k)
  np.testing.assert_allclose(np.cov(flat.T), np.kron(a_inv,
                                                     np.linalg.inv(lam)),
                             atol=0.03)


def test_draw_lam_beta_is_the_gamma_posterior():
  beta = jnp.asarray([[1.0, 0.5], [-0.5, 2.0], [0.0, 1.0]])
  lam = jnp.asarray([[2.0, 0.4], [0.4, 1.0]])
  keys = jax.random.split(jax.random.key(2), DRAWS)
  g = np.asarray(jax.vmap(lambda key: featureprior.draw_lam_beta(
      key, beta, lam))(keys))
  quad = float(np.trace(np.asarray(beta) @ np.asarray(lam) @
                        np.asarray(beta).T))
  shape, rate = 1 + 3 * 2 / 2, 1 + quad / 2
  np.testing.assert_allclose(g.mean(), shape / rate, rtol=0.02)
  np.testing.assert_allclose(g.var(), shape / rate**2, rtol=0.06)


def test_normal_wishart_adds_the_extra_gaussian_terms_to_lam():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(30, 2)), jnp.float32)
  weight = jnp.ones(30)
  extra = np.array([[3.0, 1.0], [1.0, 2.0]])
  keys = jax.random.split(jax.random.key(4), 4000)
  _, lam = jax.vmap(lambda key: conjugate.normal_wishart(
      key, x, weight, extra_scatter=jnp.asarray(extra, jnp.float32),
      extra_df=5.0))(keys)
  rows = np.asarray(x, np.float64)
  mean = rows.mean(0)
  w_inv = (np.eye(2) + (rows - mean).T @ (rows - mean) + extra
           + 2.0 * 30 / 32 * np.outer(mean, mean))
  np.testing.assert_allclose(np.asarray(lam).mean(0),
                             (2 + 30 + 5) * np.linalg.inv(w_inv), rtol=0.05)


def test_a_sweep_with_features_draws_the_same_chain_in_both_layouts():
  rng = np.random.default_rng(5)
  n_u, n_i, k = 30, 20, 3
  mask = rng.random((n_u, n_i)) < 0.3
  mask[0], mask[:, 0] = False, False  # '#na#' rows
  users, items = np.nonzero(mask)
  ratings = rng.integers(1, 6, size=len(users)).astype(np.float32)
  feats = featureprior.feature_pair(users, items, n_u, n_i, True)
  weight = (jnp.ones(n_u).at[0].set(0.0), jnp.ones(n_i).at[0].set(0.0))
  side = lambda key, n, w, f: gibbs.Side(
      0.1 * jax.random.normal(key, (n, k)) * w[:, None], jnp.zeros(n),
      jnp.zeros(k), jnp.eye(k), jnp.ones(()),
      jnp.zeros((f.x.shape[1], k)), jnp.ones(()))
  chain = gibbs.Chain(side(jax.random.key(1), n_u, weight[0], feats[0]),
                      side(jax.random.key(2), n_i, weight[1], feats[1]),
                      jnp.asarray(2.0), jax.random.key(3),
                      jnp.zeros((), jnp.int32), jnp.zeros(1), jnp.zeros(()),
                      {})
  mean = float(ratings.mean())
  run = jax.jit(lambda obs: jax.lax.scan(
      lambda c, _: gibbs.sweep(c, obs, weight, mean, feats), chain,
      length=5))
  ends = [run(build(users, items, ratings, n_u, n_i))
          for build in (observed.dense, observed.sparse)]
  (a, mse_a), (b, mse_b) = ends
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    if jnp.issubdtype(x.dtype, jnp.floating):
      np.testing.assert_allclose(x, y, rtol=2e-3, atol=2e-4)
  np.testing.assert_allclose(mse_a, mse_b, rtol=1e-3)
  assert float(jnp.abs(a.users.beta).max()) > 0.01  # the weights moved
  assert np.isfinite(np.asarray(mse_a)).all()


def test_implicit_learns_a_user_from_which_items_they_rated(tmp_path):
  """Planted: two groups of users with opposite tastes on items 0-39, each
  group also rating its own 'neutral' items (40-49 or 50-59, rated 3 by
  all). Light users (0-19) have only neutral ratings in training, so their
  ratings say nothing of their taste; their valid rows are tasteful items.
  Only which items they rated tells their group, which the implicit prior
  reads (from the heavy users who rated the same neutral items)."""
  from jaxcf import datasets  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(6)
  lines, valid = ["user,item,rating"], ["user\titem"]
  rate = lambda u, i, r: lines.append(
      f"{u},{i},{r + 0.2 * rng.normal():.3f}")
  for u in range(100):
    group = u % 2
    neutral = rng.choice(np.arange(10) + 40 + 10 * group, 4, replace=False)
    for i in neutral:
      rate(u, i, 3.0)
    tasteful = rng.choice(40, 6 if u < 20 else 20, replace=False)
    for i in tasteful:
      rate(u, i, 3.0 + (1.5 if (i % 2) == group else -1.5))
      if u < 20:
        valid.append(f"{u}\t{i}")
  (tmp_path / "r.csv").write_text("\n".join(lines) + "\n")
  (tmp_path / "v.tsv").write_text("\n".join(valid) + "\n")
  data = datasets.load(datasets.Source(ratings_file=str(tmp_path / "r.csv")),
                       item_name="movie", seed=0,
                       valid_file=str(tmp_path / "v.tsv"), log=None)
  losses = {}
  for implicit in (False, True):
    replicas = [sweep.Replica(model="bpmf", n_factors=2, samples=8, seed=0,
                              implicit=implicit)]
    config = training.TrainConfig(epochs=150, burn_in=50, eval_every=150)
    outcome, _, _, _ = gibbs.train_group(replicas, data, config, [], None)
    losses[implicit] = outcome.progress.histories[0][-1]["valid_loss"]
  # Without: the light users' taste is unknown (measured 1.28); with: most of
  # it is recovered.
  assert losses[False] > 1.0 and losses[True] < 0.5 * losses[False], losses


def test_features_too_large_for_a_dense_matrix_are_refused(monkeypatch):
  monkeypatch.setattr(featureprior, "MAX_CELLS", 100)
  users, items = np.array([1, 2, 3]), np.array([4, 5, 6])
  with pytest.raises(errors.UserError, match="drop --implicit"):
    featureprior.feature_pair(users, items, 20, 10, True)


def test_side_columns_one_hot_the_categories_and_keep_the_rest():
  constants = {"user_cat": np.array([[0, 0], [1, 2], [2, 0]], np.int32),
               "user_cont": np.array([[0.0], [0.5], [-0.5]], np.float32),
               "item_cont": np.array([[0.0, 0.0], [1.0, 0.3], [0.0, 1.0]],
                                     np.float32)}
  users, items = featureprior.side_columns(constants)
  # gender codes 1..2, occupation codes 1..2 (0: unknown, all zeros), age
  np.testing.assert_array_equal(users, [[0, 0, 0, 0, 0],
                                        [1, 0, 0, 1, 0.5],
                                        [0, 1, 0, 0, -0.5]])
  np.testing.assert_allclose(items, [[0, 0], [1, 0.3], [0, 1]], rtol=1e-6)
  x = featureprior.feature_pair(np.array([1, 2]), np.array([1, 2]), 3, 3,
                                True, (users, items))
  assert x[0].x.shape == (3, 3 + 5) and x[1].x.shape == (3, 3 + 2)


def test_side_prior_without_side_information_is_refused(tmp_path):
  from jaxcf import datasets  # pylint: disable=g-import-not-at-top
  path = tmp_path / "r.csv"
  path.write_text("user,item,rating\n" + "".join(
      f"{u},{i},{1 + (u + i) % 5}\n" for u in range(10) for i in range(8)))
  data = datasets.load(datasets.Source(ratings_file=str(path)),
                       item_name="movie", seed=0, log=None)
  replicas = [sweep.Replica(model="bpmf", n_factors=2, samples=4, seed=0,
                            side_prior=True)]
  config = training.TrainConfig(epochs=10, burn_in=2, eval_every=10)
  with pytest.raises(errors.UserError, match="drop --side_prior"):
    gibbs.train_group(replicas, data, config, [], None)
