"""Minibatch training of a group of replicas in one compiled program.

The replicas of a group (one `Spec.group_key`, so one program) are stacked
on a leading axis: `init_replicas` gives replica r the initialisation its
solo run would have, with its own peak lr and weight decay in the optimiser
state and its own y_range among the model's constants; `train_group` runs
`steps.train_epoch` under `jax.vmap` through the one loop (`jaxcf.loop`),
each replica reading its seed's data order. `jaxcf.sweep` groups replicas
and calls this (its "batches" trainer), as it calls `jaxcf.fullbatch` and
`jaxcf.gibbs` for the other families.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxcf import keys, loop, placement, steps, training
from jaxcf.data import CollabData
from jaxcf.errors import UserError


def init_replicas(model, tx, replicas: Sequence,
                  constants: dict | None = None) -> steps.TrainState:
  """Stacked train states: replica r initialised exactly as `fit` would.

  constants: side-feature tables shared by every replica.
  """
  init_keys = jnp.stack([keys.run_keys(r.seed)[0] for r in replicas])
  lrs = jnp.array([r.lr for r in replicas], jnp.float32)
  wds = jnp.array([r.wd for r in replicas], jnp.float32)

  def one(key, lr, wd):
    state = steps.create_train_state(model, tx, key, constants)
    return state.replace(opt_state=state.opt_state._replace(
        peak_lr=lr, weight_decay=wd))

  # One compiled program (cached across runs), not op by op: the same
  # values, about half the time of a cold sweep's initialisation.
  state = jax.jit(jax.vmap(one))(init_keys, lrs, wds)
  if replicas[0].y_range is not None:
    ranges = jnp.array([r.y_range for r in replicas], jnp.float32)
    consts = {**state.model_state["constants"], "y_range": ranges}
    state = state.replace(model_state={**state.model_state,
                                       "constants": consts})
  return state


def _order_seeds(replicas: Sequence, epochs: int) -> dict:
  """Each distinct seed's `steps.epoch_seeds` for its data order."""
  return {r.seed: steps.epoch_seeds(keys.run_keys(r.seed)[1], epochs)
          for r in replicas}


def _epoch_batches(replicas, seeds, epoch, n, config) -> np.ndarray:
  """[replicas, steps, batch] rows; replicas with one seed share an order."""
  orders = {s: steps.epoch_order(seeds[s][epoch], n, config.batch_size,
                                 config.sampling)
            for s in {r.seed for r in replicas}}
  return np.stack([orders[r.seed] for r in replicas])


def train_group(replicas: Sequence, data: CollabData,
                config: training.TrainConfig, run_hooks: Sequence[loop.Hook],
                log: Callable[[str], None] | None):
  """Trains minibatch replicas of one group together (vmapped scanned
  epochs). Returns (loop outcome, validation predictions [R, n_valid],
  variables shared by all replicas (none here), compile seconds)."""
  if config.row_kernel != "xla":
    raise UserError(f"--row_kernel={config.row_kernel} trains one model "
                    "(the kernels do not vmap over replicas)")
  model = replicas[0].create_model(data)
  placement.check_memory(model, data, config.batch_size, len(replicas))
  n = data.train.size
  per_epoch = placement.steps_per_epoch(n, config.batch_size, None)
  tx = training.make_optimizer(model, config, per_epoch * config.epochs)
  state = init_replicas(model, tx, replicas,
                        training.model_constants(model, data))
  seeds = _order_seeds(replicas, config.epochs)
  epoch_rows = {}

  def inputs(step: int, count: int):
    epoch, into_epoch = divmod(step, per_epoch)
    if epoch not in epoch_rows:
      epoch_rows.clear()
      epoch_rows[epoch] = _epoch_batches(replicas, seeds, epoch, n, config)
    return epoch_rows[epoch][:, into_epoch:into_epoch + count]

  start = time.perf_counter()
  run_epoch, run_eval = loop.compile_together(
      jax.jit(jax.vmap(steps.train_epoch, in_axes=(0, None, 0)),
              donate_argnums=0).lower(state, data.train,
                                      inputs(0, per_epoch)),
      jax.jit(jax.vmap(steps.evaluate, in_axes=(0, None, None)),
              static_argnums=2).lower(state, data.valid,
                                      config.eval_batch_size))
  compile_seconds = time.perf_counter() - start
  (log or (lambda _: None))(
      f"compiled {len(replicas)} replicas of {type(model).__name__} in "
      f"{compile_seconds:.2f}s")
  program = loop.Program(
      steps_per_epoch=per_epoch, epochs=config.epochs, chunk=per_epoch,
      report_every=1, inputs=inputs,
      train=lambda state, rows: run_epoch(state, data.train, rows),
      evaluate=lambda state: run_eval(state, data.valid),
      lr=lambda state: state.opt_state.lr, replicas=len(replicas))
  outcome = loop.train_program(program, state, run_hooks,
                               show_progress=log is not None)
  predict = jax.jit(jax.vmap(steps.predict_all,
                             in_axes=(0, None, None, None)), static_argnums=3)
  preds = predict(outcome.state, data.valid.users, data.valid.items,
                  config.eval_batch_size)
  return outcome, preds, {}, compile_seconds
