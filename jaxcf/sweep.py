"""Many replicas in one compiled program: sweeps, seeds and ensembles.

A `Replica` is a model spec (`models.Spec`) plus its learning rate, weight
decay and seed. Replicas whose specs compile to the same program (the
family's `Spec.group_key`: the settings that change shapes) form a group; a
group's states are stacked on a leading axis and trained together by the
family's trainer under `jax.vmap` — for minibatch families the very
`steps.train_epoch` a single run uses, for AutoRec `jaxcf.fullbatch` — all
through the one loop (`jaxcf.loop`). Per-replica lr and wd live in the
optimiser state, y_range and dropout rates in the model's variables, and
each replica's seed gives it the initialisation and data order it would
have alone, so a replica in a sweep reproduces its solo run to float32
rounding.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxcf import (fullbatch, gibbs, hooks, loop, minibatch, models,
                   placement, sharding, steps)
from jaxcf.data import CollabData
from jaxcf.errors import UserError


@dataclasses.dataclass(frozen=True)
class Replica(models.Spec):
  """One model of a sweep: a spec, its peak lr, weight decay and seed.
  Settings every replica shares are in `training.TrainConfig`."""
  lr: float = 5e-3
  wd: float = 0.1
  seed: int = 42

  def __post_init__(self):
    super().__post_init__()
    for name, ok, rule in (
        ("lr", math.isfinite(self.lr) and self.lr > 0, "a positive number"),
        ("wd", math.isfinite(self.wd) and self.wd >= 0,
         "a number >= 0"),
        ("seed", isinstance(self.seed, int) and 0 <= self.seed < 2**32,
         "an integer in [0, 2^32)")):
      if not ok:
        raise UserError(f"--{name}={getattr(self, name)} must be {rule}")

  @property
  def spec(self) -> models.Spec:
    return models.Spec(**{f.name: getattr(self, f.name)
                          for f in dataclasses.fields(models.Spec)})

  def hparams(self) -> dict[str, Any]:
    """The replica as JSON: its settings as its family reads them (None for
    those it ignores), lr, wd and seed."""
    return {**self.normalised().to_json(), "lr": self.lr, "wd": self.wd,
            "seed": self.seed}

  def create_model(self, data: CollabData, mesh=None):
    """The module for `data`; with a mesh, tables padded for its 'model'
    axis (see `jaxcf.sharding`)."""
    family = self.family
    side = data.side.spec if family.needs_side and data.side else None
    if mesh is not None and family.needs_side:
      raise UserError(f"--mesh does not support {self.model} yet")
    return models.build(self, sharding.pad_rows(data.n_users, mesh),
                        sharding.pad_rows(data.n_items, mesh), side)


def grid(**values: Sequence) -> list[Replica]:
  """The cartesian product of lists of Replica fields, e.g.

  grid(lr=[1e-3, 5e-3], wd=[0.01, 0.1], seed=[0, 1]) -> 8 replicas.

  Fields not given keep Replica's defaults. Each replica is normalised (its
  family's defaults filled in, settings it ignores set to None) and
  duplicates are dropped, so `model=['dot_bias', 'collab_nn'],
  n_factors=[8, 16]` trains one collab_nn; a list over a setting that no
  model in the grid reads is refused.
  """
  names = [f.name for f in dataclasses.fields(Replica) if f.name in values]
  unknown = set(values) - set(names)
  if unknown:
    raise ValueError(f"unknown Replica fields: {sorted(unknown)}")
  families = {models.get(m) for m in values.get("model", ["dot_bias"])}
  for name in names:
    if (len(values[name]) > 1 and name in models.registry.CHECKS
        and not any(name in f.settings for f in families)):
      raise UserError(
          f"--{name} does not apply to --model="
          f"{','.join(sorted(f.name for f in families))}; give one value")
  out = []
  for combo in itertools.product(*(values[n] for n in names)):
    replica = Replica(**dict(zip(names, combo))).normalised()
    if replica not in out:
      out.append(replica)
  return out


@dataclasses.dataclass
class ReplicaResult:
  """A trained replica: its rows (`jaxcf.loop`), its variables (host numpy)
  and its final validation predictions [n_valid]."""
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
    """Replica indices from the lowest final validation loss up (a replica
    that diverged, its loss NaN, last)."""
    loss = lambda i: self.results[i].valid_loss
    return sorted(range(len(self.results)),
                  key=lambda i: (not math.isfinite(loss(i)), loss(i)))


def auto_chunk(model, data: CollabData, batch_size: int, n: int) -> int:
  """How many replicas to compile together: what fits in half the memory."""
  per_replica = placement.train_bytes(model, data, batch_size)
  fit = (placement.available_bytes() // 2) // max(1, per_replica)
  return int(max(1, min(n, fit)))


TRAINERS = {"batches": minibatch.train_group, "full_batch": fullbatch.train_group,
            "gibbs": gibbs.train_group}


def _results(replicas, outcome: loop.Outcome, preds, shared: dict
             ) -> list[ReplicaResult]:
  """One ReplicaResult per replica from a stacked outcome; shared: model
  variable collections every replica shares (not stacked)."""
  state = outcome.state
  params, model_state, preds = jax.device_get((state.params,
                                               state.model_state, preds))
  results = []
  for r, replica in enumerate(replicas):
    own = jax.tree.map(lambda x, r=r: x[r], model_state)
    for name, values in shared.items():
      own[name] = {**own.get(name, {}), **jax.device_get(values)}
    results.append(ReplicaResult(
        replica=replica, history=outcome.progress.histories[r],
        params=jax.tree.map(lambda x, r=r: x[r], params), model_state=own,
        predictions=np.asarray(preds[r])))
  return results


def ensemble_score(results: Sequence[ReplicaResult], members: Sequence[int],
                   ratings) -> dict[str, Any]:
  """Validation metrics of the mean prediction of `members` (results with
  `predictions` [n_valid])."""
  mean = np.mean([results[i].predictions for i in members], axis=0)
  metrics = steps.error_metrics(jnp.asarray(mean, jnp.float32),
                                jnp.asarray(ratings))
  return {"members": list(members),
          **{f"valid_{k if k != 'mse' else 'loss'}": float(v)
             for k, v in metrics.items()}}


def train_sweep(replicas: Sequence[Replica], data: CollabData, config, *,
                chunk: int | None = None, ensemble_top: int | None = None,
                log: Callable[[str], None] | None = print,
                on_epoch: Callable[[int, dict], None] | None = None
                ) -> SweepResult:
  """Trains every replica, grouped by compiled program and chunked to fit
  in memory.

  Args:
    replicas: the configurations (e.g. from `grid`); config's own lr, wd and
      seed are not used.
    data: the data, shared by all replicas.
    config: a `training.TrainConfig`: epochs, batch size, schedule shape,
      sampling, eval_every (full-batch families).
    chunk: at most this many replicas per compiled program; None chooses
      by memory (`auto_chunk`).
    ensemble_top: None for no ensemble; 0 averages all replicas; k > 0 the k
      with the lowest final validation loss. Choosing members by the same
      validation loss that scores them flatters the ensemble: pick them on
      another split for an honest number.
    log: progress lines (None: silent).
    on_epoch: called with (replica index, row) for every row.
  """
  if not replicas:
    raise UserError("the sweep has no replicas")
  if chunk is not None and chunk < 1:
    raise UserError(f"--chunk={chunk} must be at least 1")
  say = log or (lambda _: None)
  groups: dict[tuple, list[int]] = {}
  for i, r in enumerate(replicas):
    groups.setdefault(r.group_key(), []).append(i)

  results: list[ReplicaResult | None] = [None] * len(replicas)
  compile_seconds = train_seconds = samples = 0.0
  for members in groups.values():
    first = replicas[members[0]]
    model = first.create_model(data)
    size = chunk or auto_chunk(model, data, config.batch_size, len(members))
    pieces = [members[k:k + size] for k in range(0, len(members), size)]
    trainer = TRAINERS[first.family.trainer]
    for p, piece in enumerate(pieces):
      say(f"group {_describe(first)}: replicas {piece[0]}..{piece[-1]} "
          f"(chunk {p + 1} of {len(pieces)})")
      run_hooks = [hooks.SweepTable(say)] if log else []
      if on_epoch:
        run_hooks.append(hooks.OnRow(
            lambda r, row, piece=piece: on_epoch(piece[r], row)))
      group = [replicas[i] for i in piece]
      outcome, preds, shared, seconds = trainer(group, data, config,
                                                run_hooks, log)
      compile_seconds += seconds
      train_seconds += outcome.train_seconds
      if first.family.trainer == "batches":
        samples += outcome.steps_run * config.batch_size * len(piece)
      for i, res in zip(piece, _results(group, outcome, preds, shared)):
        results[i] = res

  sweep = SweepResult(results=results, ensemble=None,
                      compile_seconds=compile_seconds,
                      train_seconds=train_seconds,
                      samples_per_second=samples / max(train_seconds, 1e-9))
  if ensemble_top is not None:
    ranking = [i for i in sweep.ranking()
               if math.isfinite(results[i].valid_loss)]
    if len(ranking) < len(results):
      say(f"{len(results) - len(ranking)} diverged replica(s) left out of "
          "the ensemble")
    members = ranking if ensemble_top == 0 else ranking[:ensemble_top]
    if members:
      sweep.ensemble = ensemble_score(results, sorted(members),
                                      data.valid.ratings)
  return sweep


def _describe(replica: Replica) -> str:
  """The group's compiled settings that differ from Spec's defaults, e.g.
  'dot_bias n_factors=8'."""
  spec = replica.normalised()
  family = spec.family
  words = [spec.model]
  for name in sorted(family.settings - family.in_state):
    value = getattr(spec, name)
    if value == getattr(models.Spec(), name) and name != "layers":
      continue
    text = ",".join(map(str, value)) if isinstance(value, tuple) else value
    words.append(f"{name}={text}")
  if "y_range" in family.settings and spec.y_range is None:
    words.append("y_range=none")
  return " ".join(words)
