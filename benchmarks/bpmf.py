r"""Bayesian MF (`--model=bpmf`): calibration of its predictive intervals and
the sampler's speed, on MovieLens 100k.

Calibration: for u1 (u1.base / u1.test) and fastai's seed-42 split, one
chain of --sweeps Gibbs sweeps (--factors factors), without and with the
implicit-feedback prior (`--implicit`); the share of
validation ratings inside the central 50/80/90/95% predictive intervals
(posterior and noise, from the model's kept samples), its RMSE, and a
reliability plot (nominal vs empirical coverage for levels 5..95%).
Speed: sweeps per second after compilation for 10/50/100 factors and
1/4 chains on u1.base (the dense layout gibbs picks there, and the sparse
one forced); the sparse layout's cost growth on synthetic 100k/1M/10M
ratings.

  python benchmarks/bpmf.py --data_dir=../shared/data \
      --out=benchmarks/results/bpmf.md --png=benchmarks/results/bpmf.png
"""

from __future__ import annotations

import itertools
import os
import resource
import time

from absl import app, flags
import numpy as np

import report  # beside this file

flags.DEFINE_string("data_dir", None, "Folder holding ml-100k/ (and "
                    "fastai-splits/ beside it).")
flags.DEFINE_integer("sweeps", 500, "Gibbs sweeps of the calibration runs.")
flags.DEFINE_integer("factors", 10, "Factors of the calibration runs.")
flags.DEFINE_integer("speed_sweeps", 20, "Sweeps timed per speed cell.")
flags.DEFINE_list("growth", ["100000", "1000000", "10000000"],
                  "Synthetic ratings counts for the cost growth (sparse "
                  "layout, 10 factors, one chain).")
flags.DEFINE_integer("growth_sweeps", 5, "Sweeps timed per growth cell.")
flags.DEFINE_integer("goal_sweeps", 500, "Sweeps of the goal's timing (50 "
                     "factors, one chain); 0 skips it.")
flags.DEFINE_string("out", None, "Also write the markdown tables here.")
flags.DEFINE_string("png", None, "Write the reliability plot here.")
FLAGS = flags.FLAGS
LEVELS = (0.5, 0.8, 0.9, 0.95)


def _data(split: str):
  from jaxcf import datasets  # pylint: disable=g-import-not-at-top
  valid = None
  if split == "fastai":
    valid = os.path.join(FLAGS.data_dir, "fastai-splits",
                         "fastai_seed42_valid.tsv")
  return datasets.load(datasets.Source(data_dir=FLAGS.data_dir),
                       item_name="movie" if split == "u1" else "title",
                       split="u1" if split == "u1" else "random",
                       valid_file=valid, seed=42, log=None)


def _run(data, factors: int, chains: int, sweeps: int, burn: int,
         implicit: bool = False):
  from jaxcf import gibbs, sweep, training  # pylint: disable=g-import-not-at-top
  replicas = [sweep.Replica(model="bpmf", n_factors=factors,
                            samples=min(32, sweeps - burn), seed=s,
                            implicit=implicit)
              for s in range(chains)]
  config = training.TrainConfig(epochs=sweeps, burn_in=burn,
                                eval_every=sweeps)
  return gibbs.train_group(replicas, data, config, [], None)


def calibration(split: str, implicit: bool = False):
  from scipy import stats  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  data = _data(split)
  start = time.perf_counter()
  outcome, _, _, _ = _run(data, FLAGS.factors, 1, FLAGS.sweeps,
                          FLAGS.sweeps // 4, implicit)
  seconds = time.perf_counter() - start
  state = outcome.state
  params = jax.tree.map(lambda x: x[0], state.params)
  mean, std = state.model.apply({"params": params}, data.valid.users,
                                data.valid.items, method="predictive")
  truth = np.asarray(data.valid.ratings)
  z = np.abs(truth - np.asarray(mean)) / np.asarray(std)
  grid = np.linspace(0.05, 0.95, 19)
  empirical = [float(np.mean(z <= stats.norm.ppf(0.5 + p / 2))) for p in grid]
  covered = {p: float(np.mean(z <= stats.norm.ppf(0.5 + p / 2)))
             for p in LEVELS}
  rmse = float(np.sqrt(np.mean((np.asarray(mean) - truth)**2)))
  last = outcome.progress.histories[0][-1]
  return {"split": split + (", implicit prior" if implicit else ""),
          "rmse": rmse, "running_rmse": last["valid_rmse"],
          "covered": covered, "grid": grid, "empirical": empirical,
          "seconds": seconds}


def speed(factors: int, chains: int, layout: str = "auto", data=None,
          sweeps: int | None = None) -> float:
  """Sweeps per second of the compiled sweeps (the loop's train time:
  compilation and evaluation excluded); layout 'sparse' or 'dense' forces
  the rating lists or the matrix (data of unique pairs) over
  gibbs.dense_layout's choice."""
  from jaxcf import gibbs  # pylint: disable=g-import-not-at-top
  n = sweeps or FLAGS.speed_sweeps
  chosen = gibbs.dense_layout
  if layout != "auto":
    gibbs.dense_layout = lambda *_: layout == "dense"
  try:
    outcome, _, _, _ = _run(data or _data("u1"), factors, chains, n, 0)
  finally:
    gibbs.dense_layout = chosen
  return n / max(outcome.train_seconds, 1e-9)


def growth(n_ratings: int) -> dict:
  """Sweeps/s of the sparse layout on synthetic ratings, ML-1M to ML-10M
  shaped (users and items grow as the square root of the ratings)."""
  from jaxcf import gibbs, synthetic  # pylint: disable=g-import-not-at-top
  n_users = int(22 * np.sqrt(n_ratings))
  n_items = int(3.2 * np.sqrt(n_ratings))
  data = synthetic.generate(n_users, n_items, n_ratings, log=None)
  tu, ti = (np.asarray(x) for x in data.train[:2])
  rate = speed(10, 1, data=data, sweeps=FLAGS.growth_sweeps)
  return {"n": n_ratings, "users": n_users, "items": n_items,
          "dense": gibbs.dense_layout(tu, ti, data.n_users, data.n_items),
          "sweeps_per_s": rate,
          "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main(argv):
  del argv
  lines = [f"BPMF, {FLAGS.factors} factors, {FLAGS.sweeps} sweeps (burn-in "
           f"{FLAGS.sweeps // 4}), one chain; coverage of the central "
           "predictive intervals on the validation ratings", "",
           "| split | RMSE (kept samples) | RMSE (running mean) | "
           + " | ".join(f"{p:.0%}" for p in LEVELS) + " | seconds |",
           "|---|---|---|" + "---|" * len(LEVELS) + "---|"]
  runs = []
  for split, implicit in itertools.product(("u1", "fastai"), (False, True)):
    r = calibration(split, implicit)
    runs.append(r)
    lines.append(f"| {r['split']} | {r['rmse']:.4f} | {r['running_rmse']:.4f} | "
                 + " | ".join(f"{r['covered'][p]:.1%}" for p in LEVELS)
                 + f" | {r['seconds']:.0f} |")
    print(lines[-1], flush=True)
  lines += ["", f"Sweeps per second on u1.base (timed over "
            f"{FLAGS.speed_sweeps} sweeps after compilation; 4 chains: "
            "vmapped, sweeps of all four per second)", "",
            "| factors | 1 chain | 4 chains | 1 chain, matrix layout |",
            "|---|---|---|---|"]
  for factors in (10, 50, 100):
    cells = [speed(factors, c) for c in (1, 4)] + [speed(factors, 1,
                                                         "dense")]
    lines.append(f"| {factors} | " + " | ".join(f"{c:.1f}" for c in cells)
                 + " |")
    print(lines[-1], flush=True)
  if FLAGS.goal_sweeps:
    start = time.perf_counter()
    outcome, _, _, compile_s = _run(_data("u1"), 50, 1, FLAGS.goal_sweeps,
                                    FLAGS.goal_sweeps // 4)
    lines += ["", f"{FLAGS.goal_sweeps} sweeps at 50 factors, one chain on "
              f"u1.base (burn-in {FLAGS.goal_sweeps // 4}): "
              f"{outcome.train_seconds:.1f} s of sweeps, "
              f"{time.perf_counter() - start:.1f} s with compilation "
              f"({compile_s:.1f} s) and evaluation"]
    print(lines[-1], flush=True)
  lines += ["", "Cost growth: synthetic ratings (rank 8 + noise), 10 factors, "
            f"one chain, {FLAGS.growth_sweeps} sweeps timed; users and items "
            "grow as the square root of the ratings; peak memory of the "
            "process so far", "",
            "| ratings | users x items | layout | sweeps/s | seconds/sweep | "
            "ratings/s | peak GB |", "|---|---|---|---|---|---|---|"]
  for n in map(int, FLAGS.growth):
    g = growth(n)
    lines.append(f"| {n:,} | {g['users']:,} x {g['items']:,} | "
                 f"{'dense' if g['dense'] else 'sparse'} | "
                 f"{g['sweeps_per_s']:.2f} | {1 / g['sweeps_per_s']:.2f} | "
                 f"{g['n'] * g['sweeps_per_s'] / 1e6:.1f}M | "
                 f"{g['peak_gb']:.1f} |")
    print(lines[-1], flush=True)
  report.emit(lines, FLAGS.out)
  if FLAGS.png:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    for r in runs:
      ax.plot(r["grid"], r["empirical"], "o-", ms=3, label=r["split"])
    ax.set_xlabel("nominal coverage")
    ax.set_ylabel("empirical coverage")
    ax.set_title("BPMF predictive intervals (ML-100k)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(FLAGS.png, dpi=110)


if __name__ == "__main__":
  app.run(main)
