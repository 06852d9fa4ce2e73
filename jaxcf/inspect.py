r"""Looks inside a trained model: biases, recommendations, neighbours.

  python -m jaxcf.inspect --workdir=runs/book                  # biases
  python -m jaxcf.inspect --workdir=runs/book --user=196       # + top 10
  python -m jaxcf.inspect --workdir=runs/book --item="Star Wars (1977)"
  python -m jaxcf.inspect --workdir=runs/book \
      --rate="Star Wars (1977)=5;Titanic (1997)=2"             # a new user
  python -m jaxcf.inspect --workdir=runs/book --pca_png=pca.png

The workdir is one that `train.py --workdir` wrote. A mistake (no model
there, an unknown user or title) ends with one line on stderr, exit 2.
"""

from __future__ import annotations

import sys

from absl import flags
import pandas as pd

from jaxcf import cli, plots, trained
from jaxcf.errors import UserError


def define(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("workdir", None, "A workdir written by train.py.",
                      flag_values=fv)
  flags.DEFINE_string("user", None, "Recommend for this user id.",
                      flag_values=fv)
  flags.DEFINE_string("item", None, "Show this item's neighbours (title or "
                      "id).", flag_values=fv)
  flags.DEFINE_string("rate", None, "Fold in a new user from "
                      "'ITEM=RATING;...' and recommend for them.",
                      flag_values=fv)
  flags.DEFINE_integer("k", 10, "How many rows each list shows.",
                       flag_values=fv)
  flags.DEFINE_integer("min_ratings", 10, "Neighbours and biases only among "
                       "items rated this often.", flag_values=fv)
  flags.DEFINE_string("pca_png", None, "Draw the book's PCA picture here.",
                      flag_values=fv)


def _show(title: str, frame: pd.DataFrame) -> None:
  print(f"\n{title}")
  with pd.option_context("display.max_colwidth", 60, "display.width", 120):
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def parse_ratings(text: str) -> list[tuple[str, float]]:
  """'Star Wars (1977)=5;Titanic (1997)=2' -> [(title, 5.0), ...]."""
  out = []
  for part in filter(None, (p.strip() for p in text.split(";"))):
    item, sep, value = part.rpartition("=")
    try:
      if not sep:
        raise ValueError
      out.append((item.strip(), float(value)))
    except ValueError:
      raise UserError(f"--rate: {part!r} is not ITEM=RATING") from None
  return out


def run(FLAGS: flags.FlagValues) -> None:  # pylint: disable=invalid-name
  if not FLAGS.workdir:
    raise UserError("--workdir is required: a folder train.py --workdir "
                    "wrote")
  model = trained.load(FLAGS.workdir)
  k = FLAGS.k
  info = model.info.get("summary", {}).get("final", {})
  print(f"{model.spec['model']} on {len(model.users) - 1:,} users and "
        f"{len(model.items) - 1:,} items"
        + (f"; valid MSE {info['valid_loss']:.4f}" if info else ""))
  if "item_bias" in model.state.params:
    biases = model.biases()
    biases = biases[biases["n_ratings"] >= FLAGS.min_ratings]
    _show(f"lowest item biases (rated >= {FLAGS.min_ratings} times)",
          biases.head(k))
    _show("highest item biases", biases.tail(k).iloc[::-1])
  if FLAGS.user:
    _show(f"top {k} for user {FLAGS.user}", model.recommend(FLAGS.user, k))
  if FLAGS.item:
    _show(f"items most like {FLAGS.item}",
          model.similar_items(FLAGS.item, k, FLAGS.min_ratings))
  if FLAGS.rate:
    pairs = parse_ratings(FLAGS.rate)
    _show(f"top {k} for a new user who rated {len(pairs)} item(s)",
          model.recommend(model.fold_in(pairs), k))
  if FLAGS.pca_png:
    plots.pca_plot(model.pca(n=2), FLAGS.pca_png)
    print(f"\nwrote {FLAGS.pca_png}")


def main(argv: list[str], flag_values: flags.FlagValues | None = None) -> int:
  """The command with arguments argv (without the program); its exit
  status. flag_values: where its flags are defined (default: a fresh set,
  as tests use; the command itself uses absl's global flags)."""
  fv = flag_values or flags.FlagValues()
  define(fv)
  return cli.main(["jaxcf.inspect", *argv], run, fv)


if __name__ == "__main__":
  sys.exit(cli.flush_output(main(sys.argv[1:], flags.FLAGS)))
