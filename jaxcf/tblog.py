"""TensorBoard event files of a run (tensorboardX, an optional extra:
pip install 'jaxcf[tensorboard]'; view with `tensorboard --logdir=...`).

Scalars: train/loss (mean over chunks of steps), train/lr and train/beta1
(the one-cycle schedule at each chunk's first step), valid/mse, valid/rmse
per epoch. Embeddings: the item factors, labelled by title or id, for the
embedding projector.
"""

from __future__ import annotations

import numpy as np

from jaxcf import optim
from jaxcf.errors import UserError


class Writer:
  """Writes one run's events into `logdir`."""

  def __init__(self, logdir: str, total_steps: int, lr: float,
               pct_start: float = 0.25, div: float = 25.0,
               div_final: float = 1e5,
               moms: tuple[float, float, float] = (0.95, 0.85, 0.95),
               chunk: int = 50):
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise UserError("--tensorboard needs tensorboardX: pip install "
                      "'jaxcf[tensorboard]'") from None
    self.writer = SummaryWriter(logdir)
    self.chunk = chunk
    self.schedule = lambda steps: (
        np.asarray(optim.one_cycle(steps, total_steps, lr / div, lr,
                                   lr / div_final, pct_start)),
        np.asarray(optim.one_cycle(steps, total_steps, *moms, pct_start)))
    self.step = 0

  def losses(self, losses: np.ndarray) -> None:
    """An epoch's per-step training losses, in chunks."""
    starts = np.arange(0, len(losses), self.chunk)
    lrs, b1s = self.schedule(self.step + starts)
    for k, start in enumerate(starts):
      step = self.step + int(start)
      chunk = losses[start:start + self.chunk]
      self.writer.add_scalar("train/loss", float(np.mean(chunk)), step)
      self.writer.add_scalar("train/lr", float(lrs[k]), step)
      self.writer.add_scalar("train/beta1", float(b1s[k]), step)
    self.step += len(losses)

  def epoch(self, row: dict) -> None:
    """An epoch's validation metrics, at the step the epoch ended."""
    for name in ("valid_loss", "valid_rmse", "valid_mae"):
      if name in row:
        tag = "valid/mse" if name == "valid_loss" else f"valid/{name[6:]}"
        self.writer.add_scalar(tag, row[name], self.step)

  def embedding(self, factors: np.ndarray, labels, tag: str) -> None:
    self.writer.add_embedding(np.asarray(factors),
                              metadata=[str(x) for x in labels], tag=tag,
                              global_step=self.step)

  def close(self) -> None:
    self.writer.close()
