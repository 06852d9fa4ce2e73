"""Row-wise optimisers: only the batch's rows move; the math is right."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcf import models, optim, sparse, sweep, training
from jaxcf.data import Ratings
from jaxcf.errors import UserError


def _state(kind, name="dot_bias", n_users=6, n_items=5, total=10, lr=1e-2,
           wd=0.1):
  model = models.create(name, n_users, n_items, n_factors=3)
  if kind == "adamw":
    tx = optim.one_cycle_adamw(lr, wd, total)
  else:
    tx = sparse.SparseOptimizer(kind, total, peak_lr=lr, weight_decay=wd)
  return training.create_train_state(model, tx, jax.random.key(0))


def _batch(users, items, seed=0):
  rng = np.random.default_rng(seed)
  return Ratings(jnp.asarray(users, jnp.int32), jnp.asarray(items, jnp.int32),
                 jnp.asarray(rng.integers(1, 6, len(users)), jnp.float32))


@pytest.mark.parametrize("kind", sparse.KINDS)
def test_untouched_rows_do_not_move(kind):
  state = _state(kind)
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


def test_synthetic_data_and_cli(tmp_path):
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
  import subprocess, sys, os
  from tests.conftest import REPO
  proc = subprocess.run(
      [sys.executable, str(REPO / "train.py"), "--dataset=synthetic",
       "--n_users=200", "--n_items=40", "--n_ratings=5000", "--bs=256",
       "--epochs=1", "--optimizer=rowwise_adagrad", "--lr=0.1"],
      capture_output=True, text=True, env={**os.environ,
                                           "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr
  assert "generated 5,000 synthetic ratings" in proc.stdout


@pytest.mark.parametrize("n", [10, 600_000])  # packed keys, and jnp.unique
def test_distinct_ids(n):
  rng = np.random.default_rng(n)
  ids = jnp.asarray(rng.integers(0, min(n, 50), 64), jnp.int32)
  distinct, slot = sparse._distinct(ids, n)
  want = np.unique(np.asarray(ids))
  np.testing.assert_array_equal(distinct[:len(want)], want)
  assert (np.asarray(distinct[len(want):]) == n).all()
  np.testing.assert_array_equal(np.asarray(distinct)[np.asarray(slot)], ids)
