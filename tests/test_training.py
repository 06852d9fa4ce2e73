"""The train step, the scanned epoch, evaluation, and `fit` end to end."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcf import datasets, loop, models, optim, sections, steps, training
from jaxcf.data import Ratings
from jaxcf.errors import UserError


def _state(name="dot_bias", n_users=12, n_items=9, total=20, seed=0):
  model = models.create(name, n_users, n_items, n_factors=4)
  tx = optim.one_cycle_adamw(1e-2, 0.1, total)
  return training.create_train_state(model, tx, jax.random.key(seed))


def _ratings(n, n_users=12, n_items=9, seed=0):
  rng = np.random.default_rng(seed)
  return Ratings(jnp.asarray(rng.integers(1, n_users, n), jnp.int32),
                 jnp.asarray(rng.integers(1, n_items, n), jnp.int32),
                 jnp.asarray(rng.integers(1, 6, n), jnp.float32))


def test_epoch_batches_shuffle_every_row_once():
  key = jax.random.key(3)
  b = training.epoch_batches(key, 0, 103, 10)
  assert b.shape == (10, 10) and b.dtype == np.int32
  assert len(set(b.ravel())) == 100  # a permutation, last 3 rows dropped
  np.testing.assert_array_equal(b, training.epoch_batches(key, 0, 103, 10))
  assert not np.array_equal(b, training.epoch_batches(key, 1, 103, 10))


def test_epoch_batches_with_replacement():
  b = training.epoch_batches(jax.random.key(0), 0, 10_000, 100,
                             "replacement")
  distinct = len(set(b.ravel())) / 10_000
  assert 0.60 < distinct < 0.66  # 1 - 1/e of the rows, as fastai 2.8 draws


@pytest.mark.parametrize("name", ["dot_bias", "embedding_nn"])
def test_scanned_epoch_equals_a_python_loop_of_steps(name):
  data_ = _ratings(64)
  batches = training.epoch_batches(jax.random.key(1), 0, 64, 8)
  looped = _state(name)
  losses = []
  step = jax.jit(training.train_step)
  for rows in batches:
    looped, metrics = step(looped, data_.take(rows))
    losses.append(metrics["loss"])
  scanned, scan_losses = jax.jit(training.train_epoch)(_state(name), data_,
                                                       batches)
  np.testing.assert_allclose(scan_losses, losses, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-7),
               (scanned.params, scanned.model_state),
               (looped.params, looped.model_state))
  assert int(scanned.step) == len(batches)


def test_train_step_is_pure_and_learns():
  state, batch = _state(), _ratings(32)
  step = jax.jit(training.train_step)
  a, ma = step(state, batch)
  b, mb = step(state, batch)  # same input, same output: no hidden state
  np.testing.assert_array_equal(ma["loss"], mb["loss"])
  losses = []
  for _ in range(20):
    state, m = step(state, batch)
    losses.append(float(m["loss"]))
  assert losses[-1] < losses[0]


def test_embedding_nn_updates_batch_stats_in_training_only():
  state = _state("embedding_nn")
  before = state.model_state["batch_stats"]
  state, _ = jax.jit(training.train_step)(state, _ratings(16))
  moved = jax.tree.map(lambda a, b: not np.allclose(a, b), before,
                       state.model_state["batch_stats"])
  assert all(jax.tree.leaves(moved))
  p1 = training.predict(state, jnp.array([1, 2]), jnp.array([3, 4]))
  p2 = training.predict(state, jnp.array([1]), jnp.array([3]))
  np.testing.assert_allclose(p1[:1], p2, rtol=1e-6)  # eval: batch-independent


@pytest.mark.parametrize("n, bs", [(1, 4), (10, 3), (37, 8), (64, 64)])
def test_evaluate_is_the_exact_mean(n, bs):
  state, valid = _state(), _ratings(n, seed=5)
  got = jax.jit(training.evaluate, static_argnums=2)(state, valid, bs)
  err = np.asarray(training.predict(state, valid.users, valid.items),
                   np.float64) - np.asarray(valid.ratings)
  assert float(got["mse"]) == pytest.approx(np.mean(err**2), rel=1e-5)
  assert float(got["mae"]) == pytest.approx(np.mean(np.abs(err)), rel=1e-5)
  assert float(got["rmse"]) == pytest.approx(np.sqrt(np.mean(err**2)),
                                             rel=1e-5)


@pytest.mark.parametrize("name", ["dot_bias", "embedding_nn"])
def test_evaluation_block_size_changes_no_bit(name):
  """--eval_bs "does not change the result": the default block
  (steps.EVAL_BATCH) holds a whole ML-100k validation set, smaller ones
  loop; the predictions and metrics are the same bits."""
  assert sections.Train().eval_bs == steps.EVAL_BATCH  # --eval_bs default
  n = steps.EVAL_BATCH + 1000  # the default block, and a partial one
  state, valid = _state(name), _ratings(n, seed=6)
  run = jax.jit(training.evaluate, static_argnums=2)
  want = run(state, valid, n)
  preds = jax.jit(steps.predict_all, static_argnums=3)
  whole = np.asarray(preds(state, valid.users, valid.items, n))
  for bs in (64, 999, steps.EVAL_BATCH):
    np.testing.assert_array_equal(
        np.asarray(preds(state, valid.users, valid.items, bs)), whole)
    for metric, value in run(state, valid, bs).items():
      assert float(value) == float(want[metric]), (bs, metric)


def test_smooth_losses_is_fastais_debiased_ema():
  losses = np.array([4.0, 2.0, 1.0])
  avg, count, smooth = training.smooth_losses(losses, 0.0, 0)
  want = 0.0
  for x in losses:
    want = 0.98 * want + 0.02 * x
  assert count == 3 and avg == pytest.approx(want)
  assert smooth == pytest.approx(want / (1 - 0.98**3))
  # Carried across epochs it equals one pass over all steps.
  avg2, count2, smooth2 = training.smooth_losses(losses[1:], *
                                                 training.smooth_losses(
                                                     losses[:1], 0.0, 0)[:2])
  assert smooth2 == pytest.approx(smooth)


@pytest.fixture
def tiny_data(tiny_ml):
  return datasets.load(datasets.Source(data_dir=str(tiny_ml)), seed=0,
                       log=None)


def test_fit_end_to_end_beats_the_mean(tiny_data):
  model = models.create("dot_bias", tiny_data.n_users, tiny_data.n_items,
                        n_factors=8)
  config = training.TrainConfig(epochs=8, lr=3e-2, wd=0.01, batch_size=16,
                                seed=0)
  result = training.fit(model, tiny_data, config, log=None)
  assert len(result.history) == 8
  mean = float(np.asarray(tiny_data.train.ratings).mean())
  baseline = float(np.mean((np.asarray(tiny_data.valid.ratings) - mean)**2))
  assert result.history[-1]["valid_loss"] < 0.8 * baseline
  assert result.history[-1]["valid_rmse"] == pytest.approx(
      result.history[-1]["valid_loss"]**0.5, rel=1e-5)
  assert result.samples_per_second > 0 and result.compile_seconds > 0
  assert result.history[-1]["lr_end"] < 1e-5  # the cycle ran to its end


def test_fit_same_seed_same_numbers(tiny_data):
  model = models.create("embedding_nn", tiny_data.n_users,
                        tiny_data.n_items, layers=[8])
  config = training.TrainConfig(epochs=2, batch_size=16, seed=7)
  runs = [training.fit(model, tiny_data, config, log=None).history
          for _ in range(2)]
  key = lambda h: [(r["train_loss"], r["valid_loss"]) for r in h]
  assert key(runs[0]) == key(runs[1])
  other = training.fit(model, tiny_data, training.TrainConfig(
      epochs=2, batch_size=16, seed=8), log=None).history
  assert key(other) != key(runs[0])


def test_fit_prints_a_table(tiny_data):
  lines = []
  model = models.create("dot", tiny_data.n_users, tiny_data.n_items)
  training.fit(model, tiny_data, training.TrainConfig(epochs=2,
                                                      batch_size=32),
               log=lines.append)
  assert lines[0].startswith("compiled the train epoch")
  assert lines[1].split() == ["epoch", "train_loss", "valid_loss",
                              "valid_rmse", "time"]
  assert [l.split()[0] for l in lines[2:]] == ["0", "1"]


def test_fit_rejects_batch_larger_than_data(tiny_data):
  model = models.create("dot", tiny_data.n_users, tiny_data.n_items)
  with pytest.raises(UserError, match="larger than"):
    training.fit(model, tiny_data, training.TrainConfig(batch_size=10**6),
                 log=None)


def test_state_is_donated(tiny_data):
  """The compiled epoch reuses the state's buffers instead of copying."""
  model = models.create("dot", tiny_data.n_users, tiny_data.n_items)
  state = training.create_train_state(model, optim.one_cycle_adamw(
      1e-3, 0.1, 10), jax.random.key(0))
  batches = training.epoch_batches(jax.random.key(0), 0,
                                   tiny_data.train.size, 16)
  old = state.params["user_factors"]["embedding"]
  run = jax.jit(training.train_epoch, donate_argnums=0)
  new_state, _ = run(state, tiny_data.train, batches)
  jax.block_until_ready(new_state)
  assert old.is_deleted()


def test_a_model_too_big_for_memory_is_refused(tiny_data):
  huge = models.create("dot_bias", 10**9, 10**6, n_factors=64)
  with pytest.raises(UserError, match=r"training needs about .* GiB .*"
                     r"65,065,000,000 parameters"):
    training.fit(huge, tiny_data, training.TrainConfig(epochs=1,
                                                       batch_size=16),
                 log=None)


def test_epoch_seeds_are_each_epochs_seed():
  """All epochs' seeds drawn at once give each epoch's own order."""
  key = jax.random.key(11)
  seeds = steps.epoch_seeds(key, 4)
  for epoch in range(4):
    np.testing.assert_array_equal(
        steps.epoch_order(seeds[epoch], 97, 8),
        training.epoch_batches(key, epoch, 97, 8))


def test_epoch_step_program_runs_a_shorter_last_call():
  """45 epochs in calls of 20: two calls of the compiled program, then its
  shorter last call (a program of its own) for epochs 40-44, an evaluation
  after each, every epoch trained once and in order."""
  def train(state, epochs):  # state [2 replicas]: the sum of epochs seen
    seen = jnp.sum(epochs).astype(jnp.float32)
    return state + seen, jnp.broadcast_to(epochs.astype(jnp.float32),
                                          (2, len(epochs)))

  class Rows(loop.Hook):
    def __init__(self):
      self.seen = []

    def after_report(self, ctx, rows, losses):
      self.seen.append((rows[0]["epoch"], rows[0]["valid_loss"],
                        losses[1].tolist()))

  state = jnp.zeros(2, jnp.float32)
  program, _ = loop.epoch_step_program(
      train, lambda s: {"mse": s}, state, epochs=45, every=20,
      lr=lambda s: jnp.zeros(2), replicas=2)
  rows = Rows()
  outcome = loop.train_program(program, state, [rows], show_progress=False)
  assert [(e, v) for e, v, _ in rows.seen] == [
      (19, sum(range(20))), (39, sum(range(40))), (44, sum(range(45)))]
  assert rows.seen[-1][2] == list(range(40, 45))
  np.testing.assert_array_equal(outcome.state, [sum(range(45))] * 2)


def test_even_calls_split_a_run_into_equal_calls_where_they_can():
  """A Gibbs run's calls all have one length when some divisor of its
  sweeps makes 5 to 20 calls (no second program for a shorter last call);
  the divisor nearest the interval asked for is taken."""
  for total in range(1, 700):
    for every in (1, max(1, total // 10), min(7, total)):
      got = loop.even_calls(total, every)
      if total % every == 0:
        assert got == every
        continue
      fitting = [d for d in range(1, total + 1)
                 if total % d == 0 and 5 <= total // d <= 20]
      if not fitting:
        assert got == every, (total, every)
        continue
      assert total % got == 0 and 5 <= total // got <= 20, (total, every)
      assert abs(got - every) == min(abs(d - every) for d in fitting)
  assert [loop.even_calls(n, k) for n, k in
          ((25, 2), (45, 4), (64, 6), (97, 9), (500, 50))] == [5, 5, 8, 9, 50]


def test_compiles_queue_in_order_and_pass_on_their_errors():
  """`loop.Compiling`: programs come back in the order asked, one compile
  per core beyond the caller's, and a compile's error reaches the caller
  (here XLA refusing an option)."""
  add, triple = loop.compile_together(
      jax.jit(lambda x: x + 1).lower(1.0), jax.jit(lambda x: x * 3).lower(1.0))
  assert (float(add(2.0)), float(triple(2.0))) == (3.0, 6.0)
  assert loop._compile_queue()._max_workers == max(1, loop.usable_cores() - 1)  # pylint: disable=protected-access
  bad = loop.Compiling(jax.jit(lambda x: x - 1).lower(1.0),
                       {"xla_no_such_option": 1})
  with pytest.raises(Exception, match="xla_no_such_option"):
    bad.result()
