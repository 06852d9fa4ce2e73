r"""Scale: epoch cost as ratings and tables grow, per optimiser.

  python benchmarks/scale.py --out=benchmarks/results/scale     # ~30 min
  python benchmarks/scale.py --quick

Three measurements, each in a fresh subprocess (peak memory is its own):
  ratings   epochs of 1M, 10M (and 100M unless --quick) synthetic ratings
            on 480k x 18k tables, 50 factors, bs 8192, row-wise optimisers
            with the XLA row updates and with the C++ kernels
            (--row_kernel=cpp): the first epoch, counting its shuffle on
            the host, and the second, whose shuffle ran during the first
            as `training.fit` does it
  tables    training samples/s at bs 64 over 300 steps as the user table
            grows (1k .. 2M rows): dense AdamW against the row-wise ones
  accuracy  final validation MSE of dot_bias with each optimiser on fastai's
            three ML-100k splits (the book's recipe; row-wise Adagrad with
            lr 0.1 and no decay, which it needs)
Writes OUT.json, OUT.md and OUT.png (matplotlib).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

from absl import app, flags

flags.DEFINE_bool("quick", False, "Skip 100M ratings and 2M-row tables.")
flags.DEFINE_string("data_dir", None, "ML-100k with fastai-splits/ beside "
                    "it, for the accuracy table.")
flags.DEFINE_string("out", "benchmarks/results/scale", "Output prefix.")
flags.DEFINE_string("worker", None, "internal")
flags.DEFINE_string("args", "{}", "internal")
FLAGS = flags.FLAGS

OPTIMIZERS = {"adamw": (5e-3, 0.1), "lazy_adamw": (5e-3, 0.1),
              "rowwise_adagrad": (0.1, 0.0)}
ROW_KERNELS = ("xla", "cpp")


def epoch_worker(n_users, n_items, n_ratings, optimizer, bs, steps=None,
                 row_kernel="xla"):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxcf import hugepages, sweep, synthetic, training  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  d = synthetic.generate(n_users, n_items, n_ratings, log=None)
  jax.block_until_ready(d.train)
  gen = time.perf_counter() - start
  lr, wd = OPTIMIZERS[optimizer]
  model = sweep.Replica(n_factors=50, lr=lr, wd=wd).create_model(d)
  n = d.train.size
  total = n // bs
  config = training.TrainConfig(epochs=2, batch_size=bs, lr=lr, wd=wd,
                                optimizer=optimizer, row_kernel=row_kernel)
  tx = training.make_optimizer(model, config, total)
  state = training.create_train_state(model, tx, jax.random.key(0))
  hugepages.advise((d.train, state))  # as training.fit does
  key = jax.random.key(1)
  run = jax.jit(training.train_epoch, donate_argnums=0)
  if steps:  # a fixed number of steps: the throughput at this table size
    rows = jax.device_put(training.epoch_batches(key, 0, n, bs)[:steps])
    state, losses = run(state, d.train, rows)  # compile and warm up
    jax.block_until_ready(losses)
    start = time.perf_counter()
    state, losses = run(state, d.train, rows)
    jax.block_until_ready(losses)
    seconds = time.perf_counter() - start
    return {"samples_per_s": steps * bs / seconds, "generate_s": gen}
  rows = training.epoch_batches(key, 0, n, bs)
  compiled = run.lower(state, d.train, rows).compile()
  start = time.perf_counter()
  rows = training.epoch_batches(key, 0, n, bs)  # the first shuffle is timed
  shuffle = time.perf_counter() - start
  state, losses = compiled(state, d.train, rows)
  rows = training.epoch_batches(key, 1, n, bs)  # while the device works
  losses = np.asarray(losses)
  first = time.perf_counter() - start
  start = time.perf_counter()
  state, losses = compiled(state, d.train, rows)
  training.epoch_batches(key, 2, n, bs)  # as a third epoch's would be
  losses = np.asarray(losses)
  second = time.perf_counter() - start
  metrics = jax.jit(training.evaluate)(state, d.valid)
  return {"epoch_s": second, "first_epoch_s": first, "shuffle_s": shuffle,
          "samples_per_s": total * bs / second, "generate_s": gen,
          "valid_mse": float(metrics["mse"]),
          "final_train_loss": float(losses[-100:].mean())}


def accuracy_worker(optimizer):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from benchmarks import parity  # pylint: disable=g-import-not-at-top
  from jaxcf import sweep, training  # pylint: disable=g-import-not-at-top
  lr, wd = OPTIMIZERS[optimizer]
  finals = []
  for seed, d in parity.load_splits(FLAGS.data_dir).items():
    replica = sweep.Replica(lr=lr, wd=wd)
    result = training.fit(replica.create_model(d), d, training.TrainConfig(
        lr=lr, wd=wd, seed=seed, optimizer=optimizer), log=None)
    finals.append(result.history[-1]["valid_loss"])
  return {"valid_mse": finals, "mean": float(np.mean(finals))}


def spawn(worker: str, **args) -> dict:
  proc = subprocess.run(
      [sys.executable, os.path.abspath(__file__), f"--worker={worker}",
       f"--args={json.dumps(args)}"] +
      ([f"--data_dir={FLAGS.data_dir}"] if FLAGS.data_dir else []),
      capture_output=True, text=True,
      env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(
          os.path.abspath(__file__)))})
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  if proc.returncode or not lines:
    return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
  return json.loads(lines[-1][7:])


def markdown(results: dict) -> str:
  nan = float("nan")
  lines = ["| ratings | optimiser | row kernel | epoch (s) | samples/s | "
           "first epoch, with its shuffle (s) | peak memory (GB) | valid MSE "
           "after 2 epochs (noise floor 0.25) |",
           "|---|---|---|---|---|---|---|---|"]
  for r in results["ratings"]:
    lines.append(f"| {r['n_ratings']:,} | {r['optimizer']} | "
                 f"{r.get('row_kernel', 'xla')} | "
                 f"{r.get('epoch_s', nan):.1f} | "
                 f"{r.get('samples_per_s', 0):,.0f} | "
                 f"{r.get('first_epoch_s', nan):.1f} | "
                 f"{r.get('peak_rss_mb', 0) / 1024:.1f} | "
                 f"{r.get('valid_mse', nan):.3f} |")
  opts = list(OPTIMIZERS)
  lines += ["", "| user rows (18k items), bs 64 | " + " | ".join(
      f"{o} samples/s" for o in opts) + " |", "|---" * (len(opts) + 1) + "|"]
  for users in sorted({r["n_users"] for r in results["tables"]}):
    cell = {r["optimizer"]: r.get("samples_per_s") for r in results["tables"]
            if r["n_users"] == users}
    lines.append(f"| {users:,} | " + " | ".join(
        f"{cell[o]:,.0f}" if cell.get(o) else "-" for o in opts) + " |")
  if results.get("accuracy"):
    lines += ["", "| optimiser (dot_bias, book recipe) | seed 42 | seed 1 | "
              "seed 2 | mean valid MSE |", "|---|---|---|---|---|"]
    for o, r in results["accuracy"].items():
      if "valid_mse" in r:
        lines.append(f"| {o} | " + " | ".join(f"{v:.4f}" for v in
                                              r["valid_mse"]) +
                     f" | **{r['mean']:.4f}** |")
  return "\n".join(lines)


def chart(results: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
  for o in OPTIMIZERS:
    for kernel in ROW_KERNELS:
      pts = sorted((r["n_ratings"], r["epoch_s"]) for r in results["ratings"]
                   if r["optimizer"] == o and "epoch_s" in r
                   and r.get("row_kernel", "xla") == kernel)
      if pts:
        a.plot(*zip(*pts), "-o" if kernel == "xla" else "--s",
               label=f"{o} ({kernel})")
    pts = sorted((r["n_users"], r["samples_per_s"]) for r in results["tables"]
                 if r["optimizer"] == o and "samples_per_s" in r)
    if pts:
      b.plot(*zip(*pts), "-o", label=o)
  a.set(xscale="log", yscale="log", xlabel="ratings (480k x 18k tables)",
        ylabel="seconds per epoch (bs 8192)")
  b.set(xscale="log", yscale="log", xlabel="user rows (18k items)",
        ylabel="training samples/s (bs 64)")
  for ax in (a, b):
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv):
  del argv
  if FLAGS.worker:
    args = json.loads(FLAGS.args)
    out = (epoch_worker(**args) if FLAGS.worker == "epoch"
           else accuracy_worker(**args))
    out["peak_rss_mb"] = resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out), flush=True)
    return
  results = {"ratings": [], "tables": [], "accuracy": {}}
  sizes = [1_000_000, 10_000_000] + ([] if FLAGS.quick else [100_000_000])
  for n in sizes:
    for o in ("lazy_adamw", "rowwise_adagrad"):
      for kernel in ROW_KERNELS:
        r = spawn("epoch", n_users=480_000, n_items=18_000, n_ratings=n,
                  optimizer=o, bs=8192, row_kernel=kernel)
        results["ratings"].append({"n_ratings": n, "optimizer": o,
                                   "row_kernel": kernel, **r})
        print(results["ratings"][-1], flush=True)
  users = [1_000, 10_000, 100_000, 480_000] + (
      [] if FLAGS.quick else [2_000_000])
  for u in users:
    for o in OPTIMIZERS:
      r = spawn("epoch", n_users=u, n_items=18_000, n_ratings=1_000_000,
                optimizer=o, bs=64, steps=300)
      results["tables"].append({"n_users": u, "optimizer": o, **r})
      print(results["tables"][-1], flush=True)
  if FLAGS.data_dir:
    for o in OPTIMIZERS:
      results["accuracy"][o] = spawn("accuracy", optimizer=o)
      print(o, results["accuracy"][o], flush=True)
  text = markdown(results)
  print(text)
  os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
  with open(FLAGS.out + ".json", "w") as f:
    json.dump(results, f, indent=2)
  with open(FLAGS.out + ".md", "w") as f:
    f.write(text + "\n")
  try:
    chart(results, FLAGS.out + ".png")
  except ImportError:
    pass


if __name__ == "__main__":
  app.run(main)
