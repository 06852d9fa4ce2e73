"""The one-cycle schedule and fastai's Adam, against hand-written fastai."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcf import models, optim, training
from jaxcf.data import Ratings

N = 5 * 1250  # the book's run: 5 epochs of 1250 batches


def fastai_combined_cos(pos, pct, start, middle, end):
  """fastai's combine_scheds([pct, 1-pct], [SchedCos(start, middle),
  SchedCos(middle, end)]) at position pos, in float64."""
  def sched_cos(a, b, p):
    return a + (1 + math.cos(math.pi * (1 - p))) * (b - a) / 2
  if pos < pct:
    return sched_cos(start, middle, pos / pct)
  return sched_cos(middle, end, (pos - pct) / (1 - pct))


def test_schedule_matches_reference_values():
  lr = lambda i: float(optim.one_cycle(i, N, 5e-3 / 25, 5e-3, 5e-3 / 1e5))
  assert lr(0) == pytest.approx(2e-4, rel=1e-6)
  assert lr(1562) == pytest.approx(5e-3, rel=1e-5)
  assert lr(N - 1) == pytest.approx(5.06e-8, rel=1e-3)


@pytest.mark.parametrize("pct", [0.25, 0.3])
def test_schedule_matches_fastai_everywhere(pct):
  steps = np.arange(N)
  got = np.asarray(optim.one_cycle(steps, N, 2e-4, 5e-3, 5e-8, pct))
  want = np.array([fastai_combined_cos(i / N, pct, 2e-4, 5e-3, 5e-8)
                   for i in steps])
  np.testing.assert_allclose(got, want, rtol=2e-5)
  moms = np.asarray(optim.one_cycle(steps, N, 0.95, 0.85, 0.95, pct))
  want = [fastai_combined_cos(i / N, pct, 0.95, 0.85, 0.95) for i in steps]
  np.testing.assert_allclose(moms, want, rtol=1e-6)


def fastai_adam_step(p, g, m, v, t, lr, mom, wd, decay, sqr_mom=0.99,
                     eps=1e-5):
  """fastai's Adam callbacks, in order, in float64 numpy."""
  if decay:
    p = p * (1 - lr * wd)                           # weight_decay
  m = mom * m + (1 - mom) * g                       # average_grad(dampening)
  v = sqr_mom * v + (1 - sqr_mom) * g * g           # average_sqr_grad
  debias1, debias2 = 1 - mom**t, 1 - sqr_mom**t     # step_stat, adam_step
  p = p - lr / debias1 * m / (np.sqrt(v / debias2) + eps)
  return p, m, v


def test_optimizer_equals_hand_written_fastai_adam():
  rng = np.random.default_rng(0)
  params = {"emb": {"embedding": rng.normal(size=(6, 3))},
            "lin": {"kernel": rng.normal(size=(3, 2)),
                    "bias": rng.normal(size=(2,))}}
  total, peak, wd = 12, 0.05, 0.3
  tx = optim.one_cycle_adamw(peak, wd, total)
  jparams = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  state = tx.init(jparams)
  ref = jax.tree.map(lambda x: (x, np.zeros_like(x), np.zeros_like(x)),
                     params)
  for step in range(total):
    grads = jax.tree.map(lambda x: rng.normal(size=x.shape), params)
    if step % 3 == 2:  # rows not in a batch get zero gradient, still move
      grads["emb"]["embedding"][:3] = 0
    updates, state = tx.update(
        jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), grads), state,
        jparams)
    jparams = optax.apply_updates(jparams, updates)
    lr = fastai_combined_cos(step / total, 0.25, peak / 25, peak, peak / 1e5)
    mom = fastai_combined_cos(step / total, 0.25, 0.95, 0.85, 0.95)
    for path in (("emb", "embedding"), ("lin", "kernel"), ("lin", "bias")):
      p, m, v = ref[path[0]][path[1]]
      ref[path[0]][path[1]] = fastai_adam_step(
          p, grads[path[0]][path[1]], m, v, step + 1, lr, mom, wd,
          decay=path[1] != "bias")
    assert float(state.lr) == pytest.approx(lr, rel=1e-5)
    assert float(state.b1) == pytest.approx(mom, rel=1e-6)
  for path in (("emb", "embedding"), ("lin", "kernel"), ("lin", "bias")):
    np.testing.assert_allclose(jparams[path[0]][path[1]],
                               ref[path[0]][path[1]][0], rtol=1e-5,
                               atol=1e-6)


def test_decay_mask():
  params = {"user_bias": {"embedding": 0}, "Linear_0": {"dense": {
      "kernel": 0, "bias": 0}}, "BatchNorm_0": {"scale": 0, "bias": 0}}
  assert optim.decay_mask(params) == {
      "user_bias": {"embedding": True},
      "Linear_0": {"dense": {"kernel": True, "bias": False}},
      "BatchNorm_0": {"scale": False, "bias": False}}


def test_hyperparameters_live_in_the_state_for_vmap():
  """Stacked states with per-replica lr and wd give per-replica updates."""
  tx = optim.one_cycle_adamw(1.0, 0.0, 10)
  params = {"w": {"kernel": jnp.ones(3)}}
  state = tx.init(params)
  lrs, wds = jnp.array([1e-3, 1e-2]), jnp.array([0.0, 0.5])

  def one(lr, wd):
    s = state._replace(peak_lr=lr, weight_decay=wd)
    return tx.update({"w": {"kernel": jnp.ones(3)}}, s, params)[0]

  stacked = jax.vmap(one)(lrs, wds)["w"]["kernel"]
  for r in range(2):
    alone = one(lrs[r], wds[r])["w"]["kernel"]
    np.testing.assert_allclose(stacked[r], alone, rtol=1e-6)
  assert not np.allclose(stacked[0], stacked[1])


# One table over every optimiser ----------------------------------------------

ALL = list(training.OPTIMIZERS)


@pytest.fixture(scope="module")
def tiny_ratings():
  rng = np.random.default_rng(0)
  users = rng.integers(1, 12, 256)
  items = rng.integers(1, 9, 256)
  ratings = np.clip(3 + 0.3 * (users % 3) - 0.4 * (items % 4)
                    + 0.1 * rng.normal(size=256), 1, 5)
  return Ratings(jnp.asarray(users, jnp.int32), jnp.asarray(items, jnp.int32),
                 jnp.asarray(ratings, jnp.float32))


def _optimizer(name, total, lr, wd=0.0, model=None):
  model = model or models.create("dot_bias", 12, 9, n_factors=4)
  lr = lr if lr is not None else (0.05 if name != "lion" else 5e-3)
  return model, training.make_optimizer(
      model, training.TrainConfig(optimizer=name, lr=lr, wd=wd), total)


@pytest.mark.parametrize("name", ALL)
def test_every_optimizer_learns(name, tiny_ratings):
  model, tx = _optimizer(name, 60, None)
  state = training.create_train_state(model, tx, jax.random.key(0))
  batches = training.epoch_batches(jax.random.key(1), 0, 256, 32)
  epoch = jax.jit(training.train_epoch)
  losses = []
  for _ in range(6):
    state, loss = epoch(state, tiny_ratings, batches)
    losses.append(float(np.mean(loss)))
  assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("name", ALL)
def test_the_schedule_drives_every_optimizer(name, tiny_ratings):
  """Step i runs at the one cycle's lr for i, from the peak in the state."""
  total = 8
  model, tx = _optimizer(name, total, 0.02)
  state = training.create_train_state(model, tx, jax.random.key(0))
  step = jax.jit(training.train_step)
  for i in range(total):
    state, _ = step(state, tiny_ratings.take(jnp.arange(32) + i))
    want = optim.one_cycle(i, total, 0.02 / 25, 0.02, 0.02 / 1e5)
    assert float(state.opt_state.lr) == pytest.approx(float(want), rel=1e-6)
    want_b1 = optim.one_cycle(i, total, 0.95, 0.85, 0.95)
    assert float(state.opt_state.b1) == pytest.approx(float(want_b1),
                                                      rel=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_vmapped_replicas_keep_their_own_lr_and_wd(name, tiny_ratings):
  """lr and wd live in the state: a stack of two equals each alone."""
  model, tx = _optimizer(name, 10, 1.0, 0.0)
  state = training.create_train_state(model, tx, jax.random.key(0))
  batch = tiny_ratings.take(jnp.arange(32))

  def one(lr, wd):
    s = state.replace(opt_state=state.opt_state._replace(
        peak_lr=lr, weight_decay=wd))
    return training.train_step(s, batch)[0].params

  lrs, wds = jnp.array([1e-2, 3e-2]), jnp.array([0.0, 0.5])
  stacked = jax.jit(jax.vmap(one))(lrs, wds)
  for r in range(2):
    alone = jax.jit(one)(lrs[r], wds[r])
    jax.tree.map(lambda a, b, r=r: np.testing.assert_allclose(
        a[r], b, rtol=1e-5, atol=1e-7), stacked, alone)
  first = stacked["item_factors"]["embedding"]
  assert not np.allclose(first[0], first[1])


@pytest.mark.parametrize("name", ["sgd", "lion"])
def test_dense_optimizers_decay_weights_not_biases(name):
  """With a zero gradient only decoupled decay moves the weights: kernels
  and tables shrink by lr * wd, Linear biases stay (fastai's mask)."""
  params = {"t": {"embedding": jnp.ones((3, 2))},
            "l": {"dense": {"kernel": jnp.ones((2, 2)),
                            "bias": jnp.ones(2)}}}
  tx = optim.one_cycle_optimizer(optim.DENSE[name], 0.1, 0.5, 4)
  state = tx.init(params)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, state = tx.update(zero, state, params)
  lr = float(state.lr)
  np.testing.assert_allclose(updates["t"]["embedding"], -lr * 0.5,
                             rtol=1e-5)
  np.testing.assert_allclose(updates["l"]["dense"]["kernel"], -lr * 0.5,
                             rtol=1e-5)
  np.testing.assert_allclose(updates["l"]["dense"]["bias"], 0.0)
