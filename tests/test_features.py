"""Side information: MovieLens feature tables, SideNN, new users by features."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcf import (datasets, features, movielens, optim, sidefiles, sweep,
                   trained, training)
from jaxcf.errors import UserError
from tests.conftest import write_movielens


@pytest.fixture(scope="module")
def side_data(tmp_path_factory):
  folder = write_movielens(tmp_path_factory.mktemp("ml") / "ml-100k",
                           n_users=40, n_items=30, density=0.6)
  d = datasets.load(datasets.Source(data_dir=str(folder)), seed=0, log=None)
  return features.attach(d, features.movielens(d, folder)), folder


def test_tables_are_aligned_with_the_vocabularies(side_data):
  d, folder = side_data
  side = d.side
  users = sidefiles.users(movielens.ML100K, folder).set_index("user")
  cat, cont = side.constants["user_cat"], side.constants["user_cont"]
  assert cat.shape == (d.n_users, 2) and cont.shape == (d.n_users, 1)
  assert (cat[0] == 0).all() and (cont[0] == 0).all()  # '#na#'
  for row in (1, 7, d.n_users - 1):
    uid = d.users.decode([row])[0]
    assert side.categories["gender"][cat[row, 0] - 1] == users.loc[uid,
                                                                   "gender"]
    mean, std = side.scales["age"]
    assert cont[row, 0] == pytest.approx((users.loc[uid, "age"] - mean) / std,
                                         rel=1e-5)
  item = side.constants["item_cont"]
  assert item.shape == (d.n_items, 20)
  assert set(np.unique(item[1:, :19])) <= {0.0, 1.0}
  assert np.isfinite(item).all()  # the unknown release date is the mean
  assert side.spec["user_cats"] == (3, 5)  # 2 genders, 4 jobs, + unknown
  times = np.asarray(d.train.times)
  assert times.shape == (d.train.size,) and 0 <= times.min() <= times.max() <= 1


def test_encode_user(side_data):
  side = side_data[0].side
  rows = side.encode_user({"age": 30, "gender": "F", "occupation": "pilot"})
  assert rows["user_cat"][0] == side.categories["gender"].index("F") + 1
  assert rows["user_cat"][1] == 0  # an unknown occupation
  with pytest.raises(UserError, match="unknown user feature"):
    side.encode_user({"height": 180})
  with pytest.raises(UserError, match="unknown"):
    features.movielens(side_data[0], side_data[1], ["user", "weather"])


def test_side_nn_uses_features_and_time(side_data):
  d, _ = side_data
  model = sweep.Replica(model="side_nn", layers=(8,)).create_model(d)
  state = training.create_train_state(
      model, optim.one_cycle_adamw(1e-2, 0.1, 10), jax.random.key(0),
      training.model_constants(model, d))
  users, items = jnp.array([3, 3]), jnp.array([5, 5])
  early = training.predict(state, users, items, jnp.array([0.0, 0.0]))
  late = training.predict(state, users, items, jnp.array([1.0, 1.0]))
  assert not np.allclose(early, late)  # time is an input
  other = state.model_state["constants"]["user_cont"].at[3].set(5.0)
  moved = state.replace(model_state={**state.model_state, "constants": {
      **state.model_state["constants"], "user_cont": other}})
  assert not np.allclose(training.predict(moved, users, items),
                         training.predict(state, users, items))


def test_id_dropout_trains_the_unknown_row(side_data):
  """Without id dropout row 0 ('#na#') only decays; with it, it learns."""
  d, _ = side_data
  config = training.TrainConfig(epochs=2, batch_size=16, lr=1e-2, seed=3)
  cosine = {}
  for p in (0.0, 0.5):
    model = sweep.Replica(model="side_nn", layers=(8,),
                          id_dropout=p).create_model(d)
    init_key = jax.random.split(jax.random.key(config.seed))[0]
    start = training.create_train_state(
        model, optim.one_cycle_adamw(1.0, 0.0, 1), init_key,
        training.model_constants(model, d))
    end = training.fit(model, d, config, log=None).state
    a = np.asarray(start.params["user_factors"]["embedding"][0])
    b = np.asarray(end.params["user_factors"]["embedding"][0])
    cosine[p] = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
  assert cosine[0.0] == pytest.approx(1.0, abs=1e-5)  # decay only
  assert cosine[0.5] < 0.9


def test_sweep_replica_equals_solo_with_side_features(side_data):
  d, _ = side_data
  config = training.TrainConfig(epochs=2, batch_size=16)
  reps = sweep.grid(model=["side_nn"], layers=[(8,)], lr=[1e-2, 2e-2],
                    seed=[0, 1])
  result = sweep.train_sweep(reps, d, config, log=None)
  solo = training.fit(reps[3].create_model(d), d, training.TrainConfig(
      epochs=2, batch_size=16, lr=2e-2, seed=1), log=None)
  np.testing.assert_allclose(result.results[3].valid_loss,
                             solo.history[-1]["valid_loss"], rtol=1e-5)


def test_trained_side_model_round_trip_and_new_users(side_data, tmp_path):
  d, _ = side_data
  replica = sweep.Replica(model="side_nn", layers=(8,), id_dropout=0.2,
                          lr=1e-2)
  result = training.fit(replica.create_model(d), d, training.TrainConfig(
      epochs=3, batch_size=16, lr=1e-2), log=None)
  model = trained.TrainedModel.from_training(
      replica, result.state.params, result.state.model_state, d)
  model.save(str(tmp_path / "m"))
  again = trained.load(str(tmp_path / "m"))
  user = model.users.decode([4])[0]
  assert again.recommend(user).equals(model.recommend(user))
  young = again.fold_in({}, features={"age": 18, "gender": "F",
                                      "occupation": "student"})
  old = again.fold_in({}, features={"age": 67, "gender": "M",
                                    "occupation": "retired"})
  items = list(again.items.decode(range(1, 8)))
  assert not np.allclose(again.predict_for(young, items),
                         again.predict_for(old, items))
  rated = again.fold_in([(items[0], 5.0)], features={"age": 18}, steps=20)
  assert len(again.recommend(rated, k=3)) == 3


def test_side_nn_needs_features(side_data):
  d, _ = side_data
  import dataclasses
  bare = dataclasses.replace(d, side=None)
  with pytest.raises(UserError, match="side features"):
    sweep.Replica(model="side_nn").create_model(bare)
