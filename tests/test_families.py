"""One table over every registered model family: what its `Family` record
declares holds, end to end (build, train, save, load, predict, recommend,
fold in, row-wise optimisers, sweep grouping).

A new family in jaxcf/models/ is in this table the moment it registers.
"""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcf import (datasets, features, keys, loop, models, sweep, trained,
                   training)
from jaxcf.models import tableinit
from jaxcf.errors import UserError
from tests.conftest import write_movielens

FAMILIES = list(models.FAMILIES)
# fastai's parameter counts on the book's data (944 users, 1665 titles).
FASTAI_COUNTS = {"dot_bias": 133_059, "collab_nn": 257_487,
                 "embedding_nn": 262_637}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  folder = write_movielens(tmp_path_factory.mktemp("ml") / "ml-100k",
                           n_users=30, n_items=20, density=0.7)
  d = datasets.load(datasets.Source(data_dir=str(folder)), seed=0, log=None)
  return features.attach(d, features.movielens(d, folder))


def replica(name: str, **changes) -> sweep.Replica:
  base = dict(model=name, n_factors=4, layers=(8,), lr=2e-2, wd=0.01)
  if name == "autorec":
    base.update(layers=(16,), lr=1e-2, wd=1.0)
  if name == "bpmf":
    base.update(samples=8)
  return sweep.Replica(**{**base, **changes}).normalised()


@pytest.fixture(scope="module")
def trained_models(tiny):
  """Every family trained a little (through the sweep machinery, which
  dispatches to its trainer), as a TrainedModel."""
  out = {}
  for name in FAMILIES:
    rep = replica(name)
    full = rep.family.trainer != "batches"  # AutoRec, BPMF: 30 (sweeps)
    config = training.TrainConfig(epochs=30 if full else 3, batch_size=16,
                                  eval_every=10, burn_in=10)
    [result] = sweep.train_sweep([rep], tiny, config, log=None).results
    out[name] = (result, trained.TrainedModel.from_training(
        rep, result.params, result.model_state, tiny))
  return out


@pytest.mark.parametrize("name", FAMILIES)
def test_builds_and_predicts_a_batch(name, tiny):
  rep = replica(name)
  model = rep.create_model(tiny)
  assert models.family_of(model).name == name
  dummy = jnp.zeros((1,), jnp.int32)
  variables = model.init(jax.random.key(0), dummy, dummy)
  leaves = jax.tree.leaves(variables["params"])
  assert models.count_params(model) == sum(x.size for x in leaves) > 0
  users = jnp.arange(1, 9, dtype=jnp.int32)
  out = model.apply(variables, users, users[::-1], train=False)
  assert out.shape == (8,) and out.dtype == jnp.float32
  assert bool(jnp.isfinite(out).all())
  for table, side in rep.family.tables.items():
    rows = variables["params"][table]["embedding"].shape[0]
    assert rows == (tiny.n_users if side == "users" else tiny.n_items)


@pytest.mark.parametrize("name", sorted(FASTAI_COUNTS))
def test_parameter_counts_equal_fastai(name):
  assert models.count_params(models.create(name, 944, 1665)) == (
      FASTAI_COUNTS[name])


@pytest.mark.parametrize("name", FAMILIES)
def test_trains_saves_loads_and_recommends(name, trained_models, tiny,
                                           tmp_path):
  result, model = trained_models[name]
  first, last = result.history[0], result.history[-1]
  assert np.isfinite(last["valid_loss"])
  assert last["train_loss"] < first["train_loss"]
  model.save(str(tmp_path / "m"))
  again = trained.load(str(tmp_path / "m"))
  assert again.specs == model.specs
  users = model.users.decode(np.asarray(tiny.valid.users))
  items = model.items.decode(np.asarray(tiny.valid.items))
  keep = (model.user_trained[np.asarray(tiny.valid.users)]
          & (model.item_counts[np.asarray(tiny.valid.items)] > 0))
  preds = again.predict(users[keep], items[keep])
  np.testing.assert_allclose(preds, result.predictions[keep], rtol=1e-5,
                             atol=1e-5)
  user = users[0]
  recs = again.recommend(user, k=4)
  assert len(recs) == 4
  assert list(recs["score"]) == sorted(recs["score"], reverse=True)
  seen = set(again.items.decode(again._seen[again.user_index(user)]))  # pylint: disable=protected-access
  assert not seen & set(recs["item"])
  np.testing.assert_allclose(recs["score"],
                             again.predict([user] * 4, recs["item"]),
                             rtol=1e-5, atol=1e-5)
  metrics = again.ranking_metrics(k=3)
  assert 0 <= metrics["ndcg@3"] <= 1


@pytest.mark.parametrize("name", FAMILIES)
def test_fold_in_as_declared(name, trained_models, tiny):
  """A folded-in user's own training ratings are predicted about as well
  as the trained user's; a family that cannot fold in says so."""
  _, model = trained_models[name]
  row = int(np.argmax(np.bincount(np.asarray(tiny.train.users))))
  mine = np.asarray(tiny.train.users) == row
  items = model.items.decode(np.asarray(tiny.train.items)[mine])
  ratings = np.asarray(tiny.train.ratings)[mine]
  if model.specs[0].family.fold_in is None:
    with pytest.raises(UserError, match="cannot fold in"):
      model.fold_in(list(zip(items, ratings)))
    return
  folded = model.fold_in(list(zip(items, ratings)), l2=1e-2, steps=300)
  refit = model.predict_for(folded, items)
  own = model.predict([model.users.decode([row])[0]] * len(items), items)
  nobody = model.predict_for(model.fold_in({}), items)
  err = lambda p: float(np.mean((p - ratings)**2))
  assert err(refit) < err(nobody)
  assert err(refit) <= err(own) + 0.1


@pytest.mark.parametrize("name", FAMILIES)
def test_row_wise_optimizers_as_declared(name, tiny):
  rep = replica(name)
  model = rep.create_model(tiny)
  config = training.TrainConfig(optimizer="lazy_adamw", lr=1e-2)
  if rep.family.trainer != "batches":
    return  # full-batch families have their own optimiser
  if rep.family.resize is None:
    with pytest.raises(UserError, match=f"not {name}"):
      training.make_optimizer(model, config, 10)
    return
  tx = training.make_optimizer(model, config, 10)
  state = training.create_train_state(model, tx, jax.random.key(0),
                                      training.model_constants(model, tiny))
  batch = tiny.train.take(jnp.arange(8))
  new, _ = jax.jit(training.train_step)(state, batch)
  touched = {"users": np.unique(np.asarray(batch.users)),
             "items": np.unique(np.asarray(batch.items))}
  for table, side in rep.family.tables.items():
    old = np.asarray(state.params[table]["embedding"])
    got = np.asarray(new.params[table]["embedding"])
    rest = np.setdiff1d(np.arange(len(old)), touched[side])
    np.testing.assert_array_equal(got[rest], old[rest])
    assert not np.allclose(got[touched[side]], old[touched[side]])


@pytest.mark.parametrize("name", FAMILIES)
def test_initialisation_compiled_for_one_run_is_bit_exact(name, tiny):
  """fit compiles its initialisation with loop.RUN_ONCE (no LLVM
  optimisation) and the keys it derives drawn on the host: the state must
  equal the fully optimised program's deriving them itself, and its tables
  those of the module's own init."""
  rep = replica(name)
  if rep.family.trainer != "batches":
    pytest.skip("full-batch families initialise in their own trainers")
  model = rep.create_model(tiny)
  tx = training.make_optimizer(model, training.TrainConfig(), 10)
  key, constants = jax.random.key(3), training.model_constants(model, tiny)
  program = jax.jit(training.create_train_state, static_argnums=(0, 1))
  want = program(model, tx, key, constants)
  derived = (tableinit.host_keys(model, key), keys.fold_key(key, 1))
  assert derived[0] is not None  # each of these families has fastai tables
  got = loop.Compiling(program.lower(  # as fit lowers it
      model, tx, jax.eval_shape(jax.random.key, 0), constants, *derived),
                       loop.RUN_ONCE).result()(key, constants, *derived)
  chex.assert_trees_all_equal(jax.tree.leaves(got), jax.tree.leaves(want))
  # create_train_state draws the fastai tables all at once
  # (models.tableinit): the module's own init draws them one by one.
  dummy = jnp.zeros((1,), jnp.int32)
  chex.assert_trees_all_equal(
      got.params, jax.jit(model.init)(key, dummy, dummy)["params"])


@pytest.mark.parametrize("name", FAMILIES)
def test_sweep_groups_by_what_is_compiled(name):
  family = models.get(name)
  base = replica(name)
  for setting in family.settings:
    other = {"n_factors": 6, "layers": (12,), "y_range": (0.5, 5.0),
             "id_dropout": 0.25, "input_dropout": 0.25, "by": "user",
             "param_dtype": "bfloat16", "compute_dtype": "bfloat16",
             "samples": 4, "implicit": True, "side_prior": True}[setting]
    changed = dataclasses.replace(base, **{setting: other}).normalised()
    assert changed != base
    same = changed.group_key() == base.group_key()
    assert same == (setting in family.in_state), setting
  unread = [s for s in models.registry.CHECKS if s not in family.settings]
  for setting in unread:
    values = {"n_factors": [4, 8], "layers": [(4,), (8,)],
              "y_range": [(0.0, 5.0), (1.0, 5.0)], "id_dropout": [0.0, 0.5],
              "input_dropout": [0.0, 0.5], "by": ["item", "user"],
              "param_dtype": ["float32", "bfloat16"],
              "compute_dtype": ["float32", "bfloat16"],
              "samples": [4, 8], "implicit": [False, True],
              "side_prior": [False, True]}[setting]
    with pytest.raises(UserError, match=f"--{setting} does not apply"):
      sweep.grid(model=[name], **{setting: values})
  # With a family that reads it, the list is kept and this one collapses.
  reader = next((f for f in models.FAMILIES.values() if f is not family
                 and "n_factors" in f.settings), None)
  if "n_factors" not in family.settings and reader:
    grid = sweep.grid(model=[reader.name, name], n_factors=[4, 8])
    assert len(grid) == 3


@pytest.mark.parametrize("name", FAMILIES)
def test_all_item_scores_equal_predictions(name, trained_models, tiny):
  """A family's cheap all-items scores (where it declares them) are its
  predictions of every (user, item) pair."""
  _, model = trained_models[name]
  from jaxcf import ranking
  users = np.array([1, 4, 9], np.int32)
  fast = ranking.scorer(model.states, tiny.n_items)(users)
  pairwise = ranking.score_matrix(model.state, users, tiny.n_items)
  np.testing.assert_allclose(fast, pairwise, rtol=1e-5, atol=1e-5)
