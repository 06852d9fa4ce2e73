"""Training: the pure train step, a scanned epoch, evaluation, and `fit`.

The state is a pytree (`TrainState`); `train_step(state, batch)` is a pure
function; `train_epoch` runs every step of an epoch inside one `lax.scan`, so
an epoch is one call of one compiled program. Randomness comes only from keys
derived from the seed: one for initialisation, one for the data order.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcf import hugepages, models, optim, rowkernels, sharding, sparse
from jaxcf.data import CollabData, Ratings
from jaxcf.errors import UserError
from jaxcf.progress import Bar


@flax.struct.dataclass
class TrainState:
  """Parameters, other model variables and optimiser state, plus the two
  functions that use them (static: they are not arrays).

  model_state holds the model's variable collections other than params:
  'batch_stats' (BatchNorm running statistics, updated by training) and
  'constants' (the y_range, side-feature tables), each absent when the model
  has none.
  """
  step: jax.Array
  params: Any
  model_state: dict[str, Any]
  opt_state: Any
  rng: jax.Array  # a key; step i's dropout key is fold_in(rng, i)
  apply_fn: Callable = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


def create_train_state(model: nn.Module, tx: optax.GradientTransformation,
                       key: jax.Array, constants: dict | None = None
                       ) -> TrainState:
  """Initialises a model's variables from `key` and its optimiser state.

  constants: values for the model's 'constants' collection (side-feature
  tables), replacing the placeholders `init` creates.
  """
  dummy = jnp.zeros((1,), jnp.int32)
  variables = dict(model.init(key, dummy, dummy))
  params = variables.pop("params")
  if constants:
    variables["constants"] = {**variables.get("constants", {}), **constants}
  return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                    model_state=variables, opt_state=tx.init(params),
                    rng=jax.random.fold_in(key, 1), apply_fn=model.apply,
                    tx=tx)


def _times(times) -> dict:
  return {} if times is None else {"times": times}


def model_constants(model: nn.Module, data: CollabData) -> dict | None:
  """The side-feature tables a SideNN needs from `data` (else None)."""
  if not isinstance(model, models.SideNN):
    return None
  if data.side is None:
    raise UserError("model side_nn needs side features: attach them with "
                    "jaxcf.features (train.py does, for MovieLens 100k)")
  return {k: jnp.asarray(v) for k, v in data.side.constants.items()}


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

  A row-wise optimiser (`jaxcf.sparse`) brings its own step.
  """
  step_fn = getattr(state.tx, "step_fn", None)
  if step_fn is not None:
    return step_fn(state, batch)

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


def predict_all(state: TrainState, users: jax.Array, items: jax.Array,
                batch_size: int = 8192, times: jax.Array | None = None
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


def evaluate(state: TrainState, data: Ratings, batch_size: int = 8192
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
  permutation) from a seed taken from `fold_in(key, epoch)`.
  """
  seed = np.asarray(jax.random.key_data(jax.random.fold_in(key, epoch)))
  rng = np.random.default_rng(seed)
  if sampling == "shuffle":
    rows = rng.permutation(n)
  elif sampling == "replacement":
    rows = rng.integers(0, n, size=n)
  else:
    raise ValueError(f"sampling must be one of {SAMPLINGS}, not {sampling!r}")
  steps = n // batch_size
  return rows[:steps * batch_size].astype(np.int32).reshape(steps, batch_size)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """fastai's `fit_one_cycle(epochs, lr, wd=wd)` with a batch size and seed."""
  epochs: int = 5
  lr: float = 5e-3
  wd: float = 0.1
  batch_size: int = 64
  seed: int = 42
  pct_start: float = 0.25
  div: float = 25.0
  div_final: float = 1e5
  moms: tuple[float, float, float] = (0.95, 0.85, 0.95)
  sampling: str = "shuffle"  # or "replacement", see `epoch_batches`
  optimizer: str = "adamw"  # or "lazy_adamw", "rowwise_adagrad" (sparse)
  eval_batch_size: int = 8192
  row_kernel: str = "xla"  # or "cpp": a row-wise optimiser's C++ kernels


@dataclasses.dataclass
class FitResult:
  """What `fit` returns.

  history: one dict per epoch (epoch, train_loss, train_loss_smooth,
  valid_loss, valid_rmse, valid_mae, lr_end (the last step's lr), seconds).
  """
  state: TrainState
  history: list[dict[str, float]]
  compile_seconds: float
  train_seconds: float
  samples_per_second: float
  stopped: bool = False  # stop_requested ended the run early


def smooth_losses(losses: np.ndarray, start: float, count: int,
                  beta: float = 0.98) -> tuple[float, int, float]:
  """fastai's printed train loss: a debiased moving average over steps.

  Returns (raw average, steps so far, debiased value) to carry across epochs.
  """
  avg = start
  for loss in losses.astype(np.float64):
    avg = beta * avg + (1 - beta) * loss
  count += len(losses)
  return avg, count, avg / (1 - beta**count)


def wait_with_progress(x: jax.Array, label: str,
                       expected_s: float | None) -> None:
  """Blocks until x is computed, drawing a progress bar if it takes a while.

  The compiled epoch runs asynchronously; progress is its elapsed time
  against the previous epoch's duration.
  """
  start = time.perf_counter()
  bar = None
  while not x.is_ready():
    time.sleep(0.02)
    elapsed = time.perf_counter() - start
    if bar is None and elapsed > 1.0:
      bar = Bar(label, expected_s)
    if bar is not None:
      bar.update(elapsed, f"{elapsed:.0f}s")
  if bar is not None:
    bar.close(f"{time.perf_counter() - start:.1f}s")


def train_bytes(model: nn.Module, data: CollabData, batch_size: int) -> int:
  """Device bytes one run needs, roughly: weights, Adam's two moments,
  gradients and updates (5 copies of the parameters, in their dtype), the
  ratings on the device and an epoch's batch indices."""
  rows = data.train.size + data.valid.size
  per_row = 4 * (3 + (data.train.times is not None))
  return 5 * models.param_bytes(model) + per_row * rows + 4 * data.train.size


def available_bytes(device=None) -> int:
  """Free memory of the device (its allocator's limit on accelerators, the
  host's available memory on the CPU)."""
  device = device or jax.local_devices()[0]
  try:
    return int(device.memory_stats()["bytes_limit"])
  except (AttributeError, KeyError, TypeError, NotImplementedError,
          jax.errors.JaxRuntimeError):
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_memory(model: nn.Module, data: CollabData, batch_size: int,
                 replicas: int = 1) -> None:
  """Refuses, with the numbers, a run that will not fit on the device."""
  need = replicas * train_bytes(model, data, batch_size)
  have = available_bytes()
  if need > have:
    raise UserError(
        f"training needs about {need / 2**30:.1f} GiB on the device "
        f"({models.count_params(model):,} parameters x 5 copies for "
        f"weights, Adam moments, gradients and updates, plus "
        f"{data.train.size + data.valid.size:,} ratings) but only "
        f"{have / 2**30:.1f} GiB is free; use a smaller --n_factors or "
        "--layers, --param_dtype=bfloat16 (half the bytes), --mesh to "
        "shard the tables over devices, fewer replicas (--chunk), or less "
        "data")


OPTIMIZERS = ("adamw",) + sparse.KINDS


def make_optimizer(model: nn.Module, config: TrainConfig, total_steps: int):
  """fastai's dense AdamW, or a row-wise optimiser, under the one cycle."""
  kernel = row_kernel(model, config)
  if config.optimizer == "adamw":
    return optim.one_cycle_adamw(
        config.lr, config.wd, total_steps, pct_start=config.pct_start,
        div=config.div, div_final=config.div_final, moms=config.moms)
  if config.optimizer not in OPTIMIZERS:
    raise UserError(f"--optimizer={config.optimizer} must be one of "
                    f"{', '.join(OPTIMIZERS)}")
  if not sparse.supports(model):
    raise UserError(f"--optimizer={config.optimizer} works with dot, "
                    "dot_bias, collab_nn and embedding_nn, not side_nn")
  return sparse.SparseOptimizer(
      config.optimizer, total_steps, peak_lr=config.lr,
      weight_decay=config.wd, pct_start=config.pct_start, div=config.div,
      div_final=config.div_final, moms=tuple(config.moms), kernel=kernel)


ROW_KERNELS = ("xla", "cpp")


def row_kernel(model: nn.Module, config: TrainConfig) -> str:
  """config.row_kernel, checked: 'cpp' needs a row-wise optimiser, the CPU
  backend, float32 tables and the kernels built (`jaxcf.rowkernels`)."""
  if config.row_kernel not in ROW_KERNELS:
    raise UserError(f"--row_kernel={config.row_kernel} must be one of "
                    f"{', '.join(ROW_KERNELS)}")
  if config.row_kernel == "cpp":
    if config.optimizer not in sparse.KINDS:
      raise UserError("--row_kernel=cpp runs a row-wise optimiser's updates;"
                      f" use it with --optimizer={' or '.join(sparse.KINDS)}")
    try:
      rowkernels.check(model.param_dtype)
    except rowkernels.Unavailable as e:
      raise UserError(f"--row_kernel=cpp: {e}; use --row_kernel=xla") from e
  return config.row_kernel


class Diverged(UserError):
  """The training loss became NaN or infinite."""


def fit(model: nn.Module, data: CollabData, config: TrainConfig, *,
        on_epoch: Callable[[dict[str, float]], None] | None = None,
        on_losses: Callable[[np.ndarray], None] | None = None,
        log: Callable[[str], None] | None = print,
        checkpoints=None, checkpoint_every: int = 1,
        chunk_steps: int | None = None,
        stop_requested: Callable[[], bool] | None = None,
        mesh=None, shard_data: bool = False) -> FitResult:
  """Trains `model` on `data.train` and evaluates on `data.valid` each epoch.

  Args:
    model: a Flax module taking (users, items, train).
    data: from `jaxcf.data.prepare`.
    config: epochs, lr, wd, batch size, seed, schedule.
    on_epoch: called with each epoch's metrics dict (after a resume, first
      with the restored epochs' ones).
    on_losses: called with each epoch's per-step training losses [steps].
    log: where progress lines go (None: silent).
    checkpoints: a `resume.RunCheckpoints`: the run continues from its
      latest checkpoint, and saves one every `checkpoint_every` epochs and
      at the end.
    chunk_steps: run each epoch this many steps per compiled call (None: the
      whole epoch in one); with checkpoints, one is saved after each chunk,
      so long epochs can resume mid-way.
    stop_requested: polled after each call; when it says so, the run
      checkpoints and returns early (FitResult.stopped).
    mesh: a `jax.sharding.Mesh` with axes ('data', 'model') to train over
      (see `jaxcf.sharding`); the model's tables must have been created with
      `sharding.pad_rows` rows.
    shard_data: with a mesh, each 'data' shard keeps and shuffles its own
      training rows (`sharding.shard_rows`); always so with several
      processes.

  Raises:
    Diverged: a NaN or infinite training loss; nothing of that epoch is
      saved.
  """
  n = data.train.size
  # With data shards (several processes, or shard_data) each of the mesh's D
  # data shards draws bs / D rows a step from its own n // D rows.
  shards = mesh.shape["data"] if mesh is not None and (
      shard_data or jax.process_count() > 1) else None
  if mesh is not None:
    sharding.check_batch(config.batch_size, mesh)
    if config.row_kernel != "xla":
      raise UserError("--row_kernel=cpp runs on one device; drop --mesh")
  steps = (n // shards) // (config.batch_size // shards) if shards else (
      n // config.batch_size)
  if steps == 0:
    raise UserError(f"--bs={config.batch_size} is larger than the "
                    f"{n} training rows; use a smaller batch size")
  tx = make_optimizer(model, config, steps * config.epochs)
  check_memory(model, data, config.batch_size)
  init_key, order_key = jax.random.split(jax.random.key(config.seed))
  state = create_train_state(model, tx, init_key,
                             model_constants(model, data))
  say = log or (lambda _: None)
  chunk = min(chunk_steps or steps, steps)
  history, ema, ema_count = [], 0.0, 0
  first_epoch, first_done, partial = 0, 0, []
  restored = checkpoints.restore(state) if checkpoints else None
  if restored:
    state, _, meta = restored
    history, (ema, ema_count) = meta["history"], meta["ema"]
    first_epoch, first_done, partial = (meta["epoch"], meta["done"],
                                        meta["partial"])
    if first_done == steps:
      first_epoch, first_done, partial = first_epoch + 1, 0, []
    say(f"resuming at epoch {first_epoch}, step {first_done} of {steps}, "
        f"from {checkpoints.directory}")

  t0 = time.perf_counter()
  order = lambda epoch: epoch_batches(order_key, epoch, n, config.batch_size,
                                      config.sampling)
  train, valid, out_shardings, put = data.train, data.valid, None, None
  epoch_fn = train_epoch
  if mesh is not None:
    shardings = sharding.state_sharding(state, mesh,
                                        (model.n_users, model.n_items))
    state = sharding.put(state, shardings)
    train, valid = sharding.put((train, valid), sharding.replicated(mesh))
    out_shardings = (shardings, sharding.replicated(mesh))
    put = lambda rows: jax.device_put(rows, sharding.batch_sharding(mesh))
  if shards:
    train = sharding.shard_rows(data.train, mesh)
    order = lambda epoch: sharding.shard_batches(
        order_key, epoch, n // shards, mesh, config.batch_size,
        config.sampling, epoch_batches)
    epoch_fn = functools.partial(train_epoch, take=sharding.local_take(mesh))
    say(f"{shards} data shards of {n // shards:,} training rows each, "
        f"{config.batch_size // shards} rows a step from each"
        + (f" ({n % shards} rows left over)" if n % shards else ""))
  put = put or jax.device_put
  hugepages.advise((train, state))  # random rows: fewer TLB misses
  rows = order(first_epoch)
  runner = jax.jit(epoch_fn, donate_argnums=0, out_shardings=out_shardings)
  compiled = runner.lower(state, train, put(rows[:chunk])).compile()
  run = lambda st, part: (compiled if len(part) == chunk else runner)(
      st, train, put(part))
  run_eval = jax.jit(evaluate, static_argnums=2).lower(
      state, valid, config.eval_batch_size).compile()
  compile_seconds = time.perf_counter() - t0
  say(f"compiled the train epoch and evaluation in {compile_seconds:.2f}s "
      f"({steps} steps of {config.batch_size} per epoch"
      + (f", run {chunk} at a time)" if chunk < steps else ")"))
  say(f"{'epoch':<6}{'train_loss':>11}{'valid_loss':>11}{'valid_rmse':>11}"
      f"{'time':>9}")
  for row in history:
    _say_row(say, row)
    if on_epoch:
      on_epoch(row)

  def save(epoch, done, losses):
    checkpoints.save(epoch * steps + done, state, {
        "history": history, "ema": [ema, ema_count], "epoch": epoch,
        "done": done, "partial": [float(x) for x in losses]})
    return f"epoch {epoch}, step {done}"

  train_seconds, last, stopped, steps_run = 0.0, None, False, 0
  saved = "none"
  for epoch in range(first_epoch, config.epochs):
    start = time.perf_counter()
    done = first_done if epoch == first_epoch else 0
    parts = [np.asarray(partial, np.float32)] if done else []
    while done < steps:
      part = rows[done:done + chunk]
      state, losses = run(state, part)
      if done + len(part) == steps and epoch + 1 < config.epochs:
        rows_next = order(epoch + 1)  # shuffle while the device works
      if log:
        wait_with_progress(losses, f"epoch {epoch}", last)
      losses = np.asarray(losses)
      if not np.isfinite(losses).all():
        bad = done + int(np.argmin(np.isfinite(losses)))
        raise Diverged(
            f"training diverged in epoch {epoch} at step {bad} of {steps} "
            f"(loss {losses[bad - done]}); lower --lr (now {config.lr}). "
            f"Last good checkpoint: {saved}")
      parts.append(losses)
      done += len(part)
      steps_run += len(part)
      stopped = bool(stop_requested and stop_requested())
      if checkpoints and done < steps and (stopped or chunk < steps):
        saved = save(epoch, done, np.concatenate(parts))
      if stopped and done < steps:
        break
    if done < steps:
      break
    rows = rows_next if epoch + 1 < config.epochs else rows
    losses = np.concatenate(parts)
    if on_losses:
      on_losses(losses)
    train_time = time.perf_counter() - start
    metrics = {k: float(v) for k, v in run_eval(state, valid).items()}
    seconds = time.perf_counter() - start
    train_seconds += train_time
    last = train_time
    ema, ema_count, smooth = smooth_losses(losses, ema, ema_count)
    row = {"epoch": epoch, "train_loss": float(losses.mean()),
           "train_loss_smooth": smooth, "valid_loss": metrics["mse"],
           "valid_rmse": metrics["rmse"], "valid_mae": metrics["mae"],
           "lr_end": float(state.opt_state.lr), "seconds": seconds}
    history.append(row)
    _say_row(say, row)
    if on_epoch:
      on_epoch(row)
    stopped = bool(stop_requested and stop_requested())
    if checkpoints and (stopped or chunk < steps or epoch + 1 == config.epochs
                        or (epoch + 1) % checkpoint_every == 0):
      saved = save(epoch, steps, [])
    if stopped:
      break
  return FitResult(state=state, history=history,
                   compile_seconds=compile_seconds,
                   train_seconds=train_seconds,
                   samples_per_second=steps_run * config.batch_size /
                   max(train_seconds, 1e-9),
                   stopped=stopped)


def _say_row(say, row) -> None:
  say(f"{row['epoch']:<6}{row['train_loss']:>11.6f}{row['valid_loss']:>11.6f}"
      f"{row['valid_rmse']:>11.6f}{row['seconds']:>8.2f}s")
