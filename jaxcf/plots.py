"""Pictures of runs (matplotlib, an optional extra: pip install 'jaxcf[plot]')."""

from __future__ import annotations

import numpy as np

from jaxcf.errors import UserError


def check() -> None:
  """A UserError now, rather than after training, when matplotlib is
  missing."""
  _pyplot()


def _pyplot():
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError("drawing needs matplotlib: pip install 'jaxcf[plot]'"
                    ) from None
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def sweep_plot(result, swept: list[str], path: str) -> None:
  """Final validation MSE against each swept hyperparameter, plus the curves.

  One panel per swept field (each replica a dot, the median per value a
  line; log scale for lr and wd), and a last panel with every replica's
  validation loss per epoch. The ensemble, when there is one, is a dashed
  line.
  """
  plt = _pyplot()
  fields = [f for f in swept if f != "seed"] or ["seed"]
  fig, axes = plt.subplots(1, len(fields) + 1,
                           figsize=(4.2 * (len(fields) + 1), 3.6))
  losses = np.array([r.valid_loss for r in result.results])
  for ax, field in zip(axes, fields):
    labels = [str(r.replica.hparams()[field]) for r in result.results]
    values = sorted(set(labels), key=lambda v: _sort_key(v))
    x = np.array([values.index(v) for v in labels])
    ax.scatter(x, losses, s=14, alpha=0.6)
    ax.plot(range(len(values)),
            [np.median(losses[x == k]) for k in range(len(values))], "-o",
            color="C1", label="median")
    ax.set_xticks(range(len(values)), values, rotation=30)
    ax.set_xlabel(field)
    ax.set_ylabel("final valid MSE")
    _ensemble_line(ax, result)
  curves = axes[-1]
  for r in result.results:
    curves.plot([h["valid_loss"] for h in r.history], color="C0", alpha=0.3)
  _ensemble_line(curves, result)
  curves.set_xlabel("epoch")
  curves.set_ylabel("valid MSE")
  curves.set_title(f"{len(result.results)} replicas")
  fig.tight_layout()
  fig.savefig(path, dpi=110, format="png")
  plt.close(fig)


def _sort_key(text: str):
  try:
    return (0, float(text))
  except ValueError:
    return (1, text)


def _ensemble_line(ax, result) -> None:
  if result.ensemble:
    ax.axhline(result.ensemble["valid_loss"], ls="--", color="C3",
               label="ensemble")
    ax.legend(fontsize=8)


def loss_plot(history: list[dict], path: str) -> None:
  """Train and validation loss per epoch of one run."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  epochs = [h["epoch"] for h in history]
  ax.plot(epochs, [h["train_loss"] for h in history], "-o", label="train")
  ax.plot(epochs, [h["valid_loss"] for h in history], "-o", label="valid")
  best = min(history, key=lambda h: h["valid_loss"])
  ax.annotate(f"{best['valid_loss']:.4f}", (best["epoch"], best["valid_loss"]),
              textcoords="offset points", xytext=(0, -14), ha="center",
              fontsize=8)
  ax.set_xlabel("epoch")
  ax.set_ylabel("MSE")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110, format="png")
  plt.close(fig)


def pca_plot(frame, path: str, n_labels: int = 50) -> None:
  """The book's picture: items on their first two principal components,
  the `n_labels` most-rated labelled (frame from TrainedModel.pca)."""
  plt = _pyplot()
  label = frame["title"] if "title" in frame else frame["item"]
  fig, ax = plt.subplots(figsize=(11, 9))
  ax.scatter(frame["pc1"], frame["pc2"], s=6, alpha=0.25, color="C0")
  top = frame.head(n_labels)
  ax.scatter(top["pc1"], top["pc2"], s=14, color="C3")
  for x, y, text in zip(top["pc1"], top["pc2"], label.head(n_labels)):
    ax.annotate(str(text), (x, y), fontsize=7, alpha=0.85,
                textcoords="offset points", xytext=(3, 2))
  ax.set_xlabel("first principal component of the item factors")
  ax.set_ylabel("second principal component")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
