"""Row-wise optimisers: only the batch's rows move; the math is right."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcf import models, optim, rowkernels, sparse, sweep, training
from jaxcf.data import Ratings
from jaxcf.errors import UserError


def _state(kind, name="dot_bias", n_users=6, n_items=5, total=10, lr=1e-2,
           wd=0.1, kernel="xla"):
  model = models.create(name, n_users, n_items, n_factors=3)
  tx = training.make_optimizer(model, training.TrainConfig(
      optimizer=kind, lr=lr, wd=wd, row_kernel=kernel), total)
  return training.create_train_state(model, tx, jax.random.key(0))


def _batch(users, items, seed=0):
  rng = np.random.default_rng(seed)
  return Ratings(jnp.asarray(users, jnp.int32), jnp.asarray(items, jnp.int32),
                 jnp.asarray(rng.integers(1, 6, len(users)), jnp.float32))


def _kernels_or_skip():
  try:
    rowkernels.check()
  except rowkernels.Unavailable as e:
    pytest.skip(f"C++ row kernels unavailable here: {e}")


@pytest.mark.parametrize("kernel", ["xla", "cpp"])
@pytest.mark.parametrize("kind", sparse.KINDS)
def test_untouched_rows_do_not_move(kind, kernel):
  if kernel == "cpp":
    _kernels_or_skip()
  state = _state(kind, kernel=kernel)
  new, _ = jax.jit(training.train_step)(state, _batch([1, 2, 2], [3, 1, 3]))
  for name, touched in (("user_factors", [1, 2]), ("item_factors", [1, 3]),
                        ("user_bias", [1, 2]), ("item_bias", [1, 3])):
    old = np.asarray(state.params[name]["embedding"])
    got = np.asarray(new.params[name]["embedding"])
    rest = np.setdiff1d(np.arange(len(old)), touched)
    np.testing.assert_array_equal(got[rest], old[rest])
    assert not np.allclose(got[touched], old[touched])


def test_lazy_adamw_equals_dense_adamw_when_every_row_is_used():
  """With every row in every batch, 'lazy' changes nothing."""
  users, items = np.arange(6).repeat(5), np.tile(np.arange(5), 6)
  dense, lazy = _state("adamw"), _state("lazy_adamw")
  step = jax.jit(training.train_step)
  for seed in range(6):
    batch = _batch(users, items, seed)
    dense, _ = step(dense, batch)
    lazy, _ = step(lazy, batch)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5,
                                                       atol=1e-7),
               dense.params, lazy.params)


def test_rowwise_adagrad_matches_a_reference():
  state = _state("rowwise_adagrad", lr=0.1, wd=0.0, total=4)
  table = np.asarray(state.params["item_bias"]["embedding"], np.float64)
  acc = np.zeros(len(table))
  step = jax.jit(training.train_step)
  for k in range(3):
    batch = _batch([1, 2], [4, 4], seed=k)
    before = state
    state, _ = step(state, batch)
    # The reference: the gradient of the row, then row-wise Adagrad.
    def loss(bias_row):
      params = dict(before.params)
      params["item_bias"] = {"embedding": before.params["item_bias"][
          "embedding"].at[4].set(bias_row)}
      preds = before.apply_fn({"params": params, **before.model_state},
                              batch.users, batch.items)
      return jnp.mean((preds - batch.ratings)**2)
    g = np.asarray(jax.grad(loss)(before.params["item_bias"]["embedding"][4]),
                   np.float64)
    lr = float(optim.one_cycle(k, 4, 0.1 / 25, 0.1, 0.1 / 1e5))
    acc[4] += np.mean(g * g)
    table[4] = table[4] - lr * g / (np.sqrt(acc[4]) + 1e-8)
    np.testing.assert_allclose(state.params["item_bias"]["embedding"][4],
                               table[4], rtol=1e-4)


def test_nn_models_train_with_row_optimizers():
  state = _state("lazy_adamw", name="embedding_nn")
  step = jax.jit(training.train_step)
  batch = _batch([1, 2, 3, 1], [0, 1, 2, 4])
  losses = []
  for _ in range(15):
    state, m = step(state, batch)
    losses.append(float(m["loss"]))
  assert losses[-1] < losses[0]
  # Linear layers and BatchNorm keep dense AdamW and train too.
  assert "Linear_0" in state.params


def test_side_nn_is_refused(tmp_path):
  from tests.conftest import write_movielens
  from jaxcf import datasets, features
  folder = write_movielens(tmp_path / "ml-100k")
  d = datasets.load(datasets.Source(data_dir=str(folder)), log=None)
  d = features.attach(d, features.movielens(d, folder))
  model = sweep.Replica(model="side_nn").create_model(d)
  with pytest.raises(UserError, match="not side_nn"):
    training.fit(model, d, training.TrainConfig(optimizer="lazy_adamw"),
                 log=None)


def test_sweep_with_a_row_optimizer_equals_solo(tmp_path):
  from tests.conftest import write_movielens
  from jaxcf import datasets
  folder = write_movielens(tmp_path / "ml-100k")
  d = datasets.load(datasets.Source(data_dir=str(folder)), log=None)
  config = training.TrainConfig(epochs=2, batch_size=16,
                                optimizer="lazy_adamw")
  reps = sweep.grid(lr=[1e-2, 3e-2], seed=[0, 1])
  result = sweep.train_sweep(reps, d, config, log=None)
  solo = training.fit(reps[3].create_model(d), d, training.TrainConfig(
      epochs=2, batch_size=16, optimizer="lazy_adamw", lr=3e-2, seed=1),
                      log=None)
  np.testing.assert_allclose(result.results[3].valid_loss,
                             solo.history[-1]["valid_loss"], rtol=1e-5)


def test_synthetic_data_and_cli(tmp_path, capsys):
  from jaxcf import synthetic
  d = synthetic.generate(300, 50, 20_000, seed=3, log=None)
  assert (d.train.size, d.valid.size) == (19_800, 200)
  users, items = np.asarray(d.train.users), np.asarray(d.train.items)
  assert users.min() >= 1 and users.max() <= 300
  assert items.min() >= 1 and items.max() <= 50
  counts = np.bincount(items, minlength=51)[1:]
  assert counts[:10].sum() > 2 * counts[-10:].sum()  # popular items
  r = np.asarray(d.train.ratings)
  assert 1 <= r.min() and r.max() <= 5
  again = synthetic.generate(300, 50, 20_000, seed=3, chunk=7_000, log=None)
  # Chunks change the stream, not the model: both learnable, same shape.
  assert again.train.size == d.train.size
  result = training.fit(sweep.Replica(n_factors=8).create_model(d), d,
                        training.TrainConfig(epochs=3, batch_size=256,
                                             optimizer="lazy_adamw", lr=1e-2),
                        log=None)
  baseline = float(np.var(np.asarray(d.valid.ratings)))
  assert result.history[-1]["valid_loss"] < 0.8 * baseline
  from tests.conftest import train_cli
  assert train_cli("--dataset=synthetic", "--n_users=200", "--n_items=40",
                   "--n_ratings=5000", "--bs=256", "--epochs=1",
                   "--optimizer=rowwise_adagrad", "--lr=0.1") == 0
  assert "generated 5,000 synthetic ratings" in capsys.readouterr().out


@pytest.mark.parametrize("n, size", [(10, 64), (600_000, 64), (3, 5)])
def test_claim(n, size):
  rng = np.random.default_rng(n)
  scratch = jnp.asarray(rng.integers(-5, 99, n), jnp.int32)  # stale values
  for _ in range(2):
    ids = rng.integers(0, min(n, 50), size)
    scratch, owner = sparse._claim(scratch, jnp.asarray(ids, jnp.int32))
    owner = np.asarray(owner)
    assert (ids[owner] == ids).all()  # a position of the same id
    for i in np.unique(ids):  # one for all of them
      assert len(set(owner[ids == i])) == 1


@pytest.mark.parametrize("name", ["dot_bias", "embedding_nn"])
@pytest.mark.parametrize("kind", sparse.KINDS)
def test_cpp_kernels_equal_the_xla_path(kind, name):
  """Same steps, batches with repeated ids: the C++ row kernels move every
  table, slot and dense parameter as the XLA path does."""
  _kernels_or_skip()
  rng = np.random.default_rng(7)
  states = {k: _state(kind, name=name, n_users=40, n_items=9, total=12,
                      lr=0.05, kernel=k) for k in ("xla", "cpp")}
  step = jax.jit(training.train_step)
  for seed in range(6):
    batch = _batch(rng.integers(0, 40, 32), rng.integers(0, 9, 32), seed)
    states = {k: step(s, batch)[0] for k, s in states.items()}
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()),
                       _state(kind, name=name, n_users=40, n_items=9).params,
                       states["xla"].params)
  assert min(jax.tree.leaves(moved)) > 0  # every table trained
  # Everything but the XLA path's scratch table (`sparse._claim`); repeated
  # ids' gradients are summed in another order, so to float rounding.
  xla, cpp = ((s.params, s.opt_state._replace(claims=None))
              for s in (states["xla"], states["cpp"]))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-6), xla, cpp)


def test_cpp_gather_and_a_bad_id():
  _kernels_or_skip()
  table = jnp.arange(60, dtype=jnp.float32).reshape(12, 5)
  ids = jnp.asarray([3, 0, 11, 3], jnp.int32)
  np.testing.assert_array_equal(jax.jit(rowkernels.gather_rows)(table, ids),
                                np.asarray(table)[np.asarray(ids)])
  with pytest.raises(Exception, match="out of the table's range"):
    jax.block_until_ready(jax.jit(rowkernels.gather_rows)(
        table, jnp.asarray([1, 12], jnp.int32)))


def test_cpp_kernels_train_from_the_cli(tmp_path, capsys):
  _kernels_or_skip()
  from tests.conftest import train_cli
  assert train_cli("--dataset=synthetic", "--n_users=200", "--n_items=40",
                   "--n_ratings=5000", "--bs=256", "--epochs=2",
                   "--optimizer=rowwise_adagrad", "--lr=0.1",
                   "--row_kernel=cpp") == 0
  assert "final valid MSE" in capsys.readouterr().out


def test_cpp_kernels_unavailable_is_one_line(tmp_path):
  """Without a compiler, --row_kernel=cpp says so (exit 2), no traceback."""
  import subprocess, sys, os
  from tests.conftest import REPO
  proc = subprocess.run(
      [sys.executable, str(REPO / "train.py"), "--dataset=synthetic",
       "--n_users=50", "--n_items=10", "--n_ratings=500", "--bs=64",
       "--epochs=1", "--optimizer=rowwise_adagrad", "--row_kernel=cpp"],
      capture_output=True, text=True, env={
          **os.environ, "JAX_PLATFORMS": "cpu", "CXX": str(tmp_path / "cc"),
          "JAXCF_CACHE": str(tmp_path / "cache")})
  assert proc.returncode == 2, proc.stderr
  assert "Traceback" not in proc.stderr
  assert f"--row_kernel=cpp: $CXX={tmp_path / 'cc'} is not a program" in (
      proc.stderr)
