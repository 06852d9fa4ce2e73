"""The functional core: the train state, the pure train step, the scanned
epoch and evaluation.

The state is a pytree (`TrainState`); `train_step(state, batch) -> (state,
metrics)` is a pure function; `train_epoch` runs every step of an epoch
inside one `lax.scan`, so an epoch is one call of one compiled program (and
`jax.vmap` of it trains stacked replicas). Randomness comes only from keys
derived from the seed: one for initialisation, one for the data order, and
step i's dropout key fold_in(rng, i).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcf import keys, sparse
from jaxcf.data import Ratings
from jaxcf.models import tableinit


@flax.struct.dataclass
class TrainState:
  """Parameters, other model variables and optimiser state, plus the model
  and the optimiser that use them (static: they are not arrays).

  model_state holds the model's variable collections other than params:
  'batch_stats' (BatchNorm running statistics, updated by training) and
  'constants' (the y_range, side-feature tables), each absent when the model
  has none. tx is an optax transformation, or a `sparse.SparseOptimizer`
  (row-wise), or None for a state that only predicts.
  """
  step: jax.Array
  params: Any
  model_state: dict[str, Any]
  opt_state: Any
  rng: jax.Array  # a key; step i's dropout key is fold_in(rng, i)
  model: nn.Module = flax.struct.field(pytree_node=False)
  tx: Any = flax.struct.field(pytree_node=False)

  @property
  def apply_fn(self):
    return self.model.apply


def create_train_state(model: nn.Module, tx, key: jax.Array,
                       constants: dict | None = None,
                       table_keys: jax.Array | None = None,
                       rng: jax.Array | None = None) -> TrainState:
  """Initialises a model's variables from `key` and its optimiser state.

  constants: values for the model's 'constants' collection (side-feature
  tables), replacing the placeholders `init` creates.
  table_keys, rng: keys derived from `key`, given when computed on the
  host (the same values; a smaller program to compile): the keys of the
  model's fastai tables, `tableinit.host_keys(model, key)`, and the
  dropout key, `keys.fold_key(key, 1)`.
  """
  dummy = jnp.zeros((1,), jnp.int32)
  variables = dict(tableinit.drawn_together(model.init, table_keys)(
      key, dummy, dummy))
  params = variables.pop("params")
  if constants:
    variables["constants"] = {**variables.get("constants", {}), **constants}
  return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                    model_state=variables,
                    opt_state=None if tx is None else tx.init(params),
                    rng=jax.random.fold_in(key, 1) if rng is None else rng,
                    model=model, tx=tx)


def _times(times) -> dict:
  return {} if times is None else {"times": times}


def predict(state: TrainState, users: jax.Array, items: jax.Array,
            times: jax.Array | None = None) -> jax.Array:
  """Predicted ratings [batch] in evaluation mode (BatchNorm running stats).

  times: rating times [batch] for models that use them (else None).
  """
  variables = {"params": state.params, **state.model_state}
  return state.apply_fn(variables, users, items, train=False, **_times(times))


def train_step(state: TrainState, batch: Ratings
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimiser step on the mean squared error of a batch.

  A row-wise optimiser updates only the rows the batch uses
  (`sparse.train_step`); any other is an optax transformation of the
  gradient of every parameter.
  """
  if isinstance(state.tx, sparse.SparseOptimizer):
    return sparse.train_step(state, batch)

  def loss_fn(params):
    variables = {"params": params, **state.model_state}
    preds, updates = state.apply_fn(
        variables, batch.users, batch.items, train=True,
        mutable=["batch_stats"], **_times(batch.times),
        rngs={"dropout": jax.random.fold_in(state.rng, state.step)})
    loss = jnp.mean((preds - batch.ratings)**2)
    return loss, {**state.model_state, **updates}

  (loss, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params,
                            model_state=model_state, opt_state=opt_state)
  return new_state, {"loss": loss}


def train_epoch(state: TrainState, data: Ratings, batches: jax.Array,
                take=Ratings.take) -> tuple[TrainState, jax.Array]:
  """Runs `train_step` over every batch in one `lax.scan`.

  Args:
    state: the training state.
    data: the training ratings on the device.
    batches: int32 [steps, batch_size], row indices into `data` (the shuffled
      epoch); each batch is gathered on the device.
    take: (data, rows) -> the batch; `sharding.local_take` when each device
      holds its own rows.

  Returns:
    (state, losses): the new state and the float32 [steps] batch losses.
  """

  def body(state, rows):
    state, metrics = train_step(state, take(data, rows))
    return state, metrics["loss"]

  return jax.lax.scan(body, state, batches)


# Rows predicted at a time in evaluation: ML-100k's validation and test sets
# (20,000 rows and fewer) fit in one block, which compiles about twice as
# fast as a loop over blocks (0.16 s against 0.30 s for the book's model on
# 2 cores); the widest fastai embeddings (600 + 600 floats a row) stay near
# 160 MB a block.
EVAL_BATCH = 32768


def predict_all(state: TrainState, users: jax.Array, items: jax.Array,
                batch_size: int = EVAL_BATCH, times: jax.Array | None = None
                ) -> jax.Array:
  """Predictions [n] for any number of pairs, `batch_size` at a time."""
  n = users.shape[0]
  batch_size = max(1, min(batch_size, n))
  chunks = -(-n // batch_size)
  pad = chunks * batch_size - n
  inputs = jax.tree.map(
      lambda x: jnp.pad(x, (0, pad)).reshape(chunks, batch_size),
      (users, items, times))
  preds = jax.lax.map(lambda x: predict(state, *x), inputs)
  return preds.reshape(-1)[:n]


def evaluate(state: TrainState, data: Ratings, batch_size: int = EVAL_BATCH
             ) -> dict[str, jax.Array]:
  """Exact mean squared/absolute error over every row of `data`.

  Returns float32 scalars: mse, rmse, mae.
  """
  return error_metrics(predict_all(state, data.users, data.items, batch_size,
                                   data.times), data.ratings)


def error_metrics(preds: jax.Array, ratings: jax.Array
                  ) -> dict[str, jax.Array]:
  """mse, rmse and mae of predictions [n] against ratings [n]."""
  err = preds - ratings
  n = err.shape[0]
  # Sums of 1024-row blocks, then of the blocks: float32 stays exact enough
  # for millions of rows.
  blocks = jnp.pad(err, (0, -n % 1024)).reshape(-1, 1024)
  mse = jnp.sum(jnp.sum(blocks**2, axis=1)) / n
  mae = jnp.sum(jnp.sum(jnp.abs(blocks), axis=1)) / n
  return {"mse": mse, "rmse": jnp.sqrt(mse), "mae": mae}


SAMPLINGS = ("shuffle", "replacement")


def epoch_batches(key: jax.Array, epoch: int, n: int, batch_size: int,
                  sampling: str = "shuffle") -> np.ndarray:
  """The rows of one epoch, int32 [n // batch_size, batch_size].

  sampling='shuffle' takes a fresh permutation of all rows each epoch (every
  row once); 'replacement' draws n rows uniformly with replacement, as
  fastai 2.8's tabular loader (`TabWeightedDL`) does, so each epoch sees
  about 63% of the distinct rows. Either way the last partial batch is
  dropped. Drawn on the host (numpy is ~30x faster than an XLA:CPU
  permutation) from a seed taken from `fold_in(key, epoch)`: see
  `epoch_seeds`, which a training run uses to draw them all at its start.
  key: a typed key (`jax.random.key`), as `fit` uses.
  """
  seed = np.asarray(jax.random.key_data(keys.fold_key(key, epoch)))
  return epoch_order(seed, n, batch_size, sampling)


def epoch_seeds(key: jax.Array, epochs: int) -> np.ndarray:
  """uint32 [epochs, 2]: every epoch's seed for `epoch_order`, the key
  data of fold_in(key, epoch), drawn on the host (`jaxcf.keys`). Taken
  before training starts: a device call made while an epoch runs waits for
  it, so drawing the next epoch's seed then would keep the host from
  shuffling while the device trains."""
  return keys.fold_seeds(key, max(epochs, 1))


def epoch_order(seed: np.ndarray, n: int, batch_size: int,
                sampling: str = "shuffle") -> np.ndarray:
  """`epoch_batches` from the epoch's seed (a row of `epoch_seeds`)."""
  rng = np.random.default_rng(seed)
  if sampling == "shuffle":
    rows = rng.permutation(n)
  elif sampling == "replacement":
    rows = rng.integers(0, n, size=n)
  else:
    raise ValueError(f"sampling must be one of {SAMPLINGS}, not {sampling!r}")
  steps = n // batch_size
  return rows[:steps * batch_size].astype(np.int32).reshape(steps, batch_size)
