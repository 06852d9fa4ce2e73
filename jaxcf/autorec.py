"""AutoRec (Sedhain et al., 2015): an autoencoder of each item's ratings.

I-AutoRec reads item i's column of the training rating matrix, r_i (float32
[n_users], 0 where unrated), encodes it through sigmoid layers and decodes it
back to [n_users]; the prediction for (u, i) is the decoded r_i at u. The
loss is the squared error on the observed entries only, plus L2 on the
weights (`lam` / 2 * sum of squared weights), divided by the number of
observed entries so that `lam` reads as in the paper. With `by="user"` the
roles swap (U-AutoRec).

Unlike the factor models, a prediction reads a whole column of the rating
matrix, so AutoRec is trained full-batch over the columns (one Adam step
sees every item) rather than on batches of ratings; epochs run under
`lax.scan`, and replicas that differ only in seed, lr, `lam` and dropout
are trained together under `vmap`, as `jaxcf.sweep` does for the factor
models. The matrix is dense: this model is for MovieLens-sized data (it
refuses a matrix over `MAX_MATRIX_BYTES`).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcf.data import CollabData, Ratings
from jaxcf.errors import UserError

MAX_MATRIX_BYTES = 2 << 30
BY = ("item", "user")


class AutoRec(nn.Module):
  """[batch, n] rating columns -> [batch, n] reconstructions (float32).

  Attributes:
    n: length of a column (n_users for I-AutoRec).
    layers: hidden widths, each followed by a sigmoid.
  """
  n: int
  layers: Sequence[int] = (500,)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for width in self.layers:
      x = nn.sigmoid(nn.Dense(width)(x))
    return nn.Dense(self.n)(x)


@dataclasses.dataclass(frozen=True)
class AutoRecConfig:
  """One AutoRec replica. Replicas with equal `shape_key` train together."""
  layers: tuple[int, ...] = (500,)
  dropout: float = 0.0  # share of the input ratings hidden while training
  lam: float = 100.0  # L2 on the weights, per observed rating
  lr: float = 1e-3  # Adam, constant
  seed: int = 0
  by: str = "item"  # "item" (I-AutoRec) or "user" (U-AutoRec)

  def __post_init__(self):
    problems = [f"{name}={value!r} must be {rule}" for name, value, ok, rule in (
        ("layers", self.layers, len(self.layers) > 0 and all(
            isinstance(w, int) and w > 0 for w in self.layers),
         "positive widths"),
        ("dropout", self.dropout, 0 <= self.dropout < 1, "in [0, 1)"),
        ("lam", self.lam, self.lam >= 0, ">= 0"),
        ("lr", self.lr, self.lr > 0, "> 0"),
        ("by", self.by, self.by in BY, f"one of {', '.join(BY)}")) if not ok]
    if problems:
      raise UserError("AutoRec: " + "; ".join(problems))

  @property
  def shape_key(self) -> tuple:
    return (tuple(self.layers), self.by)


@dataclasses.dataclass
class AutoRecResult:
  """A trained replica: validation MSE after each `eval_every` epochs
  (history: [{'epoch', 'valid_loss', 'valid_rmse', 'train_loss'}]), its final weights and its final
  validation predictions [n_valid] (clipped to the training rating range)."""
  config: AutoRecConfig
  history: list[dict[str, float]]
  params: dict
  predictions: np.ndarray

  @property
  def valid_loss(self) -> float:
    return self.history[-1]["valid_loss"]


def rating_matrix(ratings: Ratings, n_users: int, n_items: int,
                  by: str = "item") -> tuple[jax.Array, jax.Array]:
  """(ratings, observed): float32 [n_items, n_users] (by='item') or the
  transpose (by='user'); 0 where unrated. Pairs are unique (loading
  resolves repeated pairs, see `data.resolve_duplicates`)."""
  rows, cols = _pairs(ratings, by)
  shape = (n_items, n_users) if by == "item" else (n_users, n_items)
  nbytes = 2 * 4 * shape[0] * shape[1]
  if nbytes > MAX_MATRIX_BYTES:
    raise UserError(
        f"AutoRec needs the dense {shape[0]:,} x {shape[1]:,} rating matrix "
        f"({nbytes / 2**30:.1f} GiB with its mask); use a factor model "
        f"(dot_bias with a row-wise optimiser) for data this large")
  r = jnp.zeros(shape, jnp.float32).at[rows, cols].set(ratings.ratings)
  m = jnp.zeros(shape, jnp.float32).at[rows, cols].set(1.0)
  return r, m


def _pairs(ratings: Ratings, by: str) -> tuple[jax.Array, jax.Array]:
  """(column, position in it) of each rating."""
  if by not in BY:
    raise UserError(f"AutoRec by={by!r}: choose one of {', '.join(BY)}")
  return ((ratings.items, ratings.users) if by == "item"
          else (ratings.users, ratings.items))


def train(data: CollabData, configs: Sequence[AutoRecConfig],
          epochs: int = 800, eval_every: int = 100,
          log: Callable[[str], None] | None = print) -> list[AutoRecResult]:
  """Trains every configuration; results in the order given.

  Each group of equal `shape_key` is one compiled program: parameters and
  Adam states stacked on a leading replica axis, `eval_every` full-batch
  steps per call under `lax.scan`, then the validation MSE of each replica.
  """
  if epochs < 1 or eval_every < 1:
    raise UserError(f"AutoRec epochs and eval_every must be >= 1, got "
                    f"{epochs} and {eval_every}")
  low = float(jnp.min(data.train.ratings))
  high = float(jnp.max(data.train.ratings))
  results: list[AutoRecResult | None] = [None] * len(configs)
  groups: dict[tuple, list[int]] = {}
  for i, c in enumerate(configs):
    groups.setdefault(c.shape_key, []).append(i)
  matrices = {}  # by -> (ratings, observed), shared by its groups
  for (layers, by), members in groups.items():
    group = [configs[i] for i in members]
    if by not in matrices:
      matrices[by] = rating_matrix(data.train, data.n_users, data.n_items, by)
    r, m = matrices[by]
    cols, pos = _pairs(data.valid, by)
    module = AutoRec(r.shape[1], layers)
    histories, params, preds = _train_group(
        module, group, r, m, cols, pos, data.valid.ratings, epochs,
        eval_every, (low, high), log)
    for k, i in enumerate(members):
      results[i] = AutoRecResult(configs[i], histories[k],
                                 jax.tree.map(lambda x: np.asarray(x[k]),
                                              params),
                                 np.asarray(preds[k]))
  return results


def _l2(params) -> jax.Array:
  return sum(jnp.sum(w**2) for path, w in
             jax.tree_util.tree_leaves_with_path(params)
             if path[-1].key == "kernel")


def _train_group(module, group, r, m, cols, pos, truth, epochs, eval_every,
                 clip, log):
  """Trains replicas of one shape together; see `train`."""
  lam = jnp.asarray([c.lam for c in group], jnp.float32)
  lr = jnp.asarray([c.lr for c in group], jnp.float32)
  rate = jnp.asarray([c.dropout for c in group], jnp.float32)
  keys = jnp.stack([jax.random.key(c.seed) for c in group])
  tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
  observed = jnp.sum(m)

  def init(key, lr):
    params = module.init(jax.random.fold_in(key, 0), r[:1])["params"]
    opt = tx.init(params)
    opt.hyperparams["learning_rate"] = lr
    return params, opt

  def step(carry, key, lam, rate):
    params, opt = carry
    keep = jax.random.bernoulli(key, 1.0 - rate, r.shape)
    x = jnp.where(keep, r / (1.0 - rate), 0.0)  # inverted dropout

    def loss(p):
      out = module.apply({"params": p}, x)
      return (jnp.sum(m * (out - r)**2) + lam / 2 * _l2(p)) / observed

    value, grads = jax.value_and_grad(loss)(params)
    updates, opt = tx.update(grads, opt, params)
    return (optax.apply_updates(params, updates), opt), value

  @functools.partial(jax.jit, static_argnums=5, donate_argnums=(0, 1))
  def chunk(params, opt, keys, lam, rate, length, start):
    def one(params, opt, key, lam, rate):
      step_keys = jax.random.split(jax.random.fold_in(key, start), length)
      (params, opt), losses = jax.lax.scan(
          lambda c, k: step(c, k, lam, rate), (params, opt), step_keys)
      pred = jnp.clip(module.apply({"params": params}, r)[cols, pos], *clip)
      return params, opt, losses[-1], pred
    return jax.vmap(one)(params, opt, keys, lam, rate)

  params, opt = jax.vmap(init)(keys, lr)
  histories = [[] for _ in group]
  start_time = time.perf_counter()
  done, preds = 0, None
  while done < epochs:
    length = min(eval_every, epochs - done)
    params, opt, train_loss, preds = chunk(params, opt, keys, lam, rate,
                                           length, done)
    done += length
    mse = np.asarray(jnp.mean((preds - truth)**2, axis=1))
    for k, history in enumerate(histories):
      history.append({"epoch": done, "valid_loss": float(mse[k]),
                      "valid_rmse": float(np.sqrt(mse[k])),
                      "train_loss": float(train_loss[k])})
    if log:
      log(f"autorec {tuple(module.layers)} epoch {done}/{epochs}: valid MSE "
          f"best {mse.min():.4f} median {np.median(mse):.4f} "
          f"({len(group)} replicas, {time.perf_counter() - start_time:.0f}s)")
  return histories, params, preds
