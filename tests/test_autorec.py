"""AutoRec: the rating matrix, learning, vmapped replicas equal solo runs,
and its predictions as a model (`models.autorec.AutoRec`)."""

import dataclasses
import re

import jax.numpy as jnp
import numpy as np
import pytest

from jaxcf import steps, sweep, synthetic, training
from jaxcf.data import Ratings
from jaxcf.errors import UserError
from jaxcf.models import autorec

BASE = sweep.Replica(model="autorec", layers=(32,), wd=1.0, lr=1e-2, seed=0)


def train(data, replicas, epochs, eval_every):
  config = training.TrainConfig(epochs=epochs, eval_every=eval_every)
  return sweep.train_sweep(replicas, data, config, log=None).results


@pytest.fixture(scope="module")
def low_rank():
  return synthetic.generate(60, 40, 1500, rank=3, noise=0.1, valid_pct=0.2,
                            log=None)


def test_rating_matrix_places_each_rating_and_its_mask():
  ratings = Ratings(jnp.asarray([1, 2, 2, 3]), jnp.asarray([4, 1, 4, 2]),
                    jnp.asarray([5.0, 3.0, 1.0, 4.5]))
  r, m = autorec.rating_matrix(ratings, n_users=5, n_items=6)
  want = np.zeros((6, 5), np.float32)
  want[[4, 1, 4, 2], [1, 2, 2, 3]] = [5.0, 3.0, 1.0, 4.5]
  np.testing.assert_array_equal(r, want)
  np.testing.assert_array_equal(m, want != 0)
  r_user, m_user = autorec.rating_matrix(ratings, 5, 6, by="user")
  np.testing.assert_array_equal(r_user, want.T)
  np.testing.assert_array_equal(m_user, m.T)


def test_rating_matrix_refuses_a_matrix_too_large(monkeypatch):
  monkeypatch.setattr(autorec, "MAX_MATRIX_BYTES", 1000)
  ratings = Ratings(jnp.asarray([1]), jnp.asarray([1]), jnp.asarray([3.0]))
  with pytest.raises(UserError, match="dense 20 x 10 rating matrix"):
    autorec.rating_matrix(ratings, n_users=10, n_items=20)
  with pytest.raises(UserError, match="by='rows'"):
    autorec.rating_matrix(ratings, 2, 2, by="rows")


def test_training_learns_the_low_rank_ratings(low_rank):
  baseline = float(jnp.mean((low_rank.valid.ratings -
                             jnp.mean(low_rank.train.ratings))**2))
  for by in ("item", "user"):
    [result] = train(low_rank, [dataclasses.replace(BASE, by=by)], 300, 100)
    losses = [h["valid_loss"] for h in result.history]
    assert [h["epoch"] for h in result.history] == [99, 199, 299]
    assert losses[-1] < 0.6 * baseline, (by, losses, baseline)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_predictions_decode_the_training_column(low_rank):
  """The prediction for (u, i) is the reconstruction of item i's training
  column at u, clipped to the training ratings' range; the trained
  replica's variables predict the same as a model."""
  [result] = train(low_rank, [BASE], 50, 50)
  r, _ = autorec.rating_matrix(low_rank.train, low_rank.n_users,
                               low_rank.n_items)
  module = BASE.create_model(low_rank)
  variables = {"params": result.params, **result.model_state}
  out = module.apply(variables, r, method=autorec.AutoRec.reconstruct)
  v = low_rank.valid
  want = np.clip(np.asarray(out)[np.asarray(v.items), np.asarray(v.users)],
                 float(low_rank.train.ratings.min()),
                 float(low_rank.train.ratings.max()))
  np.testing.assert_allclose(result.predictions, want, rtol=1e-5, atol=1e-5)
  mse = float(np.mean((want - np.asarray(v.ratings))**2))
  assert result.valid_loss == pytest.approx(mse, rel=1e-5)
  state = steps.TrainState(step=jnp.zeros([]), params=result.params,
                           model_state=result.model_state, opt_state=None,
                           rng=None, model=module, tx=None)
  np.testing.assert_allclose(steps.predict_all(state, v.users, v.items),
                             want, rtol=1e-5, atol=1e-5)
  scores = module.apply(variables, jnp.asarray([3, 7]),
                        method=autorec.AutoRec.score_all)
  np.testing.assert_allclose(
      scores, np.clip(np.asarray(out)[:, [3, 7]].T, *want_range(low_rank)),
      rtol=1e-5, atol=1e-5)


def want_range(d):
  return float(d.train.ratings.min()), float(d.train.ratings.max())


def test_each_replica_equals_its_solo_run(low_rank):
  replicas = [dataclasses.replace(BASE, seed=1),
              dataclasses.replace(BASE, wd=10.0, lr=3e-3, input_dropout=0.3),
              dataclasses.replace(BASE, layers=(16, 16), seed=2),
              dataclasses.replace(BASE, by="user")]
  together = train(low_rank, replicas, 40, 20)
  losses = [r.valid_loss for r in together]
  assert len(set(losses)) == len(losses)  # the settings do matter
  for replica, result in zip(replicas, together):
    [alone] = train(low_rank, [replica], 40, 20)
    assert result.replica == replica
    np.testing.assert_allclose(result.predictions, alone.predictions,
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("change, message", [
    ({"layers": ()}, "--layers= must be positive integer widths"),
    ({"layers": (8, 0)}, "positive integer widths"),
    ({"input_dropout": 1.0}, "--input_dropout=1.0 must be in [0, 1)"),
    ({"wd": -1.0}, "--wd=-1.0 must be a number >= 0"),
    ({"lr": 0.0}, "--lr=0.0 must be a positive number"),
    ({"by": "rows"}, "--by=rows must be one of item, user"),
])
def test_bad_settings_are_refused(change, message):
  with pytest.raises(UserError, match=re.escape(message)):
    dataclasses.replace(BASE, **change)
