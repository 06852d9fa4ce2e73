r"""Parity with fastai 2.8.12 on fastai's own validation splits.

Trains the book's recipes (5 epochs, one cycle at lr 5e-3, bs 64) on the
exact validation rows fastai drew with seeds 42, 1 and 2, and prints a
markdown table of final validation MSE beside fastai's (from
../shared/REFERENCE.md, measured with fastai on a 2-core CPU).

  python benchmarks/parity.py --data_dir=../shared/data \
      --out=benchmarks/results/parity.md

Each jaxcf run uses the split's seed for initialisation and data order.
`sampling=replacement` reproduces fastai 2.8's training loader, which draws
rows with replacement; jaxcf's default visits every row once per epoch.
"""

from __future__ import annotations

import dataclasses
import os
import time

from absl import app, flags
import numpy as np

from jaxcf import data, datasets, models, training

SEEDS = (42, 1, 2)
# fastai 2.8.12's final valid MSE on fastai_seed{42,1,2}_valid.tsv.
FASTAI = {
    ("dot_bias", 0.1): (0.8461, 0.8634, 0.8661),
    ("embedding_nn", 0.1): (0.8584, 0.8922, 0.8835),
    ("collab_nn", 0.01): (0.8667, 0.8898, 0.8847),
    ("dot_bias", 0.0): (0.9726, 0.9871, 0.9944),
}


@dataclasses.dataclass(frozen=True)
class Case:
  model: str
  wd: float
  sampling: str = "shuffle"


CASES = (
    Case("dot_bias", 0.1), Case("embedding_nn", 0.1), Case("collab_nn", 0.01),
    Case("dot_bias", 0.0),
    Case("dot_bias", 0.1, "replacement"), Case("dot_bias", 0.0, "replacement"),
)


def load_splits(data_dir: str | None) -> dict[int, data.CollabData]:
  """The ML-100k ratings split as fastai split them, keyed by seed."""
  source = datasets.Source(data_dir=data_dir)
  table, _, folder = datasets.read_table(source)
  out = {}
  for seed in SEEDS:
    path = folder.parent / "fastai-splits" / f"fastai_seed{seed}_valid.tsv"
    train, valid = data.pairs_split(table, data.read_pairs(str(path)),
                                    str(path))
    out[seed] = data.prepare(table, train, valid, item_key="title")
  return out


def run_case(case: Case, splits: dict[int, data.CollabData]
             ) -> list[list[float]]:
  """Valid MSE per epoch, one list per split seed."""
  curves = []
  for seed, d in splits.items():
    model = models.create(case.model, d.n_users, d.n_items)
    config = training.TrainConfig(wd=case.wd, seed=seed,
                                  sampling=case.sampling)
    result = training.fit(model, d, config, log=None)
    curves.append([h["valid_loss"] for h in result.history])
  return curves


def table(results: dict[Case, list[list[float]]]) -> str:
  head = ("| model | wd | sampling | " + " | ".join(
      f"seed {s}" for s in SEEDS) + " | mean | fastai mean |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for case, curves in results.items():
    finals = [c[-1] for c in curves]
    fastai = FASTAI[(case.model, case.wd)]
    lines.append(
        f"| {case.model} | {case.wd} | {case.sampling} | " +
        " | ".join(f"{f:.4f}" for f in finals) +
        f" | **{np.mean(finals):.4f}** | {np.mean(fastai):.4f} |")
  return "\n".join(lines)


def main(argv):
  del argv
  splits = load_splits(FLAGS.data_dir)
  results = {}
  for case in CASES:
    start = time.perf_counter()
    results[case] = run_case(case, splits)
    print(f"{case}: {[round(c[-1], 4) for c in results[case]]} "
          f"({time.perf_counter() - start:.0f}s)", flush=True)
  text = table(results)
  print(text)
  if FLAGS.out:
    os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
    with open(FLAGS.out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  flags.DEFINE_string("data_dir", None, "Folder that is or holds ml-100k/, "
                      "with fastai-splits/ beside it.")
  flags.DEFINE_string("out", None, "Write the markdown table here too.")
  FLAGS = flags.FLAGS
  app.run(main)
