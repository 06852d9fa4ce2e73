r"""Trains collaborative-filtering models; the defaults are the book's.

  python train.py                                   # dot_bias on MovieLens 100k
  python train.py --model=embedding_nn --layers=100,50
  python train.py --valid_file=../shared/data/fastai-splits/fastai_seed42_valid.tsv
  python train.py --split=u1 --item_name=movie --workdir=runs/u1
  python train.py --ratings_file=ratings.csv --items_file=movies.csv \
      --item_columns=movieId,title

Sweeps: --model, --n_factors, --lr, --wd and --seed take comma-separated
lists, --layers and --y_range semicolon-separated ones. Their cartesian
product is trained as vmapped replicas, one compiled program per shape:

  python train.py --lr=3e-3,5e-3,1e-2 --wd=0.05,0.1,0.2 --seed=0,1 \
      --ensemble --workdir=runs/sweep

A mistake in a flag or an input file ends with one line on stderr and exit
status 2.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys

from absl import flags
import jax

import numpy as np

from jaxcf import (autorec, cli, datasets, distributed, features, io, models,
                   plots, ranking, resume, runinfo, sharding, sweep,
                   synthetic, tblog, trained, training)
from jaxcf.errors import UserError

flags.DEFINE_string("model", "dot_bias",
                    "dot | dot_bias | collab_nn | embedding_nn | side_nn, or a "
                    "list; or autorec (I-AutoRec, trained full-batch: --epochs "
                    "default 500, --lr 1e-3, --wd is its L2 weight, default "
                    "100; --layers, --input_dropout).")
flags.DEFINE_string("n_factors", "50", "Factor width of the dot models "
                    "(list: one group per width).")
flags.DEFINE_string("y_range", "0,5.5",
                    "LOW,HIGH of sigmoid_range, or 'none' for a raw output; "
                    "a list with ';', e.g. '0,5.5;0.5,5.25'.")
flags.DEFINE_string("layers", "",
                    "Hidden widths of the NN models, e.g. 100,50 (empty: "
                    "collab_nn 100, embedding_nn 100,50); a list with ';'.")
flags.DEFINE_string("side", "user,item,time",
                    "side_nn's side information (MovieLens 100k): any of "
                    "user (age, gender, occupation), item (genres, year), "
                    "time (of the rating).")
flags.DEFINE_string("id_dropout", "0", "side_nn: the share of user ids hidden "
                    "in training, so the '#na#' row learns new users (a "
                    "list sweeps).")
flags.DEFINE_integer("epochs", 5, "Epochs of the one-cycle run.")
flags.DEFINE_string("input_dropout", "0", "autorec: the share of input "
                    "ratings hidden while training, or a list.")
flags.DEFINE_string("lr", "5e-3", "Peak learning rate (fastai's lr_max), or "
                    "a list.")
flags.DEFINE_string("wd", "0.1", "Decoupled weight decay (fastai's wd), or a "
                    "list.")
flags.DEFINE_integer("bs", 64, "Training batch size.")
flags.DEFINE_string("seed", "42", "Seed of initialisation and data order, or "
                    "a list; the first also seeds the random split.")
flags.DEFINE_float("pct_start", 0.25, "Share of the cycle spent warming up.")
flags.DEFINE_float("div", 25.0, "The cycle starts at lr / div.")
flags.DEFINE_float("div_final", 1e5, "The cycle ends at lr / div_final.")
flags.DEFINE_string("sampling", "shuffle",
                    "shuffle: every training row once per epoch. "
                    "replacement: draw rows with replacement, as fastai 2.8's "
                    "tabular loader does.")
flags.DEFINE_string("optimizer", "adamw",
                    "adamw: fastai's dense AdamW. lazy_adamw / "
                    "rowwise_adagrad: update only the embedding rows a batch "
                    "uses (fast with large tables; see jaxcf/sparse.py).")
flags.DEFINE_string("row_kernel", "xla",
                    "With a row-wise --optimizer: xla, or cpp: move and "
                    "update the rows with small C++ kernels (CPU, one "
                    "device, float32; built on first use; faster at large "
                    "batch sizes, see jaxcf/rowkernels.py).")
flags.DEFINE_string("param_dtype", "float32",
                    "float32, or bfloat16: store weights and optimiser "
                    "moments in half the bytes (large tables).")
flags.DEFINE_string("compute_dtype", "float32",
                    "float32, or bfloat16: compute lookups and layers in "
                    "bfloat16 (outputs and the loss stay float32).")
flags.DEFINE_string("mesh", None, "Train over a device mesh, e.g. "
                    "data:4,model:2: batches split over data, user/item "
                    "tables by rows over model (one run, not side_nn).")
flags.DEFINE_bool("shard_data", False, "With --mesh: each data shard keeps "
                  "and shuffles its own training rows (what several "
                  "processes always do).")
flags.DEFINE_string("coordinator_address", None, "Several processes: "
                    "HOST:PORT of process 0, the same for every process.")
flags.DEFINE_integer("num_processes", 1, "Several processes: how many.")
flags.DEFINE_integer("process_id", 0, "Several processes: this one's index, "
                     "0 .. num_processes - 1.")
flags.DEFINE_string("split", "random",
                    "random, or an official MovieLens split: u1..u5, ua, ub.")
flags.DEFINE_float("valid_pct", 0.2, "Validation share of --split=random.")
flags.DEFINE_integer("split_seed", None, "Seed of --split=random (default: "
                     "the first --seed).")
flags.DEFINE_string("valid_file", None,
                    "TSV/CSV of validation (user, item id) pairs; overrides "
                    "--split.")
flags.DEFINE_string("item_name", "title",
                    "title (the book: 1664 titles) or movie (1682 ids).")
flags.DEFINE_string("dataset", "movielens",
                    "movielens (or --ratings_file), or synthetic: "
                    "--n_ratings ratings of --n_users x --n_items from a "
                    "low-rank model plus noise, generated on the device.")
flags.DEFINE_integer("n_users", 480_000, "Synthetic users.")
flags.DEFINE_integer("n_items", 18_000, "Synthetic items.")
flags.DEFINE_integer("n_ratings", 10_000_000, "Synthetic ratings.")
flags.DEFINE_string("data_dir", None,
                    "Folder that is or holds ml-100k/ (else $JAXCF_DATA, the "
                    "cache, or a download).")
flags.DEFINE_string("ratings_file", None,
                    "Your own ratings CSV/TSV instead of MovieLens 100k.")
flags.DEFINE_string("columns", None,
                    "Ratings file columns USER,ITEM,RATING[,TIMESTAMP] by "
                    "header name or 0-based position (default: guessed).")
flags.DEFINE_string("sep", None, "Ratings file separator (default: guessed).")
flags.DEFINE_string("items_file", None, "Items file with titles.")
flags.DEFINE_string("item_columns", "0,1", "Items file columns ID,TITLE.")
flags.DEFINE_string("duplicates", "error", "Repeated (user, item) ratings: "
                    "error, keep_last (in file order) or mean.")
flags.DEFINE_bool("clip_ratings", False, "Clip ratings outside --y_range "
                  "into it (with a warning) instead of stopping.")
flags.DEFINE_bool("ensemble", False,
                  "Average the replicas' predictions and report the "
                  "ensemble's validation MSE.")
flags.DEFINE_integer("ensemble_top", 0,
                     "With --ensemble: average only the k replicas with the "
                     "lowest validation loss (0: all).")
flags.DEFINE_integer("chunk", 0, "At most this many replicas per compiled "
                     "program (0: as many as fit in half the memory).")
flags.DEFINE_bool("plot", False, "With --workdir: draw loss.png, or "
                  "sweep.png for a sweep (needs matplotlib).")
flags.DEFINE_bool("tensorboard", False, "With --workdir (one run): write "
                  "TensorBoard events to WORKDIR/tensorboard (needs "
                  "tensorboardX).")
flags.DEFINE_string("workdir", None,
                    "Folder for metrics.jsonl and summary.json (sweep.json "
                    "for sweeps).")
flags.DEFINE_integer("eval_bs", 8192, "Evaluation batch size.")
flags.DEFINE_integer("checkpoint_every", 1, "With --workdir (one run): "
                     "checkpoint every this many epochs (and at the end); "
                     "rerunning the command resumes from the latest.")
flags.DEFINE_integer("checkpoint_steps", 0, "With --workdir: also "
                     "checkpoint every this many steps inside an epoch (for "
                     "long epochs; 0: at epoch ends only).")
flags.DEFINE_integer("keep_checkpoints", 2, "Checkpoints kept.")
flags.DEFINE_bool("restart", False, "Ignore checkpoints in --workdir and "
                  "start over.")

# Flags whose values a resumed run must share with the run it continues.
RUN_FLAGS = ("dataset", "n_users", "n_items", "n_ratings", "model",
             "n_factors", "y_range", "layers", "epochs", "lr", "wd", "bs",
             "seed", "pct_start", "div", "div_final", "sampling", "split",
             "valid_pct", "split_seed", "valid_file", "item_name",
             "ratings_file", "columns", "sep", "items_file", "item_columns",
             "side", "id_dropout", "duplicates", "clip_ratings", "optimizer",
             "param_dtype", "compute_dtype")

FLAGS = flags.FLAGS


def parse_list(name: str, convert, sep: str = ",") -> list:
  """The values of a list flag, converted, or a UserError naming the flag."""
  text = FLAGS[name].value
  try:
    values = [convert(v.strip()) for v in text.split(sep) if v.strip()]
  except ValueError:
    raise UserError(f"--{name}={text}: cannot read the values (expected "
                    f"{convert.__name__}s separated by '{sep}')") from None
  if not values:
    raise UserError(f"--{name} is empty")
  return values


def _widths(text: str) -> tuple[int, ...]:
  try:
    widths = tuple(int(v) for v in text.split(",") if v.strip())
  except ValueError:
    raise UserError(f"--layers={FLAGS.layers} must be comma-separated "
                    "integers, e.g. 100,50") from None
  if any(w <= 0 for w in widths):
    raise UserError(f"--layers={FLAGS.layers}: every width must be positive")
  return widths


def parse_y_range(text: str):
  """'0,5.5' -> (0.0, 5.5); 'none' -> None."""
  if text.strip().lower() in ("none", ""):
    return None
  try:
    low, high = (float(v) for v in text.split(","))
  except ValueError:
    raise UserError(f"--y_range={text} must be LOW,HIGH (e.g. 0,5.5) or "
                    "'none'") from None
  if not low < high:
    raise UserError(f"--y_range={text}: LOW must be below HIGH")
  return (low, high)


def replicas_from_flags() -> list[sweep.Replica]:
  """The cartesian product of the list-valued flags."""
  names = parse_list("model", str)
  for name in names:
    if name not in models.MODELS:
      raise UserError(f"--model={name} is unknown; choose one of "
                      f"{', '.join(models.MODELS)}")
  n_factors = parse_list("n_factors", int)
  lrs = parse_list("lr", float)
  wds = parse_list("wd", float)
  seeds = parse_list("seed", int)
  for name, values in (("n_factors", n_factors), ("lr", lrs)):
    if any(v <= 0 for v in values):
      raise UserError(f"--{name}={FLAGS[name].value} must be positive")
  if any(w < 0 for w in wds):
    raise UserError(f"--wd={FLAGS.wd} must not be negative")
  layers = [_widths(t) or None for t in FLAGS.layers.split(";")]
  y_ranges = [parse_y_range(t) for t in FLAGS.y_range.split(";")]
  dropouts = parse_list("id_dropout", float)
  if any(not 0 <= p < 1 for p in dropouts):
    raise UserError(f"--id_dropout={FLAGS.id_dropout} must lie in [0, 1)")
  for name in ("param_dtype", "compute_dtype"):
    if FLAGS[name].value not in models.DTYPES:
      raise UserError(f"--{name}={FLAGS[name].value} must be one of "
                      f"{', '.join(models.DTYPES)}")
  replicas = sweep.grid(model=names, n_factors=n_factors, layers=layers,
                        y_range=y_ranges, lr=lrs, wd=wds, seed=seeds,
                        id_dropout=dropouts, param_dtype=[FLAGS.param_dtype],
                        compute_dtype=[FLAGS.compute_dtype])
  # id_dropout matters to side_nn only: one value for the other models.
  return [r for r in replicas if r.model == "side_nn"
          or r.id_dropout == dropouts[0]]


def config_from_flags() -> training.TrainConfig:
  """Settings every replica shares."""
  for name in ("epochs", "bs", "div", "div_final", "eval_bs"):
    if FLAGS[name].value <= 0:
      raise UserError(f"--{name}={FLAGS[name].value} must be positive")
  if not 0 < FLAGS.pct_start < 1:
    raise UserError(f"--pct_start={FLAGS.pct_start} must lie strictly "
                    "between 0 and 1")
  if FLAGS.optimizer not in training.OPTIMIZERS:
    raise UserError(f"--optimizer={FLAGS.optimizer} must be one of "
                    f"{', '.join(training.OPTIMIZERS)}")
  if FLAGS.sampling not in training.SAMPLINGS:
    raise UserError(f"--sampling={FLAGS.sampling} must be one of "
                    f"{', '.join(training.SAMPLINGS)}")
  return training.TrainConfig(
      epochs=FLAGS.epochs, batch_size=FLAGS.bs, pct_start=FLAGS.pct_start,
      div=FLAGS.div, div_final=FLAGS.div_final, sampling=FLAGS.sampling,
      optimizer=FLAGS.optimizer, eval_batch_size=FLAGS.eval_bs,
      row_kernel=FLAGS.row_kernel)


def load_data(split_seed: int, y_ranges=()):
  if FLAGS.dataset == "synthetic":
    return synthetic.generate(FLAGS.n_users, FLAGS.n_items, FLAGS.n_ratings,
                              valid_pct=FLAGS.valid_pct, seed=split_seed)
  if FLAGS.dataset != "movielens":
    raise UserError(f"--dataset={FLAGS.dataset} must be movielens or "
                    "synthetic")
  if FLAGS.valid_file and FLAGS["split"].present:
    raise UserError("--valid_file and --split both choose the validation "
                    "rows; give one")
  item_name = FLAGS.item_name
  if (FLAGS.ratings_file and not FLAGS.items_file
      and not FLAGS["item_name"].present):
    item_name = "movie"
    print("items are keyed by id (no --items_file gives titles)")
  source = datasets.Source(
      ratings_file=FLAGS.ratings_file, data_dir=FLAGS.data_dir,
      columns=io.parse_columns_flag(FLAGS.columns), sep=FLAGS.sep,
      items_file=FLAGS.items_file,
      item_columns=io.parse_columns_flag(FLAGS.item_columns) or (0, 1))
  if FLAGS.split_seed is not None:
    split_seed = FLAGS.split_seed
  return datasets.load(source, item_name=item_name, split=FLAGS.split,
                       valid_pct=FLAGS.valid_pct, seed=split_seed,
                       valid_file=FLAGS.valid_file,
                       duplicates=FLAGS.duplicates, y_ranges=y_ranges,
                       clip=FLAGS.clip_ratings)


def _write_json(path: str, obj) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
    f.write("\n")
  os.replace(tmp, path)


def _context(data) -> dict:
  """What every summary records: data sizes, device, versions, flags."""
  return {
      "n_train": data.train.size, "n_valid": data.valid.size,
      "n_users": data.n_users, "n_items": data.n_items,
      "device": runinfo.device(), "versions": runinfo.versions(),
      "flags": {f.name: f.value for f in FLAGS.get_key_flags_for_module(
          sys.modules[__name__])},
  }


class Metrics:
  """Appends JSON lines to workdir/metrics.jsonl (nothing without workdir)."""

  def __init__(self, workdir: str | None):
    self.path = None
    if workdir:
      try:
        os.makedirs(workdir, exist_ok=True)
      except OSError as e:
        raise UserError(f"--workdir={workdir}: {e.strerror}") from None
      self.path = os.path.join(workdir, "metrics.jsonl")
      open(self.path, "w").close()

  def write(self, row: dict) -> None:
    if self.path:
      with open(self.path, "a") as f:
        f.write(json.dumps(row) + "\n")


class StopOnSignal:
  """While active, SIGINT/SIGTERM ask the run to stop after this epoch."""

  def __init__(self):
    self.signum, self.name, self._old = 0, "", {}

  def requested(self) -> bool:
    return self.signum != 0

  def _handle(self, signum, frame):
    del frame
    if self.signum:  # a second signal: stop now, the default way
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


def run_single(replica: sweep.Replica, data, config) -> dict:
  mesh = sharding.make_mesh(FLAGS.mesh) if FLAGS.mesh else None
  if FLAGS.shard_data and mesh is None:
    raise UserError("--shard_data shards over --mesh; give one")
  model = replica.create_model(data, mesh)
  config = training.TrainConfig(**{**config.__dict__, "lr": replica.lr,
                                   "wd": replica.wd, "seed": replica.seed})
  device = jax.devices()[0]
  print(f"model {replica.model}: {models.count_params(model):,} parameters; "
        f"device {device.platform} ({device.device_kind})")
  # Every process checkpoints into --workdir; only process 0 writes the
  # run's other files there.
  out = FLAGS.workdir if distributed.is_leader() else None
  metrics = Metrics(out)
  board = None
  if FLAGS.tensorboard and out:
    steps = data.train.size // config.batch_size * config.epochs
    board = tblog.Writer(os.path.join(out, "tensorboard"), steps,
                         config.lr, config.pct_start, config.div,
                         config.div_final, config.moms)

  def on_epoch(row):
    metrics.write(row)
    if board:
      board.epoch(row)

  checkpoints = None
  if FLAGS.workdir:  # every process checkpoints (its shards)
    directory = os.path.join(FLAGS.workdir, "checkpoints")
    if FLAGS.restart and distributed.is_leader():
      shutil.rmtree(directory, ignore_errors=True)
    distributed.barrier("restart")
    fingerprint = {**{name: FLAGS[name].value for name in RUN_FLAGS},
                   "n_train": data.train.size, "n_valid": data.valid.size}
    checkpoints = resume.RunCheckpoints(directory, fingerprint,
                                        keep=FLAGS.keep_checkpoints)
  with StopOnSignal() as stop:
    result = training.fit(model, data, config, on_epoch=on_epoch,
                          on_losses=board.losses if board else None,
                          checkpoints=checkpoints,
                          checkpoint_every=FLAGS.checkpoint_every,
                          chunk_steps=FLAGS.checkpoint_steps or None,
                          stop_requested=lambda: distributed.any_process(
                              stop.requested()), mesh=mesh,
                          shard_data=FLAGS.shard_data,
                          log=print if distributed.is_leader() else None)
  if result.stopped:
    where = (f"a checkpoint is in {checkpoints.directory}; rerun the same "
             "command to continue" if checkpoints else "nothing was saved "
             "(no --workdir)")
    # With several processes, one signalled process stops them all.
    print(f"stopped by {stop.name or 'a signal to another process'}; "
          f"{where}", file=sys.stderr)
    sys.exit(128 + (stop.signum or signal.SIGTERM))
  state = result.state
  if jax.process_count() > 1:  # gathered, for this process's devices alone
    state = state.replace(params=distributed.to_host(state.params),
                          model_state=distributed.to_host(state.model_state),
                          opt_state=None, rng=None)
  final = result.history[-1]
  speed = (f"{result.samples_per_second:,.0f} training samples/s"
           if result.train_seconds else "the run was already complete")
  print(f"final valid MSE {final['valid_loss']:.4f} (RMSE "
        f"{final['valid_rmse']:.4f}); {speed}, compile "
        f"{result.compile_seconds:.1f}s")
  top = _ranking(state, data)
  summary = {
      "final": final, "ranking": top,
      "best_valid_loss": min(h["valid_loss"] for h in result.history),
      "n_params": models.count_params(model),
      "compile_seconds": result.compile_seconds,
      "train_seconds": result.train_seconds,
      "train_samples_per_second": result.samples_per_second,
      **_context(data),
  }
  if out:
    _write_json(os.path.join(out, "summary.json"), summary)
    if FLAGS.dataset == "synthetic":  # no ids or titles worth a model file
      print(f"wrote {metrics.path} and summary.json")
      return summary
    saved = _save_model(replica, state.params, state.model_state, data,
                        summary)
    print(f"wrote {metrics.path}, summary.json and model/")
    if board:
      if "item_factors" in saved.state.params:
        labels = (saved.titles if saved.titles is not None
                  else saved.items.decode(range(len(saved.items))))
        board.embedding(saved.state.params["item_factors"]["embedding"],
                        labels, "item_factors")
      board.close()
      print(f"wrote TensorBoard events: tensorboard --logdir="
            f"{os.path.join(out, 'tensorboard')}")
    if FLAGS.plot:
      path = os.path.join(out, "loss.png")
      plots.loss_plot(result.history, path)
      print(f"wrote {path}")
  return summary


def _ranking(state, data) -> dict:
  """Top-10 ranking quality on the validation split, printed."""
  top = ranking.evaluate_ranking(state, data.train, data.valid, data.n_items)
  print(f"ranking over unseen items (rated >= 4 is relevant, "
        f"{top['ranked_users']:.0f} users): precision@10 "
        f"{top['precision@10']:.4f}, recall@10 {top['recall@10']:.4f}, "
        f"NDCG@10 {top['ndcg@10']:.4f}")
  return top


def _save_model(replica, params, model_state, data, summary):
  """The trained model, for jaxcf.load(workdir) and python -m jaxcf.inspect."""
  model = trained.TrainedModel.from_training(
      replica, params, model_state, data, info={"summary": summary})
  model.save(os.path.join(FLAGS.workdir, "model"))
  return model


def run_sweep(replicas: list[sweep.Replica], data, config) -> dict:
  swept = [k for k, v in replicas[0].hparams().items()
           if len({json.dumps(r.hparams()[k]) for r in replicas}) > 1]
  print(f"sweep of {len(replicas)} replicas over "
        f"{', '.join(swept) or 'nothing'}; device {jax.devices()[0].platform}")
  metrics = Metrics(FLAGS.workdir)
  result = sweep.train_sweep(
      replicas, data, config, chunk=FLAGS.chunk or None,
      ensemble_top=FLAGS.ensemble_top if FLAGS.ensemble else None,
      on_epoch=lambda r, row: metrics.write(
          {"replica": r, **replicas[r].hparams(), **row}))
  ranked = [_ranking_row(rank, i, result.results[i].replica.hparams(),
                         result.results[i].history)
            for rank, i in enumerate(result.ranking(), 1)]
  print(_ranking_table(ranked, swept))
  if result.ensemble:
    e = result.ensemble
    print(f"ensemble of {len(e['members'])} replicas: valid MSE "
          f"{e['valid_loss']:.4f} (RMSE {e['valid_rmse']:.4f}); best single "
          f"{ranked[0]['valid_loss']:.4f}")
  print(f"{result.samples_per_second:,.0f} training samples/s over all "
        f"replicas, compile {result.compile_seconds:.1f}s")
  summary = {
      "n_replicas": len(replicas), "swept": swept, "ranking": ranked,
      "ensemble": result.ensemble,
      "compile_seconds": result.compile_seconds,
      "train_seconds": result.train_seconds,
      "train_samples_per_second": result.samples_per_second,
      **_context(data),
  }
  if FLAGS.workdir:
    _write_json(os.path.join(FLAGS.workdir, "sweep.json"), summary)
    best = result.results[result.ranking()[0]]
    _save_model(best.replica, best.params, best.model_state, data,
                {"best_replica": ranked[0]})
    print(f"wrote {metrics.path}, sweep.json and model/ (the best replica)")
    if FLAGS.plot:
      path = os.path.join(FLAGS.workdir, "sweep.png")
      plots.sweep_plot(result, swept, path)
      print(f"wrote {path}")
  return summary


def _ranking_row(rank: int, replica: int, hparams: dict, history: list[dict]
                 ) -> dict:
  """A replica's line in the ranking: its settings, final and best scores."""
  best = min(history, key=lambda h: h["valid_loss"])
  return {"rank": rank, "replica": replica, **hparams,
          "valid_loss": history[-1]["valid_loss"],
          "valid_rmse": history[-1]["valid_rmse"],
          "best_valid_loss": best["valid_loss"], "best_epoch": best["epoch"]}


def _ranking_table(ranked: list[dict], swept: list[str], top: int = 10
                   ) -> str:
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


# Flags of the factor models' training that AutoRec has no use for.
NOT_AUTOREC = ("n_factors", "y_range", "bs", "pct_start", "div", "div_final",
               "sampling", "optimizer", "row_kernel", "param_dtype",
               "compute_dtype", "mesh",
               "shard_data", "side", "id_dropout", "chunk", "plot",
               "tensorboard", "checkpoint_steps", "checkpoint_every",
               "restart", "eval_bs")
AUTOREC_DEFAULTS = {"epochs": 500, "lr": [1e-3], "wd": [100.0]}


def autorec_configs() -> list[autorec.AutoRecConfig]:
  """The cartesian product of --layers, --lr, --wd (L2), --input_dropout
  and --seed, with AutoRec's defaults for the flags not given."""
  if parse_list("model", str) != ["autorec"]:
    raise UserError("--model=autorec trains alone; run the factor models "
                    "in another command")
  given = [n for n in NOT_AUTOREC if FLAGS[n].present]
  if given:
    raise UserError(f"--{given[0]} does not apply to --model=autorec (it "
                    "trains full-batch with Adam); drop it")
  if FLAGS.num_processes > 1:
    raise UserError("--model=autorec runs in one process; drop "
                    "--num_processes")
  lists = {}
  for name in ("lr", "wd", "seed", "input_dropout"):
    convert = int if name == "seed" else float
    lists[name] = (parse_list(name, convert) if FLAGS[name].present
                   else AUTOREC_DEFAULTS.get(name) or parse_list(name,
                                                                 convert))
  for name, ok, rule in (("lr", lambda v: v > 0, "positive"),
                         ("wd", lambda v: v >= 0, "at least 0"),
                         ("input_dropout", lambda v: 0 <= v < 1, "in [0, 1)")):
    if not all(ok(v) for v in lists[name]):
      raise UserError(f"--{name}={FLAGS[name].value}: every value must be "
                      f"{rule}")
  layers = [_widths(t) or (500,) for t in FLAGS.layers.split(";")]
  configs = []
  for widths in layers:
    for lr in lists["lr"]:
      for lam in lists["wd"]:
        for dropout in lists["input_dropout"]:
          for seed in lists["seed"]:
            configs.append(autorec.AutoRecConfig(
                layers=widths, dropout=dropout, lam=lam, lr=lr, seed=seed))
  return configs


def run_autorec() -> dict:
  """--model=autorec: replicas trained together (`jaxcf.autorec`), a ranking,
  the ensemble with --ensemble, the best replica's weights in --workdir."""
  configs = autorec_configs()
  epochs = FLAGS.epochs if FLAGS["epochs"].present else AUTOREC_DEFAULTS[
      "epochs"]
  if epochs <= 0:
    raise UserError(f"--epochs={epochs} must be positive")
  data = load_data(split_seed=configs[0].seed)
  hparams = [_autorec_hparams(c) for c in configs]
  swept = [k for k in hparams[0]
           if len({json.dumps(h[k]) for h in hparams}) > 1]
  print(f"autorec: {len(configs)} replica(s) over "
        f"{', '.join(swept) or 'nothing'}, {epochs} full-batch epochs; "
        f"device {jax.devices()[0].platform}")
  metrics = Metrics(FLAGS.workdir)
  results = autorec.train(data, configs, epochs,
                          eval_every=max(1, epochs // 10))
  for k, r in enumerate(results):
    for row in r.history:
      metrics.write({"replica": k, **hparams[k], **row})
  order = sorted(range(len(results)), key=lambda k: results[k].valid_loss)
  ranked = [_ranking_row(rank, k, hparams[k], results[k].history)
            for rank, k in enumerate(order, 1)]
  print(_ranking_table(ranked, swept))
  ensemble = None
  if FLAGS.ensemble:
    members = order[:FLAGS.ensemble_top or len(order)]
    ensemble = sweep.ensemble_score(results, sorted(members),
                                    data.valid.ratings)
    print(f"ensemble of {len(members)} replicas: valid MSE "
          f"{ensemble['valid_loss']:.4f} (RMSE {ensemble['valid_rmse']:.4f}); "
          f"best single {ranked[0]['valid_loss']:.4f}")
  summary = {"model": "autorec", "epochs": epochs, "swept": swept,
             "ranking": ranked, "ensemble": ensemble, **_context(data)}
  if FLAGS.workdir:
    _write_json(os.path.join(FLAGS.workdir, "summary.json"), summary)
    best = results[order[0]]
    weights = os.path.join(FLAGS.workdir, "autorec_params.npz")
    np.savez(weights, **{"/".join(k.key for k in path): np.asarray(leaf)
                         for path, leaf in
                         jax.tree_util.tree_leaves_with_path(best.params)})
    print(f"wrote {metrics.path}, summary.json and autorec_params.npz (the "
          "best replica's weights)")
  return summary


def _autorec_hparams(config: autorec.AutoRecConfig) -> dict:
  return {"layers": list(config.layers), "input_dropout": config.dropout,
          "wd": config.lam, "lr": config.lr, "seed": config.seed}


def join_processes() -> None:
  """With --num_processes > 1: joins the others; only process 0 prints and
  writes files (the others keep stderr)."""
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                         FLAGS.process_id)
  if FLAGS.num_processes == 1:
    return
  if not FLAGS.mesh:
    raise UserError("--num_processes > 1 trains over a mesh of all their "
                    f"devices: add --mesh (e.g. data:{jax.device_count()})")
  print(f"process {jax.process_index()} of {jax.process_count()}: "
        f"{jax.local_device_count()} of {jax.device_count()} devices",
        file=sys.stderr, flush=True)
  if FLAGS.workdir:
    distributed.check_same(os.path.abspath(FLAGS.workdir), "--workdir")
  if not distributed.is_leader():  # run_single writes files on 0 only
    sys.stdout = open(os.devnull, "w")


def run() -> dict:
  """Trains as the flags say; returns the summary dict."""
  join_processes()
  if FLAGS.ensemble_top < 0:
    raise UserError(f"--ensemble_top={FLAGS.ensemble_top} must be 0 (all) "
                    "or a positive count")
  if "autorec" in parse_list("model", str):
    return run_autorec()
  replicas = replicas_from_flags()
  config = config_from_flags()
  for name in ("plot", "tensorboard"):
    if FLAGS[name].value and not FLAGS.workdir:
      raise UserError(f"--{name} writes into --workdir; give one")
  data = load_data(split_seed=replicas[0].seed,
                   y_ranges={r.y_range for r in replicas})
  if any(r.model == "side_nn" for r in replicas):
    if data.folder is None:
      raise UserError("--model=side_nn uses MovieLens 100k's side "
                      "information; it is not available for --ratings_file")
    kinds = [k.strip() for k in FLAGS.side.split(",") if k.strip()]
    data = features.attach(data, features.movielens(data, data.folder, kinds))
    print(f"side information: {', '.join(kinds)}")
  if len(replicas) == 1 and not FLAGS.ensemble:
    summary = run_single(replicas[0], data, config)
    distributed.barrier("finished")  # the others wait while 0 writes
    return summary
  if jax.process_count() > 1:
    raise UserError("sweeps run in one process; drop --num_processes")
  for name in ("tensorboard", "mesh", "shard_data"):
    if FLAGS[name].value:
      raise UserError(f"--{name} applies to one run; drop it for sweeps")
  if FLAGS.row_kernel != "xla":
    raise UserError(f"--row_kernel={FLAGS.row_kernel} applies to one run "
                    "(the kernels do not vmap over replicas); drop it for "
                    "sweeps")
  return run_sweep(replicas, data, config)


if __name__ == "__main__":
  cli.run(run)
