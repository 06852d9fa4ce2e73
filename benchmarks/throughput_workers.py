"""The measurements of benchmarks/throughput.py, each run in its own
subprocess (`throughput.py --worker=NAME`); they read that script's flags
(--model, --bs, --cores, --min_seconds, --data_dir) and print one
`RESULT {json}` line."""

from __future__ import annotations

import json
import os
import resource
import time

from absl import flags

FLAGS = flags.FLAGS
TARGET_MSE = 0.87  # time to accuracy: the first epoch with valid MSE <= this


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
