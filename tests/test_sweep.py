"""Vmapped replicas: each equals its solo run; grouping, chunks, ensembles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcf import datasets, keys, minibatch, optim, sweep, training
from jaxcf.errors import UserError

CONFIG = training.TrainConfig(epochs=3, batch_size=16)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
  from tests.conftest import write_movielens
  folder = write_movielens(tmp_path_factory.mktemp("ml") / "ml-100k")
  return datasets.load(datasets.Source(data_dir=str(folder)), seed=0,
                       log=None)


def solo(replica, data):
  config = training.TrainConfig(**{**CONFIG.__dict__, "lr": replica.lr,
                                   "wd": replica.wd, "seed": replica.seed})
  return training.fit(replica.create_model(data), data, config, log=None)


def test_grid_is_the_cartesian_product():
  reps = sweep.grid(lr=[1e-3, 1e-2], wd=[0.0, 0.1, 0.2], seed=[7])
  assert len(reps) == 6
  assert {(r.lr, r.wd, r.seed) for r in reps} == {
      (lr, wd, 7) for lr in (1e-3, 1e-2) for wd in (0.0, 0.1, 0.2)}
  assert all(r.model == "dot_bias" for r in reps)
  with pytest.raises(ValueError, match="unknown Replica fields"):
    sweep.grid(learning_rate=[1])


@pytest.mark.parametrize("model, extra", [
    ("dot_bias", {}),
    ("embedding_nn", {"layers": [(8,)]}),  # BatchNorm statistics too
])
def test_each_replica_equals_its_solo_run(tiny_data, model, extra):
  reps = sweep.grid(model=[model], lr=[1e-2, 3e-2], wd=[0.0, 0.2],
                    seed=[0, 5], y_range=[(0.0, 5.5), (0.5, 5.25)], **extra)
  result = sweep.train_sweep(reps, tiny_data, CONFIG, log=None)
  for k in (0, 5, 10, 15):  # a spread of lr, wd, seed and y_range
    alone = solo(reps[k], tiny_data)
    got = [(h["train_loss"], h["valid_loss"]) for h in result.results[k]
           .history]
    want = [(h["train_loss"], h["valid_loss"]) for h in alone.history]
    np.testing.assert_allclose(got, want, rtol=2e-5, err_msg=str(reps[k]))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                         atol=1e-6),
                 result.results[k].params, jax.device_get(alone.state.params))
    preds = training.predict_all(alone.state, tiny_data.valid.users,
                                 tiny_data.valid.items)
    np.testing.assert_allclose(result.results[k].predictions, preds,
                               rtol=1e-4, atol=1e-5)


def test_replicas_with_other_y_ranges_stay_in_them(tiny_data):
  reps = sweep.grid(y_range=[(0.0, 5.5), (2.0, 3.0)], seed=[1])
  result = sweep.train_sweep(reps, tiny_data, CONFIG, log=None)
  narrow = result.results[1].predictions
  assert narrow.min() > 2.0 and narrow.max() < 3.0
  assert result.results[0].predictions.max() > 3.0


def test_chunks_and_groups_change_nothing(tiny_data):
  reps = sweep.grid(n_factors=[4, 8], lr=[1e-2, 2e-2], seed=[0, 1])
  whole = sweep.train_sweep(reps, tiny_data, CONFIG, log=None)
  lines = []
  chunked = sweep.train_sweep(reps, tiny_data, CONFIG, chunk=3,
                              log=lines.append)
  assert sum(l.startswith("compiled") for l in lines) == 4  # 2 groups x 2
  for a, b in zip(whole.results, chunked.results):
    assert a.replica == b.replica
    np.testing.assert_allclose(a.valid_loss, b.valid_loss, rtol=1e-5)
  # Results come back in the order the replicas were given.
  assert [r.replica for r in whole.results] == reps


def test_ensemble_is_the_mean_prediction(tiny_data):
  reps = sweep.grid(lr=[1e-2, 3e-2], seed=[0, 1, 2])
  result = sweep.train_sweep(reps, tiny_data, CONFIG, ensemble_top=2,
                             log=None)
  best2 = result.ranking()[:2]
  assert result.ensemble["members"] == sorted(best2)
  mean = np.mean([result.results[i].predictions for i in best2], axis=0)
  truth = np.asarray(tiny_data.valid.ratings, np.float64)
  assert result.ensemble["valid_loss"] == pytest.approx(
      np.mean((mean - truth)**2), rel=1e-5)
  every = sweep.train_sweep(reps, tiny_data, CONFIG, ensemble_top=0,
                            log=None)
  assert every.ensemble["members"] == list(range(6))
  # Averaging replicas beats their average loss (Jensen).
  assert every.ensemble["valid_loss"] < np.mean(
      [r.valid_loss for r in every.results])


def test_sweep_errors(tiny_data):
  with pytest.raises(UserError, match="no replicas"):
    sweep.train_sweep([], tiny_data, CONFIG, log=None)
  with pytest.raises(UserError, match="--chunk=0"):
    sweep.train_sweep(sweep.grid(seed=[1]), tiny_data, CONFIG, chunk=0,
                      log=None)


def test_auto_chunk_bounds(tiny_data):
  model = sweep.Replica().create_model(tiny_data)
  assert 1 <= sweep.auto_chunk(model, tiny_data, 16, 50) <= 50
  bytes_ = training.train_bytes(model, tiny_data, 16)
  assert bytes_ > 5 * 4 * (tiny_data.n_users + tiny_data.n_items) * 50


def test_stacked_state_carries_per_replica_hyperparameters(tiny_data):
  reps = sweep.grid(lr=[1e-3, 2e-3], wd=[0.5], y_range=[(0.0, 5.0)],
                    seed=[3])
  model = reps[0].create_model(tiny_data)
  tx = optim.one_cycle_adamw(1.0, 0.0, 10)
  state = minibatch.init_replicas(model, tx, reps)
  np.testing.assert_allclose(state.opt_state.peak_lr, [1e-3, 2e-3])
  np.testing.assert_allclose(state.opt_state.weight_decay, [0.5, 0.5])
  np.testing.assert_allclose(state.model_state["constants"]["y_range"],
                             [[0, 5], [0, 5]])
  emb = state.params["user_factors"]["embedding"]
  np.testing.assert_array_equal(emb[0], emb[1])  # one seed, one init
  assert isinstance(emb, jnp.ndarray) and emb.shape[0] == 2
  # Each replica starts bit for bit where fit starts it.
  alone = jax.jit(training.create_train_state, static_argnums=(0, 1))(
      model, tx, keys.run_keys(3)[0])
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[1], b),
               state.params, alone.params)


def test_a_diverged_replica_ranks_last(tiny_data):
  reps = sweep.grid(model=["dot"], y_range=[None], lr=[1e12, 1e-2], wd=[0.0],
                    seed=[0])
  result = sweep.train_sweep(reps, tiny_data, CONFIG, log=None)
  assert not np.isfinite(result.results[0].valid_loss)
  assert result.ranking() == [1, 0]
