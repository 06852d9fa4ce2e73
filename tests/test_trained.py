"""Using a trained model: save/load/export, predictions, recommendations,
neighbours, biases, PCA, folding in new users, ranking metrics, inspect."""

import json
import re
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcf import datasets, ranking, sweep, trained, training
from jaxcf.errors import UserError
from tests.conftest import write_movielens


def train_tiny(folder, epochs: int, item_name: str = "title"):
  """(model, data, fit result): a dot_bias trained on a tiny MovieLens."""
  folder = write_movielens(folder / "ml-100k", n_users=40, n_items=30,
                           density=0.6)
  data = datasets.load(datasets.Source(data_dir=str(folder)), seed=0,
                       item_name=item_name, log=None)
  replica = sweep.Replica(n_factors=4, lr=3e-2, wd=0.01)
  result = training.fit(replica.create_model(data), data,
                        training.TrainConfig(epochs=epochs, batch_size=16,
                                             lr=3e-2, wd=0.01), log=None)
  model = trained.TrainedModel.from_training(
      replica, result.state.params, result.state.model_state, data)
  return model, data, result


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """A dot_bias trained on the tiny MovieLens, and its data."""
  return train_tiny(tmp_path_factory.mktemp("ml"), epochs=8)


def test_predict_matches_the_training_state(tiny):
  model, data, result = tiny
  users, items = np.asarray(data.valid.users), np.asarray(data.valid.items)
  ids = data.users.decode(users)
  titles = data.items.decode(items)
  trained_rows = model.user_trained[users] & (model.item_counts[items] > 0)
  got = model.predict(ids[trained_rows], titles[trained_rows])
  want = training.predict_all(result.state, jnp.asarray(users[trained_rows]),
                              jnp.asarray(items[trained_rows]))
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_items_by_title_or_id(tiny):
  model, _, _ = tiny
  # Items 1 and 2 share the title "Twin (1995)"; either id finds it.
  assert model.item_index(1) == model.item_index("Twin (1995)")
  assert model.item_index(2) == model.item_index("Twin (1995)")
  assert model.user_index("5") == model.user_index(5)


def test_ids_and_titles_side_by_side(tiny, tmp_path):
  """A title-keyed model (the book's) gives each row's item id(s) beside
  the title; an id-keyed one gives titles beside ids and takes a title
  wherever an id goes, refusing one that names several items."""
  model, _, _ = tiny
  table = model.recommend(model.users.decode([3])[0], k=30,
                          exclude_seen=False)
  assert list(table.columns) == ["item_id", "item", "score"]
  by_title = dict(zip(table["item"], table["item_id"]))
  assert by_title.get("Twin (1995)", (1, 2)) == (1, 2)  # two ids, one title
  assert by_title["Café Olé (1997)"] == 3
  by_id, _, _ = train_tiny(tmp_path, epochs=2, item_name="movie")
  table = by_id.recommend(by_id.users.decode([3])[0], k=5)
  assert list(table.columns) == ["item", "title", "score"]
  assert by_id.item_index("Café Olé (1997)") == by_id.item_index(3)
  with pytest.raises(UserError, match=r"title 'Twin \(1995\)' names 2 items "
                     r"\(ids 1, 2\); pass the id"):
    by_id.item_index("Twin (1995)")


def test_unknown_and_validation_only_ids_are_refused(tiny):
  model, _, _ = tiny
  with pytest.raises(UserError, match="user 999 is not in the data"):
    model.recommend(999)
  with pytest.raises(UserError, match="'Nope' is not in the data"):
    model.similar_items("Nope")
  model.user_trained[7] = False  # as if user 7 rated only validation rows
  try:
    with pytest.raises(UserError, match="only in the validation split"):
      model.recommend(model.users.decode([7])[0])
  finally:
    model.user_trained[7] = True


def test_recommend_excludes_seen_and_is_sorted(tiny):
  model, _, _ = tiny
  user = model.users.decode([3])[0]
  recs = model.recommend(user, k=5)
  assert list(recs.columns) == ["item_id", "item", "score"] and len(recs) == 5
  assert list(recs["score"]) == sorted(recs["score"], reverse=True)
  seen = set(model.items.decode(model._seen[3]))  # pylint: disable=protected-access
  assert not seen & set(recs["item"])
  everything = model.recommend(user, k=len(model.items), exclude_seen=False)
  assert seen <= set(everything["item"])
  # Scores are the model's predictions for those pairs.
  np.testing.assert_allclose(recs["score"],
                             model.predict([user] * 5, recs["item"]),
                             rtol=1e-5)


def test_recommend_many_equals_one_by_one(tiny):
  model, _, _ = tiny
  users = list(model.users.decode([1, 2, 3]))
  many = model.recommend_many(users, k=4)
  assert list(many.columns) == ["user", "rank", "item_id", "item", "score"]
  for u in users:
    one = model.recommend(u, k=4)
    part = many[many["user"] == u]
    assert list(part["item"]) == list(one["item"])
    np.testing.assert_allclose(part["score"], one["score"], rtol=1e-6)


def test_similar_items_respects_the_popularity_floor(tiny):
  model, _, _ = tiny
  sims = model.similar_items("Twin (1995)", k=5, min_ratings=15)
  assert (sims["n_ratings"] >= 15).all()
  assert "Twin (1995)" not in set(sims["item"])
  assert list(sims["similarity"]) == sorted(sims["similarity"], reverse=True)
  assert (sims["similarity"] <= 1 + 1e-6).all()


def test_biases_factors_and_pca(tiny):
  model, _, _ = tiny
  biases = model.biases()
  assert list(biases["bias"]) == sorted(biases["bias"])
  assert "#na#" not in set(biases["item"])
  assert model.factors().shape == (len(model.items) - 1, 4)
  pca = model.pca(n=3, top=20)
  assert len(pca) == 20 and {"pc1", "pc2", "pc3"} <= set(pca.columns)
  # Principal components are uncorrelated and ordered by variance.
  cov = np.cov(pca[["pc1", "pc2", "pc3"]].to_numpy().T)
  assert abs(cov[0, 1]) < 1e-6 * cov[0, 0]
  assert cov[0, 0] >= cov[1, 1] >= cov[2, 2]


def test_fold_in_recovers_a_users_factors(tiny):
  """Folding in a trained user's own training ratings lands near them."""
  model, data, _ = tiny
  row = 5
  rows = np.asarray(data.train.users) == row
  items = model.items.decode(np.asarray(data.train.items)[rows])
  ratings = np.asarray(data.train.ratings)[rows]
  folded = model.fold_in(list(zip(items, ratings)), l2=1e-3)
  user = model.users.decode([row])[0]
  own = model.predict([user] * len(items), items)
  everyone = model.recommend(folded, k=len(model.items),
                             exclude_seen=False)
  by_item = dict(zip(everyone["item"], everyone["score"]))
  refit = np.array([by_item[i] for i in items])
  # The refit predicts the user's ratings about as well as training did.
  assert np.mean((refit - ratings)**2) <= np.mean((own - ratings)**2) + 0.05
  assert set(folded.seen) == set(np.asarray(data.train.items)[rows])


def test_fold_in_without_ratings_follows_item_biases(tiny):
  model, _, _ = tiny
  nobody = model.fold_in({})
  recs = model.recommend(nobody, k=3)
  mean_user = model.fold_in([])
  np.testing.assert_allclose(mean_user.rows[0]["user_bias"],
                             nobody.rows[0]["user_bias"])
  assert len(recs) == 3


def test_fold_in_for_an_nn_model(tiny):
  _, data, _ = tiny
  replica = sweep.Replica(model="embedding_nn", layers=(8,), lr=1e-2)
  result = training.fit(replica.create_model(data), data,
                        training.TrainConfig(epochs=3, batch_size=16,
                                             lr=1e-2), log=None)
  model = trained.TrainedModel.from_training(
      replica, result.state.params, result.state.model_state, data)
  rated = [(model.items.decode([i])[0], r) for i, r in ((1, 5.0), (3, 1.0))]
  folded = model.fold_in(rated, steps=50)
  assert folded.rows[0]["user_factors"].shape == (
      model.state.params["user_factors"]["embedding"].shape[1],)
  assert len(model.recommend(folded, k=3)) == 3


def test_save_load_export_round_trip(tiny, tmp_path):
  model, _, _ = tiny
  model.save(str(tmp_path / "run" / "model"))
  again = trained.load(str(tmp_path / "run"))
  user = model.users.decode([2])[0]
  assert again.recommend(user).equals(model.recommend(user))
  assert again.spec == model.spec and again.item_key == model.item_key
  np.testing.assert_array_equal(again.item_counts, model.item_counts)
  model.export_npz(str(tmp_path / "m.npz"))
  npz = np.load(tmp_path / "m.npz", allow_pickle=False)
  np.testing.assert_array_equal(
      npz["params/item_bias/embedding"],
      model.state.params["item_bias"]["embedding"])
  assert list(npz["items"]) == [str(v) for v in model.items.classes]
  assert json.loads(str(npz["meta"]))["spec"]["model"] == "dot_bias"


def test_load_refuses_what_is_not_a_model(tmp_path):
  with pytest.raises(UserError, match="no saved model"):
    trained.load(str(tmp_path / "missing"))
  (tmp_path / "junk").mkdir()
  (tmp_path / "junk" / "file.txt").write_text("hello")
  with pytest.raises(UserError, match="cannot be read: it is damaged or not a jaxcf"):
    trained.load(str(tmp_path / "junk"))
  from jaxcf import checkpoint
  checkpoint.save(str(tmp_path / "other"), {"x": jnp.ones(2)},
                  {"format": "something-else"})
  with pytest.raises(UserError, match="not a jaxcf model"):
    trained.load(str(tmp_path / "other"))


# Ranking metrics ------------------------------------------------------------

def _reference_metrics(scores, seen, relevant, k):
  out = {"precision": [], "recall": [], "ndcg": []}
  for s, excl, rel in zip(scores, seen, relevant):
    if not rel.any():
      continue
    order = [i for i in np.argsort(-s, kind="stable") if not excl[i]][:k]
    hits = rel[order]
    dcg = sum(h / np.log2(r + 2) for r, h in enumerate(hits))
    idcg = sum(1 / np.log2(r + 2) for r in range(min(k, rel.sum())))
    out["precision"].append(hits.sum() / k)
    out["recall"].append(hits.sum() / rel.sum())
    out["ndcg"].append(dcg / idcg)
  return {name: np.mean(v) for name, v in out.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_topk_metrics_match_a_reference(seed):
  rng = np.random.default_rng(seed)
  scores = rng.normal(size=(30, 50)).astype(np.float32)
  seen = rng.random((30, 50)) < 0.3
  relevant = (rng.random((30, 50)) < 0.15) & ~seen
  relevant[0] = False  # a user with nothing relevant is skipped
  got = ranking.topk_metrics(jnp.asarray(scores), jnp.asarray(seen),
                             jnp.asarray(relevant), k=5)
  want = _reference_metrics(scores, seen, relevant, 5)
  for name in ("precision", "recall", "ndcg"):
    assert float(got[name]) == pytest.approx(want[name], rel=1e-5)
  assert int(got["users"]) == int(relevant.any(axis=1).sum())


def test_perfect_scores_give_perfect_ranking():
  relevant = np.zeros((4, 20), bool)
  relevant[:, :3] = True
  scores = np.where(relevant, 5.0, 1.0).astype(np.float32)
  got = ranking.topk_metrics(jnp.asarray(scores),
                             jnp.zeros((4, 20), bool), jnp.asarray(relevant),
                             k=3)
  assert float(got["precision"]) == float(got["recall"]) == 1.0
  assert float(got["ndcg"]) == pytest.approx(1.0)


def test_model_ranking_metrics(tiny):
  model, _, _ = tiny
  got = model.ranking_metrics(k=5)
  assert 0 <= got["precision@5"] <= 1 and 0 <= got["ndcg@5"] <= 1
  assert got["ranked_users"] > 0


# The inspect CLI --------------------------------------------------------------

def test_inspect_cli(tiny_ml, tmp_path, capsys):
  from jaxcf import inspect
  from tests.conftest import train_cli
  workdir = tmp_path / "run"
  assert train_cli(f"--data_dir={tiny_ml}", "--epochs=2", "--bs=16",
                   f"--workdir={workdir}") == 0
  capsys.readouterr()
  assert inspect.main([f"--workdir={workdir}", "--user=3",
                       "--item=Twin (1995)", "--rate=Twin (1995)=5", "--k=3",
                       "--min_ratings=1"]) == 0
  out = capsys.readouterr().out
  for heading in ("lowest item biases", "highest item biases",
                  "top 3 for user 3", "items most like Twin (1995)",
                  "top 3 for a new user who rated 1 item(s)"):
    assert heading in out
  assert inspect.main([f"--workdir={workdir}", "--user=12345"]) == 2
  err = capsys.readouterr().err
  assert "Traceback" not in err
  assert "user '12345' is not in the data" in err
  assert inspect.main([f"--workdir={workdir}", "--rate=oops"]) == 2


# The book's biases on the real MovieLens ---------------------------------------

def test_book_biases_on_movielens(ml100k):
  data = datasets.load(datasets.Source(data_dir=str(ml100k)), log=None)
  replica = sweep.Replica()
  result = training.fit(replica.create_model(data), data,
                        training.TrainConfig(), log=None)
  model = trained.TrainedModel.from_training(
      replica, result.state.params, result.state.model_state, data)
  biases = model.biases()
  lowest = " | ".join(biases.head(15)["item"])
  highest = " | ".join(biases.tail(15)["item"])
  for title in ("Lawnmower Man 2", "Children of the Corn: The Gathering"):
    assert title in lowest
  for title in ("Titanic", "Schindler's List", "Shawshank Redemption"):
    assert title in highest
  # The blocked ranking program (one matmul per block of users) gives the
  # dense computation's numbers, to the bit.
  dense = _dense_ranking(lambda u: ranking.score_matrix(result.state, u,
                                                        data.n_items),
                         data.train, data.valid, data.n_items)
  assert model.ranking_metrics() == dense


def test_bfloat16_model_trains_saves_loads_and_exports(tiny, tmp_path):
  _, data, _ = tiny
  replica = sweep.Replica(n_factors=4, lr=3e-2, wd=0.01,
                          param_dtype="bfloat16", compute_dtype="bfloat16")
  result = training.fit(replica.create_model(data), data,
                        training.TrainConfig(epochs=8, batch_size=16,
                                             lr=3e-2, wd=0.01), log=None)
  losses = [h["valid_loss"] for h in result.history]
  assert np.isfinite(losses).all() and losses[-1] < losses[0]
  model = trained.TrainedModel.from_training(
      replica, result.state.params, result.state.model_state, data)
  assert model.spec["param_dtype"] == "bfloat16"
  model.save(str(tmp_path / "run" / "model"))
  again = trained.load(str(tmp_path / "run"))
  assert again.state.params["user_factors"]["embedding"].dtype == jnp.bfloat16
  users = model.users.decode(np.asarray(data.valid.users))
  items = model.items.decode(np.asarray(data.valid.items))
  np.testing.assert_array_equal(again.predict(users, items),
                                model.predict(users, items))
  # Everything a user calls works on bfloat16 weights, in float32.
  user, item = model.users.decode([2])[0], model.items.decode([3])[0]
  assert model.biases("item")["bias"].dtype == np.float32
  assert len(model.similar_items(item, k=3, min_ratings=1)) == 3
  assert len(model.recommend(user, k=3)) == 3
  assert model.pca(n=2, top=10).shape[1] >= 2
  folded = model.fold_in({item: 5.0, model.items.decode([4])[0]: 1.0})
  assert np.isfinite(model.predict_for(folded, [item])).all()
  model.export_npz(str(tmp_path / "m.npz"))
  npz = np.load(tmp_path / "m.npz", allow_pickle=False)
  table = npz["params/user_factors/embedding"]
  assert table.dtype == np.float32
  np.testing.assert_array_equal(
      table, np.asarray(model.state.params["user_factors"]["embedding"],
                        np.float32))


def test_models_saved_in_the_first_format_still_load(tiny, tmp_path):
  """jaxcf-model-1 (one model, its spec at the top level) reads as a
  one-member model."""
  from jaxcf import checkpoint
  model, _, _ = tiny
  plain = lambda a: [v.item() if hasattr(v, "item") else v for v in a]
  triples = lambda r: {"users": r.users, "items": r.items,
                       "ratings": r.ratings}
  spec = {"model": "dot_bias", "n_factors": 4, "y_range": [0.0, 5.5],
          "layers": None, "param_dtype": "float32",
          "compute_dtype": "float32"}
  checkpoint.save(str(tmp_path / "old"), {
      "params": model.state.params, "model_state": model.state.model_state,
      "train": triples(model.train), "valid": triples(model.valid)}, {
          "format": "jaxcf-model-1", "spec": spec, "item_key": "title",
          "users": plain(model.users.classes),
          "items": plain(model.items.classes),
          "titles": plain(model.titles), "item_ids": [[], []],
          "side_vocab": None, "info": {}})
  old = trained.load(str(tmp_path / "old"))
  assert old.specs[0].n_factors == 4 and len(old.specs) == 1
  user = model.users.decode([2])[0]
  # (the first format kept no item ids, so no item_id column)
  assert old.recommend(user).equals(
      model.recommend(user).drop(columns="item_id"))


def _mask(rows, items, n_rows, n_items):
  mask = np.zeros((n_rows, n_items), bool)
  mask[rows, items] = True
  return mask


def _dense_ranking(scores, train, valid, n_items, k=10, threshold=4.0):
  """The ranking as it was computed before it ran in blocks: dense seen and
  relevant masks for every ranked user, then `topk_metrics`."""
  train = [np.asarray(x) for x in train[:3]]
  valid = [np.asarray(x) for x in valid[:3]]
  users = np.unique(valid[0][valid[2] >= threshold])
  row = np.full(int(max(train[0].max(), valid[0].max())) + 1, -1)
  row[users] = np.arange(len(users))
  keep = row[train[0]] >= 0
  seen = _mask(row[train[0][keep]], train[1][keep], len(users), n_items)
  seen[:, 0] = True
  good = (valid[2] >= threshold) & (row[valid[0]] >= 0)
  relevant = _mask(row[valid[0][good]], valid[1][good], len(users),
                   n_items) & ~seen
  out = ranking.topk_metrics(jnp.asarray(scores(users)), jnp.asarray(seen),
                             jnp.asarray(relevant), k=k)
  return {f"{n}@{k}" if n != "users" else "ranked_users": float(v)
          for n, v in out.items()}


@pytest.mark.parametrize("block", [None, 1, 7])
def test_blocked_ranking_equals_the_dense_one(block):
  """Random scores, repeated and seen-and-relevant pairs: the blocked
  program gives the dense computation's metrics, for any block size."""
  from jaxcf.data import Ratings
  rng = np.random.default_rng(3)
  table = rng.normal(size=(60, 40)).astype(np.float32)
  def pairs(n):
    return Ratings(jnp.asarray(rng.integers(1, 60, n), jnp.int32),
                   jnp.asarray(rng.integers(0, 40, n), jnp.int32),
                   jnp.asarray(rng.integers(1, 6, n), jnp.float32))
  train, valid = pairs(900), pairs(400)
  scores = lambda users: jnp.asarray(table[np.asarray(users)])
  got = ranking.evaluate_ranking(scores, train, valid, 40, k=5, block=block)
  want = _dense_ranking(scores, train, valid, 40, k=5)
  assert got["ranked_users"] == want["ranked_users"] > 0
  for name in ("precision@5", "recall@5", "ndcg@5"):
    assert got[name] == pytest.approx(want[name], rel=1e-6)


def test_the_api_checks_what_it_is_given(tiny):
  """A str is one id, k and n must make sense, fold-in ratings must be
  finite numbers in the model's range; k beyond the candidates gives fewer
  rows, never '#na#' or seen items."""
  model, _, _ = tiny
  user = model.users.decode([3])[0]
  items = list(model.items.decode([1, 3, 4]))
  one = model.predict(str(user), items)  # one user (its id as text)
  np.testing.assert_allclose(one, model.predict([user] * 3, items))
  folded = model.fold_in({items[0]: 4.0})
  np.testing.assert_allclose(model.predict(folded, items),
                             model.predict_for(folded, items))
  everything = model.recommend(user, k=10_000)
  seen = set(model.items.decode(model._seen[3]))  # pylint: disable=protected-access
  assert "#na#" not in set(everything["item"])
  assert not seen & set(everything["item"])
  assert np.isfinite(everything["score"]).all()
  assert len(everything) == (model.item_counts[1:] > 0).sum() - len(seen)
  many = model.recommend_many([user], k=10_000)
  assert list(many["item"]) == list(everything["item"])
  for call, message in (
      (lambda: model.recommend(user, k=-1), "k=-1 must be a positive"),
      (lambda: model.recommend(user, k=0), "k=0 must be a positive"),
      (lambda: model.ranking_metrics(k=0), "k=0 must be a positive"),
      (lambda: model.similar_items(items[0], k=0), "k=0"),
      (lambda: model.pca(n=100), "pca(n=100): the item factors have 4"),
      (lambda: model.fold_in({items[0]: float("nan")}), "finite number"),
      (lambda: model.fold_in({items[0]: "five"}), "not a number"),
      (lambda: model.fold_in({items[0]: 9.0}), "outside the model's range"),
  ):
    with pytest.raises(UserError, match=re.escape(message)):
      call()
