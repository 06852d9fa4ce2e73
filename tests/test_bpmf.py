"""Bayesian MF (`jaxcf.gibbs`, `models/bpmf.py`): each conditional against
its closed form, recovery of a planted matrix with calibrated intervals,
chains, determinism, the saved model, and bad settings refused."""


import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcf import (datasets, errors, gibbs, observed, rowkernels, sweep,
                   training)
from tests.conftest import train_cli

DRAWS = 20_000


def test_gaussian_rows_draw_the_posterior_of_each_row():
  p = jnp.asarray([[[2.0, 0.5], [0.5, 1.0]], [[4.0, -1.0], [-1.0, 3.0]]])
  h = jnp.asarray([[1.0, -1.0], [0.5, 2.0]])
  keys = jax.random.split(jax.random.key(0), DRAWS)
  x = np.asarray(jax.vmap(lambda k: gibbs.gaussian_rows(k, p, h))(keys))
  for row in range(2):
    cov = np.linalg.inv(np.asarray(p[row], np.float64))
    np.testing.assert_allclose(x[:, row].mean(0), cov @ np.asarray(h[row]),
                               atol=0.03)
    np.testing.assert_allclose(np.cov(x[:, row].T), cov, atol=0.03)


def _layouts(mask, values):
  """The same ratings as observed.Dense and observed.Sparse, with the
  per-rating values in each one's form."""
  users, items = np.nonzero(mask)
  ratings = np.asarray(values)[users, items]
  n_u, n_i = mask.shape
  dense = observed.dense(users, items, ratings, n_u, n_i)
  sparse = observed.sparse(users, items, ratings, n_u, n_i)
  return [(dense, dense.ratings), (sparse, sparse.ratings)]


@pytest.mark.parametrize("layout", [0, 1], ids=["dense", "sparse"])
def test_row_posterior_is_the_sum_over_each_rows_ratings(layout, monkeypatch):
  monkeypatch.setattr(observed, "BUCKET_CELLS", 16)  # 2 rows a bucket
  rng = np.random.default_rng(0)
  other = {0: rng.normal(size=(5, 3)), 1: rng.normal(size=(4, 3))}
  mask = (rng.random((4, 5)) < 0.6).astype(np.float32)
  residual = mask * rng.normal(size=(4, 5)).astype(np.float32)
  obs, values = _layouts(mask, residual)[layout]
  mu, lam = rng.normal(size=3), np.eye(3) * 2 + 0.1
  for side in (0, 1):
    m, e = (mask, residual) if side == 0 else (mask.T, residual.T)
    v_all = other[side].astype(np.float32)
    p, h = gibbs.row_posterior(obs, side, v_all, values, 1.5, mu, lam)
    for n in range(m.shape[0]):
      rated = m[n] > 0
      v = v_all[rated]
      np.testing.assert_allclose(p[n], lam + 1.5 * v.T @ v, rtol=1e-5)
      np.testing.assert_allclose(h[n], lam @ mu + 1.5 * v.T @ e[n, rated],
                                 rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", [0, 1], ids=["dense", "sparse"])
def test_bias_rows_and_gamma_precision_match_their_closed_forms(layout):
  mask = np.asarray([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
  obs, values = _layouts(mask, [[0.4, 1.0, 0.0], [0.0, 0.0, 0.0]])[layout]
  keys = jax.random.split(jax.random.key(1), DRAWS)
  b = np.asarray(jax.vmap(lambda k: gibbs.bias_rows(k, obs, 0, values, 2.0,
                                                    0.5))(keys))
  precision = np.array([0.5 + 2.0 * 2, 0.5])  # a row without ratings: prior
  np.testing.assert_allclose(b.mean(0), [2.0 * 1.4 / 4.5, 0.0], atol=0.02)
  np.testing.assert_allclose(b.var(0), 1 / precision, rtol=0.05)
  g = np.asarray(jax.vmap(lambda k: gibbs.gamma_precision(k, 30.0, 40.0))(
      keys))
  np.testing.assert_allclose(g.mean(), (1 + 20) / (1 + 15), rtol=0.02)


def test_dense_and_sparse_sweeps_draw_the_same_chain(monkeypatch):
  """The two layouts are two ways to the same sums: the same keys give the
  same draws, sweep after sweep (float32 sums in another order)."""
  monkeypatch.setattr(observed, "BUCKET_CELLS", 24)  # buckets split
  rng = np.random.default_rng(5)
  n_u, n_i, k = 30, 20, 4
  mask = rng.random((n_u, n_i)) < 0.3
  mask[0], mask[:, 0] = False, False  # '#na#' rows
  ratings = rng.integers(1, 6, size=(n_u, n_i)).astype(np.float32)
  weight = (jnp.ones(n_u).at[0].set(0.0), jnp.ones(n_i).at[0].set(0.0))
  side = lambda key, n, w: gibbs.Side(
      0.1 * jax.random.normal(key, (n, k)) * w[:, None], jnp.zeros(n),
      jnp.zeros(k), jnp.eye(k), jnp.ones(()))
  chain = gibbs.Chain(side(jax.random.key(1), n_u, weight[0]),
                      side(jax.random.key(2), n_i, weight[1]),
                      jnp.asarray(2.0), jax.random.key(3),
                      jnp.zeros((), jnp.int32), jnp.zeros(1), jnp.zeros(()),
                      {})
  mean = float(ratings[mask].mean())
  run = jax.jit(lambda obs: jax.lax.scan(
      lambda c, _: gibbs.sweep(c, obs, weight, mean), chain, length=5))
  ends = [(c, mse[-1]) for c, mse in (run(obs) for obs, _ in
                                      _layouts(mask, ratings))]
  (a, mse_a), (b, mse_b) = ends
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    if x.dtype != jax.dtypes.float0 and jnp.issubdtype(x.dtype, jnp.floating):
      np.testing.assert_allclose(x, y, rtol=2e-3, atol=2e-4)
  np.testing.assert_allclose(mse_a, mse_b, rtol=1e-3)
  assert float(jnp.abs(a.users.factors).max()) > 0.05  # it moved


def test_normal_wishart_draws_have_the_posterior_means():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal([1.0, -2.0], [0.5, 1.0], size=(40, 2)),
                  jnp.float32)
  weight = jnp.ones(40).at[0].set(0.0)  # row 0 ('#na#') does not count
  keys = jax.random.split(jax.random.key(3), 4000)
  mu, lam = jax.vmap(lambda k: gibbs.normal_wishart(k, x, weight))(keys)
  rows, n = np.asarray(x[1:], np.float64), 39
  mean = rows.mean(0)
  scatter = (rows - mean).T @ (rows - mean)
  w_inv = np.eye(2) + scatter + 2.0 * n / (2.0 + n) * np.outer(mean, mean)
  np.testing.assert_allclose(np.asarray(lam).mean(0),
                             (2 + n) * np.linalg.inv(w_inv), rtol=0.05)
  np.testing.assert_allclose(np.asarray(mu).mean(0), n * mean / (2.0 + n),
                             atol=0.03)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
  """Ratings of a planted rank-2 matrix plus N(0, 0.5^2) noise, 60% seen."""
  rng = np.random.default_rng(4)
  u, v = rng.normal(size=(80, 2)), rng.normal(size=(60, 2))
  lines = ["user,item,rating"]
  for a in range(80):
    for b in range(60):
      if rng.random() < 0.6:
        lines.append(f"{a},{b},{3 + u[a] @ v[b] + 0.5 * rng.normal():.4f}")
  path = tmp_path_factory.mktemp("planted") / "r.csv"
  path.write_text("\n".join(lines) + "\n")
  return datasets.load(datasets.Source(ratings_file=str(path)),
                       item_name="movie", seed=0, log=None)


def run_chains(data, seeds, sweeps=120, samples=16):
  replicas = [sweep.Replica(model="bpmf", n_factors=2, samples=samples,
                            seed=s) for s in seeds]
  config = training.TrainConfig(epochs=sweeps, burn_in=40, eval_every=40)
  return gibbs.train_group(replicas, data, config, [], None)


@pytest.mark.parametrize("layout", ["auto", "sparse"])
def test_a_planted_matrix_is_recovered_with_calibrated_intervals(
    planted, layout, monkeypatch):
  if layout == "sparse":  # the rating lists, as for data too big for a matrix
    monkeypatch.setattr(gibbs, "dense_layout", lambda *_: False)
  else:
    tu, ti = (np.asarray(x) for x in planted.train[:2])
    assert gibbs.dense_layout(tu, ti, planted.n_users, planted.n_items)
  outcome, preds, _, _ = run_chains(planted, [0])
  truth = np.asarray(planted.valid.ratings)
  rmse = float(np.sqrt(np.mean((np.asarray(preds[0]) - truth)**2)))
  assert rmse < 0.62, rmse  # the noise alone is 0.5
  state = outcome.state
  params = jax.tree.map(lambda x: x[0], state.params)
  mean, std = state.model.apply({"params": params}, planted.valid.users,
                                planted.valid.items, method="predictive")
  z = np.abs(truth - np.asarray(mean)) / np.asarray(std)
  for level, bound in ((0.5, 0.6745), (0.9, 1.6449)):
    assert abs(np.mean(z <= bound) - level) < 0.06, (level, np.mean(z <= bound))


def test_no_two_lapack_calls_of_a_sweep_can_run_side_by_side():
  """On the CPU two LAPACK calls running at once can leave both of XLA's
  pool threads waiting for each other (see gibbs.sweep): in the compiled
  sweep of 4 vmapped chains, every LAPACK call, and the rows' C++ kernel
  (`rowkernels.gaussian_rows`) where it runs, must depend on the one
  before it."""
  rng = np.random.default_rng(6)
  n_u, n_i, k = 12, 9, 3
  users, items = rng.integers(1, n_u, 60), rng.integers(1, n_i, 60)
  cells = np.unique(users * n_i + items)
  obs = observed.dense(cells // n_i, cells % n_i,
                       np.full(len(cells), 3.0, np.float32), n_u, n_i)
  weight = (jnp.ones(n_u), jnp.ones(n_i))
  side = lambda n: gibbs.Side(jnp.zeros((n, k)), jnp.zeros(n), jnp.zeros(k),
                              jnp.eye(k), jnp.ones(()))
  chains = jax.vmap(lambda seed: gibbs.Chain(
      side(n_u), side(n_i), jnp.asarray(2.0), jax.random.key(seed),
      jnp.zeros((), jnp.int32), jnp.zeros(1), jnp.zeros(()), {}))(
          jnp.arange(4))
  text = jax.jit(jax.vmap(lambda c: gibbs.sweep(c, obs, weight, 3.0))).lower(
      chains).compile().as_text()
  deps, calls, kernels = {}, [], 0
  for line in text.splitlines():
    m = re.match(r"\s*(?:ROOT )?(%[\w.\-]+) = (.*)", line)
    if m:
      deps[m.group(1)] = set(re.findall(r"%[\w.\-]+", m.group(2)))
      if re.search(r'custom_call_target="(lapack_|jaxcf_gaussian_rows")',
                   line):
        calls.append(m.group(1))
        kernels += "jaxcf_gaussian_rows" in line
  # Per side: the hyperparameters' LU, Cholesky and solves, then the rows'
  # draw: the kernel, or (without it) a Cholesky and two solves more.
  kernel = rowkernels.gaussian_unavailable() is None
  assert kernels == (2 if kernel else 0), calls
  assert len(calls) - kernels >= (10 if kernel else 16), calls

  def ancestors(name):
    seen, todo = set(), [name]
    while todo:
      for d in deps.get(todo.pop(), ()):
        if d not in seen:
          seen.add(d)
          todo.append(d)
    return seen

  before = {c: ancestors(c) for c in calls}
  side_by_side = [(a, b) for i, a in enumerate(calls) for b in calls[i + 1:]
                  if a not in before[b] and b not in before[a]]
  assert not side_by_side, side_by_side


def test_the_layout_is_a_matrix_only_when_small_dense_and_unrepeated(
    monkeypatch):
  users, items = np.array([1, 1, 2, 3]), np.array([1, 2, 2, 1])
  assert gibbs.dense_layout(users, items, 4, 3)
  assert not gibbs.dense_layout(users, items, 400, 300)  # 0.003% rated
  assert not gibbs.dense_layout(users, items, 6, 5)  # 13% rated
  assert not gibbs.dense_layout(np.r_[users, 3], np.r_[items, 1], 4, 3)
  monkeypatch.setattr(gibbs, "DENSE_MAX_BYTES", 8 * 4 * 3 - 1)
  assert not gibbs.dense_layout(users, items, 4, 3)  # the matrices too big


def test_chains_together_equal_chains_alone_and_repeat_exactly(planted):
  _, together, _, _ = run_chains(planted, [3, 4], sweeps=80)
  _, alone, _, _ = run_chains(planted, [4], sweeps=80)
  _, again, _, _ = run_chains(planted, [4], sweeps=80)
  np.testing.assert_allclose(together[1], alone[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(alone, again)
  assert not np.allclose(together[0], together[1])  # chains differ


def test_the_cli_saves_a_posterior_that_loads_with_uncertainty(
    tiny_ml, tmp_path, capsys):
  import jaxcf
  w = tmp_path / "w"
  assert train_cli(f"--data_dir={tiny_ml}", "--model=bpmf", "--n_factors=3",
                   "--epochs=40", "--samples=8", "--seed=0,1", "--ensemble",
                   f"--workdir={w}") == 0
  assert "Gibbs chain(s) of bpmf" in capsys.readouterr().out
  model = jaxcf.load(str(w))
  mean, std = model.predict(1, ["Movie 005 (1955)", "Twin (1995)"],
                            return_std=True)
  np.testing.assert_allclose(mean, model.predict(
      1, ["Movie 005 (1955)", "Twin (1995)"]), rtol=1e-5)
  assert (std > 0.1).all() and (std < 3).all()
  lower = model.recommend(1, k=3, rank_by="lower")
  assert (lower["score"].to_numpy() <= model.recommend(1, k=30)[
      "score"].max() + 1e-6).all()
  # Fold-in samples a new user's rows per kept draw: with their ratings the
  # user is pinned down (smaller std) and predicts like the trained user.
  user = model.users.decode([5])[0]
  row = model.user_index(user)
  rated = model.train.items[np.asarray(model.train.users) == row]
  ratings = model.train.ratings[np.asarray(model.train.users) == row]
  items = model.items.decode(np.asarray(rated))
  nobody = model.fold_in({})
  them = model.fold_in(list(zip(items, np.asarray(ratings).tolist())))
  every = model.items.decode(np.arange(1, len(model.items)))
  _, std_nobody = model.predict(nobody, every, return_std=True)
  mean_them, std_them = model.predict(them, every, return_std=True)
  assert std_them.mean() < std_nobody.mean()
  trained_mean = model.predict([user] * len(every), every)
  assert np.corrcoef(mean_them, trained_mean)[0, 1] > 0.8


@pytest.mark.parametrize("flags, message", [
    (["--epochs=50", "--burn_in=60"], "--burn_in=60 must lie in [0, "
     "--epochs=50)"),
    (["--epochs=20", "--burn_in=10", "--samples=16"], "leaves 10 sweeps, "
     "fewer than the 16"),
    (["--lr=0.1"], "--lr does not apply to --model=bpmf"),
    (["--samples=0"], "--samples=0 must be a positive integer"),
])
def test_bad_settings_are_one_line(tiny_ml, capsys, flags, message):
  assert train_cli(f"--data_dir={tiny_ml}", "--model=bpmf", *flags) == 2
  err = capsys.readouterr().err
  assert message in err and err.count("\n") == 1, err


def test_other_models_refuse_bpmf_settings(tiny_ml, capsys, tmp_path):
  assert train_cli(f"--data_dir={tiny_ml}", "--burn_in=5") == 2
  assert "--burn_in does not apply to --model=dot_bias" in (
      capsys.readouterr().err)
  import jaxcf
  assert train_cli(f"--data_dir={tiny_ml}", "--epochs=1",
                   f"--workdir={tmp_path}") == 0
  with pytest.raises(errors.UserError, match="return_std and rank_by need"):
    jaxcf.load(str(tmp_path)).predict(1, ["Twin (1995)"], return_std=True)


def test_row_lists_give_every_rows_gram_matrix(monkeypatch):
  """Rows of 0 to 150 ratings (repeats kept) in buckets of growing length,
  some split: each row's Gram matrix is the sum of its outer products."""
  monkeypatch.setattr(observed, "BUCKET_CELLS", 200)
  rng = np.random.default_rng(3)
  n, m, k = 40, 30, 3
  counts = rng.integers(0, 150, size=n)
  counts[:3] = 0
  rows = np.repeat(np.arange(n), counts)
  cols = rng.integers(0, m, size=len(rows))
  perm = rng.permutation(len(rows))
  lists = observed.row_lists(rows[perm], cols[perm], n, m)
  assert len({c.shape[1] for c in lists.cols}) > 4  # several lengths
  assert len(lists.cols) > len({c.shape[1] for c in lists.cols})  # splits
  listed = np.concatenate([np.asarray(r) for r in lists.rows])
  assert sorted(listed) == sorted(np.nonzero(counts)[0])  # each row once
  cells = sum(c.size for c in lists.cols)
  assert cells <= 1.4 * len(rows) + 8 * n
  other = rng.normal(size=(m, k)).astype(np.float32)
  gram = np.asarray(lists.gram(other))
  for r in range(n):
    v = other[cols[rows == r]]
    np.testing.assert_allclose(gram[r], v.T @ v, rtol=1e-5, atol=1e-5)
