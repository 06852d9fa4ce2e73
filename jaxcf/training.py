"""Training one model: `fit`, its settings (`TrainConfig`) and optimisers.

The pure pieces (state, step, scanned epoch, evaluation) are in
`jaxcf.steps`; the loop that runs them, with its hooks, in `jaxcf.loop`;
where the arrays live in `jaxcf.placement`. `fit` ties them together:

    state = create_train_state(model, optimizer, init_key)
    placed = placement.place(state, data, ...)          # devices, shards
    program, compiled = batch_program(placed, ...)      # epoch compiling
    loop.train_program(program, placed.state, hooks)    # epochs, rows
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcf import (hooks, keys, loop, models, optim, placement, rowkernels,
                   sharding, sparse, steps)
from jaxcf.data import CollabData
from jaxcf.errors import UserError
from jaxcf.models import tableinit
# The functional core, re-exported: most callers want it with `fit`.
from jaxcf.steps import (TrainState, create_train_state, epoch_batches,  # pylint: disable=unused-import
                         evaluate, predict, predict_all,
                         train_epoch, train_step)
from jaxcf.loop import smooth_losses  # pylint: disable=unused-import
from jaxcf.placement import train_bytes  # pylint: disable=unused-import


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """fastai's `fit_one_cycle(epochs, lr, wd=wd)` with a batch size and seed.

  optimizer: a dense one of `optim.DENSE` (fastai's AdamW by default) or a
  row-wise one of `sparse.KINDS`; row_kernel 'cpp' runs a row-wise
  optimiser's row traffic in C++ (`jaxcf.rowkernels`).
  """
  epochs: int = 5
  lr: float = 5e-3
  wd: float = 0.1
  batch_size: int = 64
  seed: int = 42
  pct_start: float = 0.25
  div: float = 25.0
  div_final: float = 1e5
  moms: tuple[float, float, float] = (0.95, 0.85, 0.95)
  sampling: str = "shuffle"  # or "replacement", see `steps.epoch_batches`
  optimizer: str = "adamw"
  eval_batch_size: int = steps.EVAL_BATCH
  row_kernel: str = "xla"
  eval_every: int = 1  # full-batch families: epochs between evaluations
  burn_in: int | None = None  # bpmf: sweeps before averaging (None: 1/4)


OPTIMIZERS = tuple(optim.DENSE) + sparse.KINDS
# A run's length and rates when its config leaves them out (the book's).
DEFAULTS = {"epochs": 5, "lr": 5e-3, "wd": 0.1}
ROW_KERNELS = ("xla", "cpp")


def make_optimizer(model: nn.Module, config: TrainConfig, total_steps: int):
  """The optimiser `config.optimizer` names, under the one cycle: an optax
  transformation, or a row-wise `sparse.SparseOptimizer` for the model's
  family's row tables."""
  if config.optimizer not in OPTIMIZERS:
    raise UserError(f"--optimizer={config.optimizer} must be one of "
                    f"{', '.join(OPTIMIZERS)}")
  kernel = row_kernel(model, config)
  schedule = {"pct_start": config.pct_start, "div": config.div,
              "div_final": config.div_final, "moms": tuple(config.moms)}
  if config.optimizer in optim.DENSE:
    return optim.one_cycle_optimizer(optim.DENSE[config.optimizer],
                                     config.lr, config.wd, total_steps,
                                     **schedule)
  family = models.family_of(model)
  if family.resize is None:
    rowwise = [n for n, f in models.FAMILIES.items() if f.resize]
    raise UserError(f"--optimizer={config.optimizer} works with "
                    f"{', '.join(rowwise)}, not {family.name}")
  return sparse.SparseOptimizer(
      config.optimizer, total_steps, tables=tuple(family.tables.items()),
      resize=family.resize, peak_lr=config.lr, weight_decay=config.wd,
      kernel=kernel, **schedule)


def plan(model: nn.Module, data: CollabData, config: TrainConfig, mesh=None,
         shard_data: bool = False):
  """(steps per epoch, optimiser) of a run, after every check that can
  refuse it: the batch over the mesh, the row kernel, the optimiser, the
  memory it needs."""
  if mesh is not None:
    sharding.check_batch(config.batch_size, mesh)
    if config.row_kernel != "xla":
      raise UserError("--row_kernel=cpp runs on one device; drop --mesh")
  per_epoch = placement.steps_per_epoch(
      data.train.size, config.batch_size,
      placement.data_shards(mesh, shard_data))
  tx = make_optimizer(model, config, per_epoch * config.epochs)
  placement.check_memory(model, data, config.batch_size)
  return per_epoch, tx


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
      rowkernels.check(getattr(model, "param_dtype", jnp.float32))
    except rowkernels.Unavailable as e:
      raise UserError(f"--row_kernel=cpp: {e}; use --row_kernel=xla") from e
  return config.row_kernel


def model_constants(model: nn.Module, data: CollabData) -> dict | None:
  """The side-feature tables a model's family needs from `data` (else
  None)."""
  if not models.family_of(model).needs_side:
    return None
  if data.side is None:
    raise UserError("this model needs side features: attach them with "
                    "jaxcf.features (train.py does, for MovieLens)")
  return {k: jnp.asarray(v) for k, v in data.side.constants.items()}


@dataclasses.dataclass
class FitResult:
  """What `fit` returns.

  history: one row per epoch (see `jaxcf.loop`: epoch, train_loss,
  train_loss_smooth, valid_loss, valid_rmse, valid_mae, lr_end, seconds).
  """
  state: TrainState
  history: list[dict[str, float]]
  compile_seconds: float
  train_seconds: float
  samples_per_second: float
  stopped: bool = False  # stop_requested ended the run early
  setup_seconds: float = 0.0  # initialisation, restoring, placement
  eval_seconds: float = 0.0  # the evaluations after each epoch


def batch_program(placed: placement.Placed, config: TrainConfig,
                  steps_per_epoch: int, chunk: int, first_step: int
                  ) -> tuple[loop.Program, Callable[[], object]]:
  """One model's compiled epoch (calls of `chunk` steps) and evaluation,
  compiled with the batches of `first_step`'s epoch. Returns the program
  at once, its two programs queued to compile (`loop.Compiling`; the
  epoch, the longest, first), and a function that waits until both are
  compiled."""
  epoch_rows = {}

  def inputs(step: int, count: int):
    epoch, into_epoch = divmod(step, steps_per_epoch)
    if epoch not in epoch_rows:
      epoch_rows.clear()
      epoch_rows[epoch] = placed.order(epoch)
    return placed.to_device(epoch_rows[epoch][into_epoch:into_epoch + count])

  epoch_jit = jax.jit(placed.epoch_fn, donate_argnums=0,
                      out_shardings=placed.out_shardings)
  epoch = loop.Compiling(epoch_jit.lower(placed.state, placed.train,
                                         inputs(first_step, chunk)))
  evaluation = loop.Compiling(jax.jit(evaluate, static_argnums=2).lower(
      placed.state, placed.valid, config.eval_batch_size))
  program = loop.Program(
      steps_per_epoch=steps_per_epoch, epochs=config.epochs, chunk=chunk,
      report_every=1, inputs=inputs,
      train=lambda state, rows: (
          epoch.result() if len(rows) == chunk else epoch_jit)(
              state, placed.train, rows),
      evaluate=lambda state: evaluation.result()(state, placed.valid),
      lr=lambda state: state.opt_state.lr)
  return program, lambda: (epoch.result(), evaluation.result())


def fit(model: nn.Module, data: CollabData, config: TrainConfig, *,
        on_epoch: Callable[[dict[str, float]], None] | None = None,
        on_losses: Callable[[np.ndarray], None] | None = None,
        log: Callable[[str], None] | None = print,
        checkpoints=None, checkpoint_every: int = 1,
        checkpoint_seconds: float = 0.0,
        chunk_steps: int | None = None,
        stop_requested: Callable[[], bool] | None = None,
        mesh=None, shard_data: bool = False) -> FitResult:
  """Trains `model` on `data.train` and evaluates on `data.valid` each epoch.

  Args:
    model: a module of a registered family (`jaxcf.models`).
    data: from `jaxcf.data.prepare`.
    config: epochs, lr, wd, batch size, seed, schedule, optimiser.
    on_epoch: called with each epoch's row (after a resume, first with the
      restored epochs' ones).
    on_losses: called with each epoch's per-step training losses [steps].
    log: where progress lines go (None: silent).
    checkpoints: a `resume.RunCheckpoints`: the run continues from its
      latest checkpoint, and saves one every `checkpoint_every` epochs
      (skipping those due within `checkpoint_seconds` of the previous
      save) and at the end.
    chunk_steps: run each epoch this many steps per compiled call (None: the
      whole epoch in one); with checkpoints, one is saved after each chunk,
      so long epochs can resume mid-way.
    stop_requested: polled after each call; when it says so, the run
      checkpoints and returns early (FitResult.stopped).
    mesh, shard_data: train over a device mesh, each 'data' shard with its
      own rows (see `jaxcf.placement`); the tables must have been created
      with `sharding.pad_rows` rows.

  Raises:
    Diverged: a NaN or infinite training loss; nothing of that epoch is
      saved.
  """
  say = log or (lambda _: None)
  started = time.perf_counter()
  per_epoch, tx = plan(model, data, config, mesh, shard_data)
  constants = model_constants(model, data)
  # The initialisation is one compiled program (cached across runs; op by
  # op is much slower cold). Its keys, the run's and its tables', are drawn
  # on the host (`jaxcf.keys`, `tableinit.host_keys`): the program is
  # compiled from their types alone. Traced first, for the state's shapes;
  # lowered and queued to compile after the epoch and the evaluation, so
  # that the epoch, which takes longest, starts compiling first.
  init_key, order_key = keys.run_keys(config.seed)
  derived = (tableinit.host_keys(model, init_key),
             keys.fold_key(init_key, 1))
  init = jax.jit(create_train_state, static_argnums=(0, 1)).trace(
      model, tx, jax.eval_shape(jax.random.key, 0), constants, *derived)
  run_init = lambda: loop.Compiling(init.lower(), loop.RUN_ONCE).result()(
      init_key, constants, *derived)
  state, progress = None, None
  restored = checkpoints.restore(init.out_info) if checkpoints else None
  if restored:
    state, _, meta = restored
    progress = loop.Progress(**{k: meta[k] for k in (
        "step", "histories", "ema", "partial")})
    epoch, into_epoch = divmod(progress.step, per_epoch)
    say(f"resuming at epoch {epoch}, step {into_epoch} of {per_epoch}, from "
        f"{checkpoints.directory}")
  if state is None and mesh is not None:  # sharding needs the values
    state = run_init()
  placed = placement.place(init.out_info if state is None else state, data,
                           batch_size=config.batch_size,
                           sampling=config.sampling, order_key=order_key,
                           epochs=config.epochs, mesh=mesh,
                           shard_data=shard_data, log=say)
  chunk = min(chunk_steps or per_epoch, per_epoch)
  setup_seconds = time.perf_counter() - started
  first = min(progress.step if progress else 0, per_epoch * config.epochs - 1)
  t0 = time.perf_counter()
  program, compiled = batch_program(placed, config, per_epoch, chunk,
                                    first // per_epoch * per_epoch)
  if state is None:
    placed.put_state(run_init())
  compiled()
  compile_seconds = time.perf_counter() - t0
  say(f"compiled the train epoch and evaluation in {compile_seconds:.2f}s "
      f"({per_epoch} steps of {config.batch_size} per epoch"
      + (f", run {chunk} at a time)" if chunk < per_epoch else ")"))
  run_hooks = [hooks.DivergenceGuard(config.lr)]
  if log:
    run_hooks.append(hooks.EpochTable(say))
  if on_epoch:
    run_hooks.append(hooks.OnRow(lambda _, row: on_epoch(row)))
  if on_losses:
    run_hooks.append(hooks.OnLosses(on_losses))
  if checkpoints:
    run_hooks.append(hooks.Checkpoints(checkpoints, checkpoint_every,
                                       checkpoint_seconds))
  outcome = loop.train_program(program, placed.state, run_hooks,
                               progress=progress, should_stop=stop_requested,
                               show_progress=bool(log))
  return FitResult(
      state=outcome.state, history=outcome.progress.histories[0],
      compile_seconds=compile_seconds, train_seconds=outcome.train_seconds,
      samples_per_second=outcome.steps_run * config.batch_size /
      max(outcome.train_seconds, 1e-9), stopped=outcome.stopped,
      setup_seconds=setup_seconds, eval_seconds=outcome.eval_seconds)
