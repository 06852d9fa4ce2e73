"""The periodic work of a training run, as `loop.Hook`s.

* `EpochTable`: fastai's epoch table for one model; `SweepTable`: best,
  median and worst validation loss over replicas;
* `OnRow`, `OnLosses`: call back with each row, or each period's losses;
* `DivergenceGuard`: stops the run when a loss is NaN or infinite;
* `Checkpoints`: saves the run (state and `loop.Progress`) for resuming.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from jaxcf import checkpoint, distributed
from jaxcf.errors import UserError
from jaxcf.loop import Context, Hook


class Diverged(UserError):
  """The training loss became NaN or infinite."""


class EpochTable(Hook):
  """Prints `epoch train_loss valid_loss valid_rmse time` rows."""

  def __init__(self, say: Callable[[str], None]):
    self.say = say
    self.header = False

  def _header(self):
    if not self.header:
      self.say(f"{'epoch':<6}{'train_loss':>11}{'valid_loss':>11}"
               f"{'valid_rmse':>11}{'time':>9}")
      self.header = True

  def begin(self, ctx: Context) -> None:
    self._header()

  def after_report(self, ctx, rows, losses) -> None:
    self._header()
    row = rows[0]
    self.say(f"{row['epoch']:<6}{row['train_loss']:>11.6f}"
             f"{row['valid_loss']:>11.6f}{row['valid_rmse']:>11.6f}"
             f"{row['seconds']:>8.2f}s")


class SweepTable(Hook):
  """Prints each evaluation's best, median and worst replica."""

  def __init__(self, say: Callable[[str], None]):
    self.say = say

  def begin(self, ctx: Context) -> None:
    self.say(f"{'epoch':<6}{'best':>10}{'median':>10}{'worst':>10}"
             f"{'time':>9}   (valid loss over replicas)")

  def after_report(self, ctx, rows, losses) -> None:
    valid = np.sort([r["valid_loss"] for r in rows])
    self.say(f"{rows[0]['epoch']:<6}{valid[0]:>10.6f}"
             f"{np.median(valid):>10.6f}{valid[-1]:>10.6f}"
             f"{rows[0]['seconds']:>8.2f}s")


class OnRow(Hook):
  """Calls `fn(replica index, row)` for every row, replayed ones too."""

  def __init__(self, fn: Callable[[int, dict], None]):
    self.fn = fn

  def after_report(self, ctx, rows, losses) -> None:
    for r, row in enumerate(rows):
      self.fn(r, row)


class OnLosses(Hook):
  """Calls `fn(losses [steps])` with each period's training losses (one
  model)."""

  def __init__(self, fn: Callable[[np.ndarray], None]):
    self.fn = fn

  def after_report(self, ctx, rows, losses) -> None:
    if not ctx.restored:
      self.fn(losses[0])


class DivergenceGuard(Hook):
  """Raises `Diverged` at the first NaN or infinite loss, naming where, the
  flag most likely to blame and the last good checkpoint."""

  def __init__(self, lr: float):
    self.lr = lr

  def after_call(self, ctx: Context) -> None:
    finite = np.isfinite(ctx.losses)
    if finite.all():
      return
    replica, at = np.argwhere(~finite)[0]
    per_epoch = ctx.program.steps_per_epoch
    first = ctx.step - ctx.losses.shape[1]
    step = first + int(at)
    raise Diverged(
        f"training diverged in epoch {step // per_epoch} at step "
        f"{step % per_epoch} of {per_epoch} (loss "
        f"{ctx.losses[replica, at]}); lower --lr (now {self.lr}). Last good "
        f"checkpoint: {ctx.last_saved}")


def _position(ctx: Context) -> str:
  """Where the run stands, as `epoch E, step S` (S of the epoch's steps)."""
  per_epoch = ctx.program.steps_per_epoch
  done = ctx.step - (ctx.step - 1) // per_epoch * per_epoch
  return f"epoch {ctx.epoch}, step {done}"


class Checkpoints(Hook):
  """Saves the whole run into a `resume.RunCheckpoints` every `every`
  periods, and after every call when calls are shorter than a period (so
  long epochs can resume mid-way), skipping one due less than `seconds`
  after the previous save (or the start); always at the end and when
  stopping."""

  def __init__(self, store, every: int = 1, seconds: float = 0.0):
    self.store, self.every, self.seconds = store, every, seconds
    self.last = time.monotonic()

  def begin(self, ctx: Context) -> None:
    self.last = time.monotonic()
    if ctx.step:  # resumed: the checkpoint it resumed from
      ctx.last_saved = _position(ctx)
    checkpoint.import_in_background()  # the end's save needs it

  def _save(self, ctx: Context, always: bool) -> None:
    # Every process decides alike: a save is collective (orbax's barriers).
    if not always and self.seconds and not distributed.any_process(
        time.monotonic() - self.last >= self.seconds):
      return
    self.store.save(ctx.step, ctx.state, ctx.progress.to_json())
    self.last = time.monotonic()
    ctx.last_saved = _position(ctx)

  def after_call(self, ctx: Context) -> None:
    program = ctx.program
    chunked = program.chunk < program.steps_per_epoch * program.report_every
    if not program.reports_at(ctx.step) and (ctx.stopping or chunked):
      self._save(ctx, always=ctx.stopping)

  def after_report(self, ctx, rows, losses) -> None:
    if ctx.restored:
      return
    program = ctx.program
    chunked = program.chunk < program.steps_per_epoch * program.report_every
    periods = ctx.step // (program.steps_per_epoch * program.report_every)
    final = ctx.stopping or ctx.step == program.total_steps
    if final or chunked or periods % self.every == 0:
      self._save(ctx, always=final)
