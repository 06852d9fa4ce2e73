"""Many replicas in one compiled program: sweeps, seeds and ensembles.

Replicas differ in learning rate, weight decay, seed and y_range; those that
also share their shapes (model, n_factors, layers) form a group. A group's
states are stacked on a leading axis and trained by `jax.vmap` of the very
`train_epoch` that `training.fit` runs: one compiled program, one call per
epoch for all of them. Per-replica lr and wd live in the optimiser state,
y_range in the model's 'constants', and each replica's seed gives it the
initialisation and data order it would have alone, so a replica in a sweep
reproduces its solo run to float32 rounding.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxcf import models, sharding, training
from jaxcf.data import CollabData
from jaxcf.errors import UserError


@dataclasses.dataclass(frozen=True)
class Replica:
  """One configuration of a sweep. Shared settings are in TrainConfig."""
  model: str = "dot_bias"
  n_factors: int = 50
  layers: tuple[int, ...] | None = None
  y_range: models.YRange = (0.0, 5.5)
  lr: float = 5e-3
  wd: float = 0.1
  seed: int = 42
  id_dropout: float = 0.0  # side_nn only: the share of user ids hidden
  param_dtype: str = "float32"  # or "bfloat16": weights and moments
  compute_dtype: str = "float32"  # or "bfloat16": lookups and layers

  @property
  def shape_key(self) -> tuple:
    """Replicas with equal keys share one compiled program: one group."""
    dot = self.model in ("dot", "dot_bias")
    return (self.model, self.n_factors if dot else None,
            None if dot else self.layers, self.y_range is None,
            self.id_dropout if self.model == "side_nn" else None,
            self.param_dtype, self.compute_dtype)

  def hparams(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["layers"] = list(self.layers) if self.layers else None
    out["y_range"] = list(self.y_range) if self.y_range else None
    return out

  def create_model(self, data: CollabData, mesh=None):
    """The module for `data`; with a mesh, tables padded for its 'model'
    axis (see `jaxcf.sharding`)."""
    side = {}
    if self.model == "side_nn":
      if data.side is None:
        raise UserError("--model=side_nn needs side features (--side)")
      side = {**data.side.spec, "id_dropout": self.id_dropout}
    if mesh is not None and side:
      raise UserError("--mesh does not support side_nn yet")
    return models.create(self.model, sharding.pad_rows(data.n_users, mesh),
                         sharding.pad_rows(data.n_items, mesh),
                         n_factors=self.n_factors, y_range=self.y_range,
                         layers=self.layers, param_dtype=self.param_dtype,
                         compute_dtype=self.compute_dtype, **side)


def grid(**values: Sequence) -> list[Replica]:
  """The cartesian product of lists of Replica fields, e.g.

  grid(lr=[1e-3, 5e-3], wd=[0.01, 0.1], seed=[0, 1]) -> 8 replicas.
  Fields not given keep Replica's defaults.
  """
  names = [f.name for f in dataclasses.fields(Replica) if f.name in values]
  unknown = set(values) - set(names)
  if unknown:
    raise ValueError(f"unknown Replica fields: {sorted(unknown)}")
  return [Replica(**dict(zip(names, combo)))
          for combo in itertools.product(*(values[n] for n in names))]


@dataclasses.dataclass
class ReplicaResult:
  """A trained replica: its metrics per epoch, its weights (host numpy) and
  its final validation predictions [n_valid]."""
  replica: Replica
  history: list[dict[str, float]]
  params: Any
  model_state: Any
  predictions: np.ndarray

  @property
  def valid_loss(self) -> float:
    return self.history[-1]["valid_loss"]


@dataclasses.dataclass
class SweepResult:
  """Results in the order of the replicas given, and the ensemble's score.

  ensemble: None, or {members (indices), valid_loss, valid_rmse, valid_mae}.
  """
  results: list[ReplicaResult]
  ensemble: dict[str, Any] | None
  compile_seconds: float
  train_seconds: float
  samples_per_second: float  # all replicas together

  def ranking(self) -> list[int]:
    """Replica indices from the lowest final validation loss up."""
    return sorted(range(len(self.results)),
                  key=lambda i: self.results[i].valid_loss)


def auto_chunk(model, data: CollabData, batch_size: int, n: int) -> int:
  """How many replicas to compile together: what fits in half the memory."""
  per_replica = training.train_bytes(model, data, batch_size)
  fit = (training.available_bytes() // 2) // max(1, per_replica)
  return int(max(1, min(n, fit)))


def init_replicas(model, tx, replicas: Sequence[Replica],
                  constants: dict | None = None) -> training.TrainState:
  """Stacked train states: replica r initialised exactly as `fit` would.

  constants: side-feature tables shared by every replica.
  """
  keys = jnp.stack([jax.random.split(jax.random.key(r.seed))[0]
                    for r in replicas])
  lrs = jnp.array([r.lr for r in replicas], jnp.float32)
  wds = jnp.array([r.wd for r in replicas], jnp.float32)

  def one(key, lr, wd):
    state = training.create_train_state(model, tx, key, constants)
    return state.replace(opt_state=state.opt_state._replace(
        peak_lr=lr, weight_decay=wd))

  state = jax.vmap(one)(keys, lrs, wds)
  if replicas[0].y_range is not None:
    ranges = jnp.array([r.y_range for r in replicas], jnp.float32)
    consts = {**state.model_state["constants"], "y_range": ranges}
    state = state.replace(model_state={**state.model_state,
                                       "constants": consts})
  return state


def _order_keys(replicas: Sequence[Replica]) -> list[jax.Array]:
  return [jax.random.split(jax.random.key(r.seed))[1] for r in replicas]


def _epoch_batches(keys, epoch, n, config) -> np.ndarray:
  """[replicas, steps, batch] rows; replicas with one seed share an order."""
  cache = {}
  out = []
  for key in keys:
    tag = tuple(np.asarray(jax.random.key_data(key)).tolist())
    if tag not in cache:
      cache[tag] = training.epoch_batches(key, epoch, n, config.batch_size,
                                          config.sampling)
    out.append(cache[tag])
  return np.stack(out)


def train_chunk(replicas: Sequence[Replica], data: CollabData,
                config: training.TrainConfig, *,
                log: Callable[[str], None] | None = print,
                on_epoch: Callable[[int, dict], None] | None = None
                ) -> tuple[list[ReplicaResult], float, float]:
  """Trains replicas of one shape together; returns (results, compile
  seconds, train seconds). on_epoch(index in chunk, row) sees every row."""
  if config.row_kernel != "xla":
    raise UserError(f"--row_kernel={config.row_kernel} trains one model "
                    "(the kernels do not vmap over replicas)")
  model = replicas[0].create_model(data)
  training.check_memory(model, data, config.batch_size, len(replicas))
  n = data.train.size
  steps = n // config.batch_size
  if steps == 0:
    raise UserError(f"--bs={config.batch_size} is larger than the {n} "
                    "training rows; use a smaller batch size")
  tx = training.make_optimizer(model, config, steps * config.epochs)
  state = init_replicas(model, tx, replicas,
                        training.model_constants(model, data))
  keys = _order_keys(replicas)

  t0 = time.perf_counter()
  batches = _epoch_batches(keys, 0, n, config)
  run_epoch = jax.jit(jax.vmap(training.train_epoch, in_axes=(0, None, 0)),
                      donate_argnums=0).lower(state, data.train,
                                              batches).compile()
  run_eval = jax.jit(jax.vmap(training.evaluate, in_axes=(0, None, None)),
                     static_argnums=2).lower(
                         state, data.valid, config.eval_batch_size).compile()
  compile_seconds = time.perf_counter() - t0
  say = log or (lambda _: None)
  say(f"compiled {len(replicas)} replicas of {model.__class__.__name__} in "
      f"{compile_seconds:.2f}s")
  say(f"{'epoch':<6}{'best':>10}{'median':>10}{'worst':>10}{'time':>9}"
      "   (valid loss over replicas)")

  histories = [[] for _ in replicas]
  train_seconds, last = 0.0, None
  for epoch in range(config.epochs):
    start = time.perf_counter()
    state, losses = run_epoch(state, data.train, batches)
    if epoch + 1 < config.epochs:
      batches = _epoch_batches(keys, epoch + 1, n, config)
    if log:
      training.wait_with_progress(losses, f"epoch {epoch}", last)
    losses = np.asarray(losses)
    last = time.perf_counter() - start
    train_seconds += last
    metrics = {k: np.asarray(v) for k, v in run_eval(state,
                                                     data.valid).items()}
    seconds = time.perf_counter() - start
    lrs = np.asarray(state.opt_state.lr)
    for r, history in enumerate(histories):
      row = {"epoch": epoch, "train_loss": float(losses[r].mean()),
             "valid_loss": float(metrics["mse"][r]),
             "valid_rmse": float(metrics["rmse"][r]),
             "valid_mae": float(metrics["mae"][r]), "lr_end": float(lrs[r]),
             "seconds": seconds}
      history.append(row)
      if on_epoch:
        on_epoch(r, row)
    valid = np.sort(metrics["mse"])
    say(f"{epoch:<6}{valid[0]:>10.6f}{np.median(valid):>10.6f}"
        f"{valid[-1]:>10.6f}{seconds:>8.2f}s")

  predict = jax.jit(jax.vmap(training.predict_all,
                             in_axes=(0, None, None, None)),
                    static_argnums=3)
  preds = np.asarray(predict(state, data.valid.users, data.valid.items,
                             config.eval_batch_size))
  params, model_state = jax.device_get((state.params, state.model_state))
  results = [ReplicaResult(
      replica=rep, history=histories[r],
      params=jax.tree.map(lambda x, r=r: x[r], params),
      model_state=jax.tree.map(lambda x, r=r: x[r], model_state),
      predictions=preds[r]) for r, rep in enumerate(replicas)]
  return results, compile_seconds, train_seconds


def ensemble_score(results: Sequence[ReplicaResult], members: Sequence[int],
                   ratings) -> dict[str, Any]:
  """Validation metrics of the mean prediction of `members` (results with
  `predictions` [n_valid]: sweep or `jaxcf.autorec` results)."""
  mean = np.mean([results[i].predictions for i in members], axis=0)
  metrics = training.error_metrics(jnp.asarray(mean, jnp.float32),
                                   jnp.asarray(ratings))
  return {"members": list(members),
          **{f"valid_{k if k != 'mse' else 'loss'}": float(v)
             for k, v in metrics.items()}}


def train_sweep(replicas: Sequence[Replica], data: CollabData,
                config: training.TrainConfig, *, chunk: int | None = None,
                ensemble_top: int | None = None,
                log: Callable[[str], None] | None = print,
                on_epoch: Callable[[int, dict], None] | None = None
                ) -> SweepResult:
  """Trains every replica, grouped by shape and chunked to fit in memory.

  Args:
    replicas: the configurations (e.g. from `grid`); config's own lr, wd and
      seed are not used.
    data: the data, shared by all replicas.
    config: epochs, batch size, schedule shape, sampling.
    chunk: at most this many replicas per compiled program; None chooses
      by memory (`auto_chunk`).
    ensemble_top: None for no ensemble; 0 averages all replicas; k > 0 the k
      with the lowest final validation loss. Choosing members by the same
      validation loss that scores them flatters the ensemble: pick them on
      another split for an honest number.
    log: progress lines (None: silent).
    on_epoch: called with (replica index, metrics row) for every row.
  """
  if not replicas:
    raise UserError("the sweep has no replicas")
  if chunk is not None and chunk < 1:
    raise UserError(f"--chunk={chunk} must be at least 1")
  say = log or (lambda _: None)
  groups: dict[tuple, list[int]] = {}
  for i, r in enumerate(replicas):
    groups.setdefault(r.shape_key, []).append(i)

  results: list[ReplicaResult | None] = [None] * len(replicas)
  compile_seconds = train_seconds = 0.0
  for key, members in groups.items():
    model = replicas[members[0]].create_model(data)
    size = chunk or auto_chunk(model, data, config.batch_size, len(members))
    pieces = [members[k:k + size] for k in range(0, len(members), size)]
    for p, piece in enumerate(pieces):
      say(f"group {_describe(key)}: replicas {piece[0]}..{piece[-1]} "
          f"(chunk {p + 1} of {len(pieces)})")
      done, c, t = train_chunk(
          [replicas[i] for i in piece], data, config, log=log,
          on_epoch=(lambda r, row, piece=piece: on_epoch(piece[r], row))
          if on_epoch else None)
      compile_seconds += c
      train_seconds += t
      for i, res in zip(piece, done):
        results[i] = res

  sweep = SweepResult(results=results, ensemble=None,
                      compile_seconds=compile_seconds,
                      train_seconds=train_seconds, samples_per_second=0.0)
  steps = data.train.size // config.batch_size
  sweep.samples_per_second = (steps * config.batch_size * config.epochs *
                              len(replicas) / max(train_seconds, 1e-9))
  if ensemble_top is not None:
    ranking = sweep.ranking()
    members = ranking if ensemble_top == 0 else ranking[:ensemble_top]
    sweep.ensemble = ensemble_score(results, sorted(members),
                                    data.valid.ratings)
  return sweep


def _describe(key: tuple) -> str:
  model, n_factors, layers, no_range, id_dropout, param_dtype, _ = key
  parts = [model]
  if n_factors is not None:
    parts.append(f"n_factors={n_factors}")
  if layers is not None:
    parts.append(f"layers={','.join(map(str, layers))}")
  if no_range:
    parts.append("y_range=none")
  if id_dropout:
    parts.append(f"id_dropout={id_dropout}")
  if param_dtype != "float32":
    parts.append(f"param_dtype={param_dtype}")
  return " ".join(parts)
