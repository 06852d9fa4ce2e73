"""The one training loop: compiled calls of steps, evaluations, hooks.

A single run, a sweep's vmapped replicas and AutoRec's full-batch training
all go through `train_program`. What differs between them is the `Program`
(its compiled train and evaluation functions, and the host-side inputs of
each call); what they share is here: calls of at most `chunk` steps that never
cross an evaluation, the next call's inputs prepared on the host while the
device works, a progress bar on slow calls, one metrics row per replica and
evaluation, and hooks for everything periodic (printing, metrics files,
checkpoints, the divergence guard, TensorBoard).

Rows (one per replica and evaluation): epoch (the last finished epoch),
train_loss (mean over the steps since the last evaluation),
train_loss_smooth (fastai's debiased moving average over all steps),
valid_loss (MSE) and valid_<name> for every other metric the program's
evaluation returns (`steps.error_metrics`: rmse, mae), lr_end (the last
step's learning rate) and seconds (wall time since the last evaluation,
itself included).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from jaxcf.progress import wait_with_progress


@dataclasses.dataclass
class Program:
  """What `train_program` trains.

  Attributes:
    steps_per_epoch, epochs: the run's length is their product, in steps.
    chunk: the most steps one compiled call runs.
    report_every: epochs between evaluations (and rows).
    inputs: (first step, count) -> the host-side inputs of the call that
      runs those steps (e.g. the batches' row indices).
    train: (state, inputs) -> (state, losses float32 [count], or
      [replicas, count] for stacked replicas); may return before the
      device is done.
    evaluate: state -> {metric name: value}, scalars or [replicas]; 'mse'
      is the row's valid_loss.
    lr: state -> the last step's learning rate, a scalar or [replicas].
    replicas: how many models the state holds (stacked on a leading axis
      when more than one).
  """
  steps_per_epoch: int
  epochs: int
  chunk: int
  report_every: int
  inputs: Callable[[int, int], Any]
  train: Callable[[Any, Any], tuple[Any, Any]]
  evaluate: Callable[[Any], dict]
  lr: Callable[[Any], Any]
  replicas: int = 1

  @property
  def total_steps(self) -> int:
    return self.steps_per_epoch * self.epochs

  def call_size(self, step: int) -> int:
    """Steps of the call that starts at `step`: up to `chunk`, never past
    the next evaluation."""
    period = self.report_every * self.steps_per_epoch
    boundary = min((step // period + 1) * period, self.total_steps)
    return min(self.chunk, boundary - step)

  def reports_at(self, step: int) -> bool:
    period = self.report_every * self.steps_per_epoch
    return step % period == 0 or step == self.total_steps


@dataclasses.dataclass
class Progress:
  """Where a run stands; JSON-able, so a checkpoint can hold it.

  histories: per replica, the rows so far; ema: per replica, fastai's
  moving average of the training loss [raw value, steps]; partial: per
  replica, the losses of the steps since the last evaluation.
  """
  step: int
  histories: list[list[dict]]
  ema: list[list[float]]
  partial: list[list[float]]

  @classmethod
  def start(cls, replicas: int) -> "Progress":
    return cls(0, [[] for _ in range(replicas)],
               [[0.0, 0] for _ in range(replicas)],
               [[] for _ in range(replicas)])

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


@dataclasses.dataclass
class Context:
  """What hooks see: the state and progress after a call, and the call."""
  program: Program
  state: Any
  progress: Progress
  losses: np.ndarray | None = None  # float32 [replicas, steps of the call]
  stopping: bool = False  # the run stops after this call (a signal)
  restored: bool = False  # rows being replayed from a checkpoint
  last_saved: str = "none"  # where the latest checkpoint is, for messages

  @property
  def step(self) -> int:
    return self.progress.step

  @property
  def epoch(self) -> int:
    """The epoch the last step belongs to."""
    return max(self.step - 1, 0) // self.program.steps_per_epoch


class Hook:
  """Periodic work; override what you need."""

  def begin(self, ctx: Context) -> None:
    """Before the first call (after restored rows are replayed)."""

  def after_call(self, ctx: Context) -> None:
    """After every compiled call, its losses in ctx.losses."""

  def after_report(self, ctx: Context, rows: list[dict],
                   losses: np.ndarray) -> None:
    """After an evaluation: one row per replica, and the losses [replicas,
    steps] since the previous one (empty when replaying restored rows)."""


@dataclasses.dataclass
class Outcome:
  state: Any
  progress: Progress
  train_seconds: float  # training calls only, evaluations excluded
  eval_seconds: float  # the evaluations
  steps_run: int  # steps trained by this call (not restored ones)
  stopped: bool  # should_stop ended the run early


def smooth_losses(losses: np.ndarray, start: float, count: int,
                  beta: float = 0.98) -> tuple[float, int, float]:
  """fastai's printed train loss: a debiased moving average over steps.

  Returns (raw average, steps so far, debiased value) to carry across epochs.
  """
  avg = start
  for loss in np.asarray(losses, np.float64):
    avg = beta * avg + (1 - beta) * loss
  count += len(losses)
  return float(avg), count, float(avg / (1 - beta**count))


def train_program(program: Program, state, hooks: Sequence[Hook] = (), *,
        progress: Progress | None = None,
        should_stop: Callable[[], bool] | None = None,
        show_progress: bool = True) -> Outcome:
  """Trains `state` to the end of `program`, or until `should_stop` (polled
  after every call and every evaluation) says so.

  progress: where a restored run stands (None: the start); its rows are
  replayed to the hooks first, with ctx.restored set.
  """
  progress = progress or Progress.start(program.replicas)
  ctx = Context(program, state, progress, restored=True)
  for rows in zip(*progress.histories):
    for hook in hooks:
      hook.after_report(ctx, list(rows), np.zeros((program.replicas, 0)))
  ctx.restored = False
  for hook in hooks:
    hook.begin(ctx)
  total = program.total_steps
  train_seconds, eval_seconds, steps_run, last_period = 0.0, 0.0, 0, None
  count = program.call_size(progress.step) if progress.step < total else 0
  inputs = program.inputs(progress.step, count) if count else None
  period_start = time.perf_counter()
  while progress.step < total:
    ctx.state, losses = program.train(ctx.state, inputs)
    step = progress.step + count
    if step < total:  # prepare the next call while the device works
      count = program.call_size(step)
      inputs = program.inputs(step, count)
    if show_progress:
      epoch = (step - 1) // program.steps_per_epoch
      wait_with_progress(losses, f"epoch {epoch}", last_period)
    ctx.losses = np.asarray(losses, np.float32).reshape(program.replicas, -1)
    steps_run += ctx.losses.shape[1]
    progress.step = step
    for r, part in enumerate(ctx.losses):
      progress.partial[r].extend(float(x) for x in part)
    ctx.stopping = bool(should_stop and should_stop())
    for hook in hooks:  # a hook may end the run (the divergence guard)
      hook.after_call(ctx)
    if program.reports_at(step):
      last_period = time.perf_counter() - period_start
      train_seconds += last_period
      eval_seconds += _report(program, ctx, hooks, period_start, should_stop)
      period_start = time.perf_counter()
    if ctx.stopping:
      break
  stopped = ctx.stopping and progress.step < total
  if stopped:  # the unfinished period's training time
    train_seconds += time.perf_counter() - period_start
  return Outcome(ctx.state, progress, train_seconds, eval_seconds, steps_run,
                 stopped)


def _valid_name(metric: str) -> str:
  """A metric's name in a row: mse is the valid_loss, the others
  valid_<name>."""
  return "valid_loss" if metric == "mse" else f"valid_{metric}"


def _report(program: Program, ctx: Context, hooks: Sequence[Hook],
            period_start: float, should_stop) -> float:
  """Evaluates, appends a row per replica, polls should_stop again, and
  tells the hooks; returns the evaluation's seconds."""
  progress = ctx.progress
  started = time.perf_counter()
  metrics = {k: np.atleast_1d(np.asarray(v, np.float64))
             for k, v in program.evaluate(ctx.state).items()}
  evaluated = time.perf_counter() - started
  lrs = np.atleast_1d(np.asarray(program.lr(ctx.state), np.float64))
  seconds = time.perf_counter() - period_start
  losses = np.asarray(progress.partial, np.float32)
  rows = []
  for r in range(program.replicas):
    avg, count, smooth = smooth_losses(losses[r], *progress.ema[r])
    progress.ema[r] = [avg, count]
    rows.append({"epoch": ctx.epoch, "train_loss": float(losses[r].mean()),
                 "train_loss_smooth": smooth,
                 **{_valid_name(k): float(v[r]) for k, v in metrics.items()},
                 "lr_end": float(lrs[r]), "seconds": seconds})
    progress.histories[r].append(rows[-1])
    progress.partial[r] = []
  ctx.stopping = ctx.stopping or bool(should_stop and should_stop())
  for hook in hooks:
    hook.after_report(ctx, rows, losses)
  return evaluated


def usable_cores() -> int:
  """Cores this process may run on (its affinity where the OS has one)."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


@functools.cache
def _compile_queue() -> concurrent.futures.ThreadPoolExecutor:
  # XLA:CPU already spreads one compile over the cores (the book run's
  # epoch: 0.62 s wall, 1.07 s CPU on 2 cores), so compiles side by side
  # on as many cores only share them: one per core beyond the caller's,
  # who meanwhile traces and lowers the next program. Against one thread
  # per program, the book run's time to 0.87 was the same on two cores
  # and 0.09 s sooner on one (benchmarks/throughput.py --baseline, 2026-12-04).
  return concurrent.futures.ThreadPoolExecutor(
      max(1, usable_cores() - 1), thread_name_prefix="jaxcf-compile")


def compile_together(*lowered):
  """Compiles lowered programs (`jax.jit(f).lower(...)`) on the compile
  queue (see `Compiling`); returns them in order."""
  compiling = [Compiling(low) for low in lowered]
  return tuple(c.result() for c in compiling)


# A program that runs once (an initialisation) compiles with fewer of LLVM's
# optimisation passes: the book dot_bias's init as `fit` runs it compiles
# in 0.14 s instead of 0.18 s (benchmarks/init_compile.py). The values are
# the same bit for bit (initialisers are integer hashing and elementwise
# maps; tests/test_families.py checks every family).
RUN_ONCE = {"xla_backend_optimization_level": 1}


class Compiling:
  """A lowered program queued to compile on a thread while the caller goes
  on: `out_info` is its output's shapes at once, `result()` the compiled
  program when done. Programs compile in the order they were queued, one
  per core beyond the caller's (one at a time on one or two cores: more
  at once only slow each other). options: XLA compiler options (RUN_ONCE
  for a program run once)."""

  def __init__(self, lowered, options: dict | None = None):
    self.out_info = lowered.out_info
    self._future = _compile_queue().submit(lowered.compile, options)

  def result(self):
    return self._future.result()


def even_calls(total: int, every: int) -> int:
  """Epochs per call of `total` in equal calls, near `every`: `every` if it
  divides `total`, else the divisor of `total` nearest to it that makes 5
  to 20 calls (the larger on a tie), else `every`. A shorter last call
  compiles a second program (~10 s for BPMF); only for trainers whose
  epochs do not depend on where a call starts (a Gibbs sweep's key is its
  own; AutoRec's dropout keys are drawn per call)."""
  every = max(1, min(every, total))
  if total % every == 0:
    return every
  fitting = [d for d in range(max(1, total // 20), total // 5 + 1)
             if total % d == 0 and 5 <= total // d <= 20]
  return min(fitting, key=lambda d: (abs(d - every), -d), default=every)


def epoch_step_program(train, evaluate, state, epochs: int, every: int, lr,
                       replicas: int, args: tuple = ()
                       ) -> tuple[Program, float]:
  """A Program for trainers whose epoch is one step (a full-batch step, a
  Gibbs sweep): `every` epochs per compiled call (a shorter last call
  compiled when the run needs one), an evaluation after each call.

  train(state, epochs int32 [count], *args) -> (state, losses [R, count]);
  evaluate(state, *args) -> metrics; args: arrays passed to both (not baked
  into the programs as constants, which XLA folds slowly). Returns the
  program and the seconds spent compiling.
  """
  every = max(1, min(every, epochs))
  inputs = lambda start, count: np.arange(start, start + count,
                                          dtype=np.int32)
  start = time.perf_counter()
  compiled, run_eval = compile_together(
      jax.jit(train, donate_argnums=0).lower(state, inputs(0, every), *args),
      jax.jit(evaluate).lower(state, *args))
  later = jax.jit(train, donate_argnums=0)  # a shorter last call
  seconds = time.perf_counter() - start
  program = Program(
      steps_per_epoch=1, epochs=epochs, chunk=every, report_every=every,
      inputs=inputs,
      train=lambda s, e: (compiled if len(e) == every else later)(s, e,
                                                                  *args),
      evaluate=lambda s: run_eval(s, *args), lr=lr, replicas=replicas)
  return program, seconds
