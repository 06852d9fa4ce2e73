r"""Training throughput of jaxcf against the PyTorch baseline and fastai.

Every measurement runs in a fresh subprocess (clean compile caches and peak
memory), pinned to one CPU core unless --cores=all; contenders alternate in
rounds and the table reports medians with their spread, and which ratios
the rounds leave undecided (throughput_report.py). Needs the bench extra (torch, fastai)
beside jaxcf: pip install -e '.[bench,plot]'.

  python benchmarks/throughput.py --data_dir=../shared/data            # full
  python benchmarks/throughput.py --data_dir=../shared/data --quick    # ~5 min

Writes benchmarks/results/<device>.json, .md and .png.

Contenders (training samples per second, steady state, compile/warm-up
reported apart):
  jaxcf scan      a whole epoch in one compiled lax.scan (jaxcf's way)
  jaxcf step      the same jitted train step called from a Python loop
  jaxcf 8x vmap   8 replicas vmapped in the scanned epoch (total samples/s)
  jaxcf lazy      the scanned epoch with --optimizer=lazy_adamw (touched
                  rows only; not fastai-exact, same accuracy)
  torch eager     the PyTorch baseline: Python loop, AdamW (foreach)
  torch fused     the same with AdamW(fused=True)
  torch compile   torch.compile(model) + fused AdamW
  fastai          the book's code: CollabDataLoaders, collab_learner,
                  fit_one_cycle (progress bar off)
Time to accuracy: wall time from process start (imports and compilation
included) until the validation MSE after an epoch is <= 0.87 on fastai's
seed-42 split, with the book's settings.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

import throughput_report as report  # beside this script (run as one)

flags.DEFINE_string("data_dir", None, "Folder that is or holds ml-100k/ "
                    "(with fastai-splits/ beside it).")
flags.DEFINE_bool("quick", False, "One round, bs 64 and 1024, fewer "
                  "contenders.")
flags.DEFINE_integer("rounds", 3, "Rounds of alternating measurements.")
flags.DEFINE_list("models", ["dot_bias", "embedding_nn"], "Models (none: "
                  "time to accuracy only, into <device>-tta.*).")
flags.DEFINE_list("batch_sizes", ["64", "1024", "8192"], "Batch sizes.")
flags.DEFINE_list("contenders", None, "Subset of contenders (default: all).")
flags.DEFINE_string("cores", "1", "'1' pins every process to one core; "
                    "'all' leaves them free.")
flags.DEFINE_float("min_seconds", 3.0, "Time each measurement at least "
                   "this long.")
flags.DEFINE_string("out_dir", "benchmarks/results", "Where results go.")
flags.DEFINE_bool("time_to_accuracy", True, "Also measure time to 0.87.")
# Internal: run one measurement and print RESULT {...}.
flags.DEFINE_string("worker", None, "internal")
flags.DEFINE_string("model", "dot_bias", "internal")
flags.DEFINE_integer("bs", 64, "internal")
FLAGS = flags.FLAGS

CONTENDERS = ("jaxcf scan", "jaxcf step", "jaxcf 8x vmap", "jaxcf lazy",
              "torch eager",
              "torch fused", "torch compile", "fastai")
QUICK = ("jaxcf scan", "jaxcf 8x vmap", "torch eager", "fastai")
TARGET_MSE = 0.87


# Workers (one per subprocess) ----------------------------------------------

def _pin() -> None:
  if FLAGS.cores == "1" and hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def _split_rows():
  """ML-100k merged with titles, and fastai's seed-42 (train, valid) rows."""
  from jaxcf import data, datasets  # pylint: disable=g-import-not-at-top
  table, _, folder = datasets.read_table(datasets.Source(
      data_dir=FLAGS.data_dir))
  path = folder.parent / "fastai-splits" / "fastai_seed42_valid.tsv"
  train, valid = data.pairs_split(table, data.read_pairs(str(path)),
                                  str(path))
  return table, train, valid


def _timed_epochs(run_epoch, samples_per_epoch: int) -> dict:
  """Calls run_epoch() until min_seconds have passed (after one warm-up)."""
  start = time.perf_counter()
  run_epoch()
  warmup = time.perf_counter() - start
  start, epochs = time.perf_counter(), 0
  while epochs == 0 or time.perf_counter() - start < FLAGS.min_seconds:
    run_epoch()
    epochs += 1
  seconds = time.perf_counter() - start
  return {"samples_per_s": epochs * samples_per_epoch / seconds,
          "warmup_s": warmup, "epochs_timed": epochs}


def worker_jaxcf(kind: str) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxcf import data, minibatch, optim, sweep, training  # pylint: disable=g-import-not-at-top
  table, train, valid = _split_rows()
  d = data.prepare(table, train, valid, item_key="title")
  n, bs = d.train.size, FLAGS.bs
  steps = n // bs
  replicas = [sweep.Replica(model=FLAGS.model, seed=s)
              for s in range(8 if kind == "8x vmap" else 1)]
  model = replicas[0].create_model(d)
  tx = optim.one_cycle_adamw(5e-3, 0.1, steps * 1000)
  if kind == "lazy":
    tx = training.make_optimizer(model, training.TrainConfig(
        optimizer="lazy_adamw"), steps * 1000)
  state = minibatch.init_replicas(model, tx, replicas)
  key = jax.random.key(0)
  counter = iter(range(10**9))
  if kind == "8x vmap":
    fn = jax.jit(jax.vmap(training.train_epoch, in_axes=(0, None, 0)),
                 donate_argnums=0)
    batches = lambda e: np.stack([training.epoch_batches(
        jax.random.fold_in(key, r), e, n, bs) for r in range(8)])
  else:
    state = jax.tree.map(lambda x: x[0], state)
    fn = jax.jit(training.train_epoch, donate_argnums=0)
    batches = lambda e: training.epoch_batches(key, e, n, bs)
  if kind == "step":
    step = jax.jit(lambda s, data_, rows: training.train_step(
        s, data_.take(rows)), donate_argnums=0)

  def run_epoch():
    nonlocal state
    rows = batches(next(counter))
    if kind == "step":
      for k in range(steps):
        state, metrics = step(state, d.train, rows[k])
      jax.block_until_ready(metrics)
    else:
      state, losses = fn(state, d.train, rows)
      jax.block_until_ready(losses)

  out = _timed_epochs(run_epoch, steps * bs * len(replicas))
  return out


def worker_torch(kind: str) -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_baseline as tb  # pylint: disable=g-import-not-at-top
  from jaxcf import data  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(1 if FLAGS.cores == "1" else os.cpu_count())
  table, train, valid = _split_rows()
  d = data.prepare(table, train, valid, item_key="title")
  tensors = [torch.as_tensor(np.asarray(x)).clone()
             for x in d.train[:3]]
  users, items, ratings = tensors[0].long(), tensors[1].long(), tensors[2]
  torch.manual_seed(0)
  model = tb.MODELS[FLAGS.model](d.n_users, d.n_items)
  steps = len(ratings) // FLAGS.bs
  variant = {"eager": "foreach", "fused": "fused", "compile": "fused"}[kind]
  opt, sched = tb.optimizer(model, 5e-3, 0.1, steps * 1000, variant)
  step = tb.make_step(model, opt, sched, compile_model=kind == "compile")
  g = torch.Generator().manual_seed(0)
  return _timed_epochs(
      lambda: tb.train_epoch(model, step, users, items, ratings, FLAGS.bs, g),
      steps * FLAGS.bs)


def _fastai_learner(bs: int, model: str):
  import torch  # pylint: disable=g-import-not-at-top
  from fastai.collab import CollabDataLoaders, collab_learner  # pylint: disable=g-import-not-at-top
  from fastai.tabular.all import set_seed  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(1 if FLAGS.cores == "1" else os.cpu_count())
  table, _, _ = _split_rows()
  ratings = table.rename(columns={"item": "movie"})
  set_seed(42)  # fastai's seed-42 split, as the split files record
  dls = CollabDataLoaders.from_df(ratings, item_name="title", bs=bs)
  if model == "dot_bias":
    learn = collab_learner(dls, n_factors=50, y_range=(0, 5.5))
  else:
    learn = collab_learner(dls, use_nn=True, layers=[100, 50],
                           y_range=(0, 5.5))
  return learn


def worker_fastai() -> dict:
  from fastai.tabular.all import Callback  # pylint: disable=g-import-not-at-top
  learn = _fastai_learner(FLAGS.bs, FLAGS.model)

  class TrainTime(Callback):
    def before_fit(self):
      self.seconds, self.samples = [], []

    def before_train(self):
      self.start = time.perf_counter()

    def after_train(self):
      self.seconds.append(time.perf_counter() - self.start)
      self.samples.append(self.n_iter * self.dls.train.bs)

  timer = TrainTime()
  start = time.perf_counter()
  with learn.no_bar(), learn.no_logging():
    learn.fit_one_cycle(1, 5e-3, wd=0.1, cbs=[timer])  # warm-up epoch
    warmup = time.perf_counter() - start
    epochs = max(1, min(5, int(FLAGS.min_seconds / max(timer.seconds[0],
                                                         1e-3))))
    learn.fit_one_cycle(epochs, 5e-3, wd=0.1, cbs=[timer])
  return {"samples_per_s": sum(timer.samples) / sum(timer.seconds),
          "warmup_s": warmup, "epochs_timed": epochs}


def tta_jaxcf() -> dict:
  """As train.py runs: JAX's compilation cache in $JAXCF_CACHE (the
  orchestrator gives each round a fresh folder: cold, then warm)."""
  from jaxcf import compilecache, data, models, training  # pylint: disable=g-import-not-at-top
  compilecache.enable()
  table, train, valid = _split_rows()
  d = data.prepare(table, train, valid, item_key="title")
  model = models.create("dot_bias", d.n_users, d.n_items)
  reached = {}

  def on_epoch(row):
    if not reached and row["valid_loss"] <= TARGET_MSE:
      reached.update(at=time.time(), epoch=row["epoch"],
                     valid_loss=row["valid_loss"])

  result = training.fit(model, d, training.TrainConfig(), on_epoch=on_epoch,
                        log=None)
  return {**reached, "final_valid_loss": result.history[-1]["valid_loss"]}


def tta_fastai() -> dict:
  from fastai.tabular.all import Callback  # pylint: disable=g-import-not-at-top
  learn = _fastai_learner(64, "dot_bias")
  reached = {}

  class Watch(Callback):
    order = 100  # after the Recorder has the epoch's validation loss

    def after_epoch(self):
      valid = float(self.recorder.values[-1][1])
      if not reached and valid <= TARGET_MSE:
        reached.update(at=time.time(), epoch=self.epoch, valid_loss=valid)

  with learn.no_bar(), learn.no_logging():
    learn.fit_one_cycle(5, 5e-3, wd=0.1, cbs=[Watch()])
  return {**reached,
          "final_valid_loss": float(learn.recorder.values[-1][1])}


def run_worker(name: str) -> None:
  _pin()
  if name.startswith("jaxcf "):
    out = worker_jaxcf(name.split(" ", 1)[1])
  elif name.startswith("torch "):
    out = worker_torch(name.split(" ", 1)[1])
  elif name == "fastai":
    out = worker_fastai()
  elif name == "tta jaxcf":
    out = tta_jaxcf()
  elif name == "tta fastai":
    out = tta_fastai()
  else:
    raise ValueError(name)
  out["peak_rss_mb"] = resource.getrusage(
      resource.RUSAGE_SELF).ru_maxrss / 1024
  print("RESULT " + json.dumps(out), flush=True)


# The orchestrator ------------------------------------------------------------

def spawn(name: str, model: str = "dot_bias", bs: int = 64,
          env: dict | None = None) -> dict:
  args = [sys.executable, os.path.abspath(__file__), f"--worker={name}",
          f"--model={model}", f"--bs={bs}", f"--cores={FLAGS.cores}",
          f"--min_seconds={FLAGS.min_seconds}"]
  if FLAGS.data_dir:
    args.append(f"--data_dir={FLAGS.data_dir}")
  env = {**os.environ, **(env or {}), "PYTHONPATH": os.path.dirname(
      os.path.dirname(os.path.abspath(__file__)))}
  start = time.time()
  proc = subprocess.run(args, capture_output=True, text=True, env=env)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  if proc.returncode or not lines:
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": " | ".join(tail)}
  out = json.loads(lines[-1][len("RESULT "):])
  if "at" in out:
    out["seconds_to_target"] = out.pop("at") - start
  return out


def describe_device() -> dict:
  from jaxcf import runinfo  # pylint: disable=g-import-not-at-top
  dev = runinfo.device()
  slug = ("cpu" if dev["platform"] == "cpu" else
          f"{dev['platform']}-{dev['kind']}").lower().replace(" ", "-")
  return {"slug": slug, **dev}


def main(argv):
  del argv
  if FLAGS.worker:
    run_worker(FLAGS.worker)
    return
  contenders = FLAGS.contenders or (QUICK if FLAGS.quick else CONTENDERS)
  batch_sizes = [64, 1024] if FLAGS.quick else list(map(int,
                                                         FLAGS.batch_sizes))
  rounds = 1 if FLAGS.quick else FLAGS.rounds
  FLAGS.batch_sizes = list(map(str, batch_sizes))
  measured: dict[tuple, list[dict]] = {}
  for rnd in range(rounds):
    for model in FLAGS.models:
      for bs in batch_sizes:
        for c in contenders:
          out = spawn(c, model, bs)
          measured.setdefault((model, bs, c), []).append(out)
          rate = out.get("samples_per_s")
          print(f"round {rnd + 1}/{rounds} {model} bs {bs} {c}: " +
                (f"{rate:,.0f} samples/s" if rate else out.get("error", "?")),
                flush=True)
  rows = []
  for (model, bs, c), outs in measured.items():
    ok = [o for o in outs if "samples_per_s" in o]
    row = {"model": model, "bs": bs, "contender": c,
           "runs": [o.get("samples_per_s") for o in outs]}
    if ok:
      row.update(samples_per_s=statistics.median(o["samples_per_s"]
                                                 for o in ok),
                 warmup_s=statistics.median(o["warmup_s"] for o in ok),
                 peak_rss_mb=max(o["peak_rss_mb"] for o in ok))
    else:
      row["error"] = outs[-1].get("error")
    rows.append(row)
  from jaxcf import runinfo  # pylint: disable=g-import-not-at-top
  results = {"device": describe_device(), "cores": FLAGS.cores,
             "versions": runinfo.versions(runinfo.PACKAGES + ("torch",
                                                              "fastai")),
             "rounds": rounds, "rows": rows,
             "threads": "torch.set_num_threads(1) and every process pinned "
                        "to one core" if FLAGS.cores == "1" else
                        "all cores, torch threads = cpu_count"}
  if FLAGS.time_to_accuracy:
    tta: dict[str, list[dict]] = {"jaxcf (first run)": [],
                                  "jaxcf (programs cached)": [], "fastai": []}
    for rnd in range(rounds):
      cache = tempfile.mkdtemp(prefix="jaxcf-tta-")  # cold, then warm
      for name, runs in tta.items():
        worker = "tta fastai" if name == "fastai" else "tta jaxcf"
        runs.append(spawn(worker, env={"JAXCF_CACHE": cache}))
        print(f"round {rnd + 1}/{rounds} time to {TARGET_MSE} {name}: "
              f"{runs[-1].get('seconds_to_target', 'not reached')}",
              flush=True)
    results["time_to_accuracy"] = tta
  slug = results["device"]["slug"] + ("" if FLAGS.cores == "1" else "-all")
  os.makedirs(FLAGS.out_dir, exist_ok=True)
  base = os.path.join(FLAGS.out_dir, slug + ("-quick" if FLAGS.quick else "")
                      + ("" if rows else "-tta"))
  with open(base + ".json", "w") as f:
    json.dump(results, f, indent=2)
  text = report.markdown(results, CONTENDERS, TARGET_MSE)
  with open(base + ".md", "w") as f:
    f.write(text + "\n")
  print(text)
  if not rows:
    print(f"wrote {base}.json and .md")
    return
  try:
    report.chart(results, CONTENDERS, base + ".png")
    print(f"wrote {base}.json, .md and .png")
  except ImportError:
    print(f"wrote {base}.json and .md (no matplotlib for the chart)")


if __name__ == "__main__":
  app.run(main)
