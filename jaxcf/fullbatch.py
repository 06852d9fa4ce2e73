"""Full-batch training for families that read whole rating columns (AutoRec).

One step sees the whole training rating matrix r (every item's column for
I-AutoRec): the columns go through the autoencoder with `input_dropout` of
their ratings hidden (inverted dropout), and Adam (constant lr) descends

    (sum over observed (u, i) of (r_hat - r)^2 + wd / 2 * sum of squared
     kernels) / number of observed ratings

(`wd` is AutoRec's L2 weight lambda, per observed rating as in the paper).
Replicas of one layer shape are stacked and trained by `jax.vmap` under
`lax.scan`, `config.eval_every` steps per compiled call, through the one
loop (`jaxcf.loop`); an epoch is one step.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxcf import loop, steps
from jaxcf.data import CollabData
from jaxcf.models import autorec as autorec_family
from jaxcf.models.autorec import AutoRec

# What a full-batch run uses instead of the minibatch defaults.
DEFAULTS = {"epochs": 500, "lr": 1e-3, "wd": 100.0}
# Training settings (flags) that mean nothing to full-batch training.
IGNORED = ("bs", "pct_start", "div", "div_final", "sampling", "optimizer",
           "row_kernel", "param_dtype", "compute_dtype", "mesh",
           "shard_data", "checkpoint_steps", "checkpoint_every",
           "checkpoint_seconds", "eval_bs", "tensorboard")


@flax.struct.dataclass
class State:
  """One replica (stacked: many): weights, Adam's state with its lr, the
  key of its input dropout, its L2 weight and dropout rate."""
  params: dict
  opt_state: optax.OptState
  key: jax.Array
  lam: jax.Array
  rate: jax.Array


def _l2(params) -> jax.Array:
  return sum(jnp.sum(w**2) for path, w in
             jax.tree_util.tree_leaves_with_path(params)
             if path[-1].key == "kernel")


def train_group(replicas: Sequence, data: CollabData, config,
                run_hooks: Sequence[loop.Hook],
                log: Callable[[str], None] | None):
  """Trains AutoRec replicas of one layer shape together. Returns (loop
  outcome, validation predictions [R, n_valid], the variables every replica
  shares (the training rating matrix and the clip range), compile
  seconds)."""
  first = replicas[0].normalised()
  module = replicas[0].create_model(data)
  r, m = autorec_family.rating_matrix(data.train, data.n_users,
                                      data.n_items, first.by)
  clip = jnp.asarray([jnp.min(data.train.ratings),
                      jnp.max(data.train.ratings)], jnp.float32)
  constants = {"ratings": r, "clip": clip}
  cols, pos = ((data.valid.items, data.valid.users) if first.by == "item"
               else (data.valid.users, data.valid.items))
  observed = jnp.sum(m)
  tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)

  def apply(params, x):
    return module.apply({"params": params, "constants": constants}, x,
                        method=AutoRec.reconstruct)

  def init(seed, lr, lam, rate):
    key = jax.random.key(seed)
    dummy = jnp.zeros((1,), jnp.int32)
    params = module.init(jax.random.fold_in(key, 0), dummy, dummy)["params"]
    opt = tx.init(params)
    opt.hyperparams["learning_rate"] = lr
    return State(params, opt, key, lam, rate)

  def step(state: State, key):
    keep = jax.random.bernoulli(key, 1.0 - state.rate, r.shape)
    x = jnp.where(keep, r / (1.0 - state.rate), 0.0)  # inverted dropout

    def loss(p):
      return (jnp.sum(m * (apply(p, x) - r)**2)
              + state.lam / 2 * _l2(p)) / observed

    value, grads = jax.value_and_grad(loss)(state.params)
    updates, opt = tx.update(grads, state.opt_state, state.params)
    return state.replace(params=optax.apply_updates(state.params, updates),
                         opt_state=opt), value

  def train(state: State, epochs: jax.Array):
    """epochs: int32 [count], the steps this call runs."""
    def one(state):
      keys = jax.random.split(jax.random.fold_in(state.key, epochs[0]),
                              epochs.shape[0])
      return jax.lax.scan(step, state, keys)
    return jax.vmap(one)(state)

  def predictions(state: State):
    return jax.vmap(lambda p: jnp.clip(apply(p, r)[cols, pos], clip[0],
                                       clip[1]))(state.params)

  def evaluate(state: State):
    return jax.vmap(steps.error_metrics, in_axes=(0, None))(
        predictions(state), data.valid.ratings)

  as_array = lambda name, dtype: jnp.asarray(
      [getattr(x, name) for x in replicas], dtype)
  state = jax.vmap(init)(as_array("seed", jnp.uint32),
                         as_array("lr", jnp.float32),
                         as_array("wd", jnp.float32),
                         as_array("input_dropout", jnp.float32))
  program, compile_seconds = loop.epoch_step_program(
      train, evaluate, state, config.epochs, config.eval_every,
      lr=lambda s: s.opt_state.hyperparams["learning_rate"],
      replicas=len(replicas))
  if log:
    log(f"compiled {len(replicas)} replicas of AutoRec in "
        f"{compile_seconds:.2f}s")
  outcome = loop.train_program(program, state, run_hooks,
                               show_progress=log is not None)
  final = outcome.state
  outcome.state = steps.TrainState(
      step=jnp.zeros([len(replicas)], jnp.int32), params=final.params,
      model_state={}, opt_state=None, rng=final.key, model=module, tx=None)
  return (outcome, jax.jit(predictions)(final), {"constants": constants},
          compile_seconds)
