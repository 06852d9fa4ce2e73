r"""Honest tuning and ensembling with vmapped sweeps, on fixed test splits.

For every split, everything is chosen on a validation split carved out of
that split's *training* rows only (a seeded 20%); the reported test rows are
touched once, by the chosen recipe retrained on all training rows.

Chosen on the inner split:
1. the best dot_bias configuration: n_factors x lr x wd x epochs (54);
2. the best side_nn configuration (user, item and time features): lr x wd
   (4);
3. with --autorec, two AutoRec families (`jaxcf.models.autorec`): one sigmoid
   layer of 500 with 30% input dropout, and two layers of 500; for each, the
   L2 weight (50/100/200) and the number of full-batch epochs (100..1000);
4. the ensemble: the best dot_bias with 16 seeds; the same with rows drawn
   with replacement (bagging, wd re-chosen from 0.02/0.05/0.1) with 16
   seeds; the best side_nn with 4 seeds; each AutoRec family with 4 seeds;
   with --bpmf, 4 Gibbs chains of BPMF (500 sweeps; n_factors 10/20/40
   and the implicit prior on or off, with --bpmf_side also implicit plus
   side features, chosen by one chain); and the weights mixing these families (a grid on
   the simplex).

Reported on the test rows: the book's recipe (mean over 8 seeds), the tuned
dot_bias (mean over 16 seeds, and seed 0 alone), the side_nn members, the
16-seed dot_bias ensemble and the three-family ensemble.

  python benchmarks/tune.py --data_dir=../shared/data --splits=fastai \
      --out=benchmarks/results/tune_fastai
  python benchmarks/tune.py --data_dir=../shared/data --splits=u1,u2,u3,u4,u5 \
      --item_name=movie --out=benchmarks/results/tune_folds
  python benchmarks/tune.py --data_dir=../shared/data --splits=u1 \
      --item_name=movie --autorec --out=benchmarks/results/tune_u1_autorec
  (add --inner_seed=1 for another inner carve-out; --bpmf adds Bayesian MF
  chains, n_factors chosen on the inner split, as a family of the mix;
  --merge=A.json,B.json joins runs of different splits into one table)
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import sys
import time

from absl import app, flags
import numpy as np

from jaxcf import data, datasets, features, movielens, sweep, training
import tune_report  # beside this script (run as one)

flags.DEFINE_string("data_dir", None, "Folder that is or holds ml-100k/.")
flags.DEFINE_list("splits", ["fastai"],
                  "'fastai' (fastai's seed 42/1/2 validation rows) and/or "
                  "official MovieLens splits u1..u5, ua, ub.")
flags.DEFINE_string("item_name", "title", "title (the book) or movie (ids, "
                    "as published results use).")
flags.DEFINE_integer("seeds", 16, "Seeds of each dot_bias family.")
flags.DEFINE_integer("nn_seeds", 4, "Seeds of the side_nn family.")
flags.DEFINE_bool("autorec", False, "Also tune and mix two AutoRec families "
                  "(about 25 extra minutes per split on 2 cores).")
flags.DEFINE_bool("bpmf", False, "Also mix Bayesian MF (Gibbs chains, "
                  "n_factors chosen on the inner split).")
flags.DEFINE_bool("bpmf_side", False, "With --bpmf, also try BPMF's "
                  "prior regressed on implicit feedback and side features.")
flags.DEFINE_integer("inner_seed", 0, "Seed of the inner validation carve-out.")
flags.DEFINE_string("out", None, "Write OUT.json and OUT.md.")
flags.DEFINE_list("merge", None, "Instead of tuning, join the splits of "
                  "earlier runs' OUT.json files into one table (each split "
                  "is tuned on its own, so runs of u1 and of u2..u5 join "
                  "into the five-fold table).")
FLAGS = flags.FLAGS

BOOK = sweep.Replica(model="dot_bias", n_factors=50, lr=5e-3, wd=0.1)
DOT_GRID = dict(model=["dot_bias"], n_factors=[32, 64, 128],
                lr=[2e-3, 3e-3, 5e-3], wd=[0.05, 0.1, 0.2])
DOT_EPOCHS = (5, 10)
NN_GRID = dict(model=["side_nn"], lr=[3e-3, 5e-3], wd=[0.1, 0.3])
NN_EPOCHS = 5
BAG_WDS = (0.02, 0.05, 0.1)
WEIGHT_STEP = 0.05
AUTOREC = {"autorec": sweep.Replica(model="autorec", layers=(500,),
                                    input_dropout=0.3, lr=1e-3, seed=0),
           "autorec_deep": sweep.Replica(model="autorec", layers=(500, 500),
                                         lr=1e-3, seed=0)}
AUTOREC_LAMS = (50.0, 100.0, 200.0)
AUTOREC_EPOCHS, AUTOREC_EVERY, AUTOREC_SEEDS = 1000, 100, 4
BPMF_FACTORS, BPMF_SWEEPS, BPMF_CHAINS = (10, 20, 40), 500, 4
# (implicit, side_prior) of the inner choice; with --bpmf_side also both.
BPMF_PRIORS, BPMF_SIDE_PRIORS = ((False, False), (True, False)), ((True,
                                                                   True),)


def splits(table, folder):
  """(name, train_rows, test_rows) for each requested split."""
  for name in FLAGS.splits:
    paths = ([folder.parent / "fastai-splits" / f"fastai_seed{s}_valid.tsv"
              for s in (42, 1, 2)] if name == "fastai"
             else [movielens.split_file(folder, name)])
    for path in paths:
      train, test = data.pairs_split(table, data.read_pairs(str(path)),
                                     str(path))
      yield path.stem, train, test


def seeds(replica: sweep.Replica, n: int) -> list[sweep.Replica]:
  return [dataclasses.replace(replica, seed=s) for s in range(n)]


def train(d, replicas, epochs=5, sampling="shuffle"):
  config = training.TrainConfig(epochs=epochs, sampling=sampling)
  return sweep.train_sweep(replicas, d, config, log=None).results


def mean_prediction(results) -> np.ndarray:
  return np.mean([r.predictions for r in results], axis=0)


def mix(predictions: list[np.ndarray], truth: np.ndarray):
  """The simplex weights (step WEIGHT_STEP) with the lowest MSE."""
  steps = int(round(1 / WEIGHT_STEP))
  best = (np.inf, None)
  for combo in itertools.product(range(steps + 1), repeat=len(predictions)):
    if sum(combo) != steps:
      continue
    w = np.array(combo) / steps
    p = sum(wi * pi for wi, pi in zip(w, predictions))
    best = min(best, (float(np.mean((p - truth)**2)), tuple(w)))
  return best[1], best[0]


def tune(d: data.CollabData, log) -> dict:
  """Chooses the recipe on (inner) data `d`."""
  scored = sorted(((r.valid_loss, r.replica, e) for e in DOT_EPOCHS
                   for r in train(d, sweep.grid(**DOT_GRID, seed=[0]), e)),
                  key=lambda t: t[0])
  _, best, epochs = scored[0]
  log(f"  inner best dot_bias: n_factors {best.n_factors} lr {best.lr} wd "
      f"{best.wd} epochs {epochs}: {scored[0][0]:.4f}")
  nn = min(train(d, sweep.grid(**NN_GRID, seed=[0]), NN_EPOCHS),
           key=lambda r: r.valid_loss).replica
  log(f"  inner best side_nn: lr {nn.lr} wd {nn.wd}")
  truth = np.asarray(d.valid.ratings, np.float64)
  dot = mean_prediction(train(d, seeds(best, FLAGS.seeds), epochs))
  nnp = mean_prediction(train(d, seeds(nn, FLAGS.nn_seeds), NN_EPOCHS))
  recs = tune_autorec(d, log) if FLAGS.autorec else {}
  extra = [autorec_ensemble(d, *recs[name]) for name in recs]
  bpmf = tune_bpmf(d, log) if FLAGS.bpmf else None
  if bpmf is not None:
    extra.append(bpmf_chains(d, bpmf))
  choice = None
  for wd in BAG_WDS:
    bag = mean_prediction(train(d, seeds(dataclasses.replace(best, wd=wd),
                                         FLAGS.seeds), epochs, "replacement"))
    weights, loss = mix([dot, bag, nnp, *extra], truth)
    if choice is None or loss < choice[2]:
      choice = (wd, weights, loss)
  bag_wd, weights, loss = choice
  log(f"  inner ensemble: dot_bias {np.mean((dot - truth)**2):.4f}; with "
      f"bagging (wd {bag_wd}) and side_nn, weights "
      f"{tuple(round(float(w), 2) for w in weights)}: {loss:.4f}")
  return {"best": best, "epochs": epochs, "nn": nn, "bag_wd": bag_wd,
          "weights": weights, "autorec": recs, "bpmf": bpmf}


def gibbs_results(d, replicas):
  config = training.TrainConfig(epochs=BPMF_SWEEPS,
                                burn_in=BPMF_SWEEPS // 4,
                                eval_every=BPMF_SWEEPS)
  return sweep.train_sweep(replicas, d, config, log=None).results


def tune_bpmf(d: data.CollabData, log) -> sweep.Replica:
  """The n_factors and implicit prior of one chain with the lowest
  validation MSE on `d`."""
  priors = BPMF_PRIORS + BPMF_SIDE_PRIORS * FLAGS.bpmf_side
  results = [gibbs_results(d, [sweep.Replica(
      model="bpmf", n_factors=k, implicit=imp, side_prior=side,
      seed=0)])[0] for imp, side in priors for k in BPMF_FACTORS]
  best = min(results, key=lambda r: r.valid_loss)
  log("  inner bpmf: " + ", ".join(
      f"{r.replica.n_factors} factors{' implicit' * r.replica.implicit}"
      f"{' side' * r.replica.side_prior} {r.valid_loss:.4f}"
      for r in results))
  return best.replica


def bpmf_chains(d, replica) -> np.ndarray:
  """The mean of BPMF_CHAINS chains' saved models' predictions."""
  return mean_prediction(gibbs_results(d, seeds(replica, BPMF_CHAINS)))


def train_autorec(d, replicas, epochs):
  config = training.TrainConfig(epochs=epochs, eval_every=AUTOREC_EVERY)
  return sweep.train_sweep(replicas, d, config, log=None).results


def tune_autorec(d: data.CollabData, log) -> dict:
  """{family: (replica, epochs)}: the L2 weight (wd) and epoch count of
  each AutoRec family with the lowest validation MSE on `d` (one seed)."""
  chosen = {}
  for name, base in AUTOREC.items():
    results = train_autorec(
        d, [dataclasses.replace(base, wd=lam) for lam in AUTOREC_LAMS],
        AUTOREC_EPOCHS)
    loss, epochs, replica = min(
        ((h["valid_loss"], h["epoch"] + 1, r.replica)
         for r in results for h in r.history), key=lambda t: t[:2])
    log(f"  inner best {name}: lam {replica.wd} epochs {epochs}: "
        f"{loss:.4f}")
    chosen[name] = (replica, epochs)
  return chosen


def autorec_ensemble(d, replica, epochs) -> np.ndarray:
  results = train_autorec(d, seeds(replica, AUTOREC_SEEDS), epochs)
  return np.mean([r.predictions for r in results], axis=0)


def with_side(d, folder):
  return features.attach(d, features.movielens(d, folder))


def evaluate(table, folder, train_rows, test_rows, item_key, log) -> dict:
  rng = np.random.default_rng(FLAGS.inner_seed)
  shuffled = rng.permutation(train_rows)
  cut = len(shuffled) // 5
  inner = with_side(data.prepare(table, shuffled[cut:], shuffled[:cut],
                                 item_key=item_key), folder)
  c = tune(inner, log)
  outer = with_side(data.prepare(table, train_rows, test_rows,
                                 item_key=item_key), folder)
  truth = np.asarray(outer.valid.ratings, np.float64)
  mse = lambda p: float(np.mean((p - truth)**2))
  book = train(outer, seeds(BOOK, 8))
  dot = train(outer, seeds(c["best"], FLAGS.seeds), c["epochs"])
  bag = train(outer, seeds(dataclasses.replace(c["best"], wd=c["bag_wd"]),
                           FLAGS.seeds), c["epochs"], "replacement")
  nn = train(outer, seeds(c["nn"], FLAGS.nn_seeds), NN_EPOCHS)
  families = [mean_prediction(x) for x in (dot, bag, nn)]
  recs = {name: autorec_ensemble(outer, *c["autorec"][name])
          for name in c["autorec"]}
  families += list(recs.values())
  if c["bpmf"] is not None:
    families.append(bpmf_chains(outer, c["bpmf"]))
  out = {
      "chosen": {"inner_seed": FLAGS.inner_seed,
                 "dot_bias": {**c["best"].hparams(), "epochs": c["epochs"]},
                 "side_nn": c["nn"].hparams(), "bagging_wd": c["bag_wd"],
                 "weights (dot_bias, bagged, side_nn" + "".join(
                     f", {n}" for n in recs)
                 + ", bpmf" * (c["bpmf"] is not None) + ")": [
                         float(w) for w in c["weights"]],
                 **{n: {"lam": rep.wd, "epochs": e, "layers": list(
                     rep.layers), "dropout": rep.input_dropout}
                    for n, (rep, e) in c["autorec"].items()},
                 **({"bpmf": {"n_factors": c["bpmf"].n_factors,
                              "implicit": c["bpmf"].implicit,
                              "side_prior": c["bpmf"].side_prior,
                              "sweeps": BPMF_SWEEPS, "chains": BPMF_CHAINS}}
                    if c["bpmf"] is not None else {})},
      "book_single": float(np.mean([r.valid_loss for r in book])),
      "tuned_single": float(np.mean([r.valid_loss for r in dot])),
      "tuned_single_seed0": dot[0].valid_loss,
      "nn_single": float(np.mean([r.valid_loss for r in nn])),
      "dot_ensemble": mse(families[0]),
      "ensemble": mse(sum(w * p for w, p in zip(c["weights"], families))),
      **{f"{n}_ensemble": mse(p) for n, p in recs.items()},
      **({"bpmf_ensemble": mse(families[-1])} if c["bpmf"] is not None
         else {}),
  }
  log("  test: " + ", ".join(f"{k} {v:.4f}" for k, v in out.items()
                             if isinstance(v, float)))
  return out


def main(argv):
  del argv
  start = time.perf_counter()
  try:
    results = tune_report.merged(FLAGS.merge) if FLAGS.merge else {}
  except ValueError as e:
    print(e, file=sys.stderr)
    raise SystemExit(2) from None
  if not FLAGS.merge:
    table, _, folder = datasets.read_table(datasets.Source(
        data_dir=FLAGS.data_dir))
    item_key = "title" if FLAGS.item_name == "title" else "item"
    for name, train_rows, test_rows in splits(table, folder):
      print(f"{name}: {len(train_rows):,} train / {len(test_rows):,} test "
            "rows", flush=True)
      results[name] = evaluate(table, folder, train_rows, test_rows,
                               item_key, lambda s: print(s, flush=True))
  text = "\n\n".join([tune_report.markdown(results, rmse=False),
                      tune_report.markdown(results, rmse=True)])
  chosen = {n: r["chosen"]["bpmf"] for n, r in results.items()
            if "bpmf" in r["chosen"]}
  if chosen:
    text += "\n\nBPMF chosen on the inner split: " + "; ".join(
        f"{n}: {c['n_factors']} factors"
        f"{', implicit prior' if c['implicit'] else ''}"
        f"{', side features' if c.get('side_prior') else ''}"
        for n, c in chosen.items())
  print(text)
  print(f"({time.perf_counter() - start:.0f}s)")
  if FLAGS.out:
    with open(FLAGS.out + ".json", "w") as f:
      json.dump(results, f, indent=2)
    with open(FLAGS.out + ".md", "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  app.run(main)
