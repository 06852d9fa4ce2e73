"""What a run writes and prints: metrics lines, JSON files, tables, and the
signals that ask it to stop."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time

from jaxcf import fsutil, runinfo
from jaxcf.errors import UserError, saving


class Metrics:
  """Writes JSON lines to workdir/metrics.jsonl (nothing without one).

  The file is started afresh at the first line, not before: a run refused
  before training (other settings in its checkpoints) leaves it alone. A
  resumed run writes the restored rows again first. Each line is appended
  whole and made durable (fsync) before the run goes on.
  """

  def __init__(self, workdir: str | None):
    self.path, self.started = None, False
    if workdir:
      try:
        os.makedirs(workdir, exist_ok=True)
      except OSError as e:
        raise UserError(f"--workdir={workdir}: {e.strerror}") from None
      self.path = os.path.join(workdir, "metrics.jsonl")

  def write(self, row: dict) -> None:
    if not self.path:
      return
    line = json.dumps(row) + "\n"
    if not self.started:  # the old file replaced whole, or left as it was
      with saving(self.path, "the earlier metrics.jsonl is intact"):
        fsutil.replace_file(self.path, lambda f: f.write(line), "w")
      self.started = True
      return
    with saving(self.path, "every line written before is intact"):
      with open(self.path, "a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def context(data, config) -> dict:
  """What every summary records: data sizes, device, versions, config."""
  return {
      "n_train": data.train.size, "n_valid": data.valid.size,
      "n_users": data.n_users, "n_items": data.n_items,
      "device": runinfo.device(), "versions": runinfo.versions(),
      "config": config.to_json(),
  }


def ranking_line(top: dict) -> str:
  return (f"ranking over unseen items (rated >= 4 is relevant, "
          f"{top['ranked_users']:.0f} users): precision@10 "
          f"{top['precision@10']:.4f}, recall@10 {top['recall@10']:.4f}, "
          f"NDCG@10 {top['ndcg@10']:.4f}")


def ranking_row(rank: int, replica: int, hparams: dict,
                history: list[dict]) -> dict:
  """A replica's line in the ranking: its settings, final and best scores."""
  best = min(history, key=lambda h: h["valid_loss"])
  return {"rank": rank, "replica": replica, **hparams,
          "valid_loss": history[-1]["valid_loss"],
          "valid_rmse": history[-1]["valid_rmse"],
          "best_valid_loss": best["valid_loss"], "best_epoch": best["epoch"]}


def ranking_table(ranked: list[dict], swept: list[str], top: int = 10) -> str:
  cols = ["rank", "replica", *swept, "valid_loss", "valid_rmse",
          "best_epoch"]
  fmt = lambda v: (f"{v:.6g}" if isinstance(v, float) else
                   ",".join(map(str, v)) if isinstance(v, list) else str(v))
  rows = [[fmt(r[c]) for c in cols] for r in ranked[:top]]
  widths = [max(len(c), *(len(row[k]) for row in rows))
            for k, c in enumerate(cols)]
  lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
  lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths))
            for row in rows]
  if len(ranked) > top:
    lines.append(f"... {len(ranked) - top} more in sweep.json")
  return "\n".join(lines)


class Phases:
  """Wall seconds of a run by phase, for summary.json and a closing line.

  With `since_process_start` (a command), 'import' is the time from the
  process's start to this object, and 'total' the process's age at the
  end; otherwise 'total' starts here.
  """

  def __init__(self, since_process_start: bool = False):
    self.start = time.perf_counter()
    self.offset = 0.0
    self.seconds: dict[str, float] = {}
    age = runinfo.process_age() if since_process_start else None
    if age is not None:
      self.seconds["import"] = age
      self.offset = age

  @contextlib.contextmanager
  def timed(self, name: str):
    start = time.perf_counter()
    yield
    self.add(name, time.perf_counter() - start)

  def add(self, name: str, seconds: float) -> None:
    self.seconds[name] = self.seconds.get(name, 0.0) + seconds

  def summary(self) -> dict[str, float]:
    total = self.offset + time.perf_counter() - self.start
    return {**{k: round(v, 3) for k, v in self.seconds.items()},
            "total": round(total, 3)}

  def line(self) -> str:
    parts = [f"{k} {v:.1f}" for k, v in self.summary().items()]
    return "seconds: " + ", ".join(parts)


class StopOnSignal:
  """While active, SIGINT/SIGTERM ask the run to stop after this epoch (a
  second signal stops at once, the default way)."""

  def __init__(self):
    self.signum, self.name, self._old = 0, "", {}

  def requested(self) -> bool:
    return self.signum != 0

  def _handle(self, signum, frame):
    del frame
    if self.signum:
      signal.signal(signum, self._old[signum])
      signal.raise_signal(signum)
    self.signum, self.name = signum, signal.Signals(signum).name
    print(f"\n{self.name}: stopping after this epoch (again to stop now)",
          file=sys.stderr, flush=True)

  def __enter__(self):
    for sig in (signal.SIGINT, signal.SIGTERM):
      self._old[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


class Stopped(Exception):
  """A signal stopped the run after a checkpoint; exit 128 + signum."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum
