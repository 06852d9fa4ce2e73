r"""Trains a collaborative-filtering model; the defaults are the book's.

  python train.py                                   # dot_bias on MovieLens 100k
  python train.py --model=embedding_nn --layers=100,50
  python train.py --valid_file=../shared/data/fastai-splits/fastai_seed42_valid.tsv
  python train.py --split=u1 --item_name=movie --workdir=runs/u1
  python train.py --ratings_file=ratings.csv --items_file=movies.csv \
      --item_columns=movieId,title

A mistake in a flag or an input file ends with one line on stderr and exit
status 2.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys

from absl import app, flags, logging
import jax

from jaxcf import datasets, io, models, training
from jaxcf.errors import UserError

flags.DEFINE_string("model", "dot_bias",
                    "dot | dot_bias | collab_nn | embedding_nn.")
flags.DEFINE_integer("n_factors", 50, "Factor width of the dot models.")
flags.DEFINE_string("y_range", "0,5.5",
                    "LOW,HIGH of sigmoid_range, or 'none' for a raw output.")
flags.DEFINE_string("layers", "",
                    "Hidden widths of the NN models, e.g. 100,50 (empty: "
                    "collab_nn 100, embedding_nn 100,50).")
flags.DEFINE_integer("epochs", 5, "Epochs of the one-cycle run.")
flags.DEFINE_float("lr", 5e-3, "Peak learning rate (fastai's lr_max).")
flags.DEFINE_float("wd", 0.1, "Decoupled weight decay (fastai's wd).")
flags.DEFINE_integer("bs", 64, "Training batch size.")
flags.DEFINE_integer("seed", 42, "Seed of initialisation, data order and the "
                     "random split.")
flags.DEFINE_float("pct_start", 0.25, "Share of the cycle spent warming up.")
flags.DEFINE_float("div", 25.0, "The cycle starts at lr / div.")
flags.DEFINE_float("div_final", 1e5, "The cycle ends at lr / div_final.")
flags.DEFINE_string("sampling", "shuffle",
                    "shuffle: every training row once per epoch. "
                    "replacement: draw rows with replacement, as fastai 2.8's "
                    "tabular loader does.")
flags.DEFINE_string("split", "random",
                    "random, or an official MovieLens split: u1..u5, ua, ub.")
flags.DEFINE_float("valid_pct", 0.2, "Validation share of --split=random.")
flags.DEFINE_integer("split_seed", None, "Seed of --split=random (default: "
                     "--seed).")
flags.DEFINE_string("valid_file", None,
                    "TSV/CSV of validation (user, item id) pairs; overrides "
                    "--split.")
flags.DEFINE_string("item_name", "title",
                    "title (the book: 1664 titles) or movie (1682 ids).")
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
flags.DEFINE_string("workdir", None,
                    "Folder for metrics.jsonl and summary.json.")
flags.DEFINE_integer("eval_bs", 8192, "Evaluation batch size.")

FLAGS = flags.FLAGS


def _positive(name, value):
  if value is None or value <= 0:
    raise UserError(f"--{name}={value} must be positive")


def _ints(name: str, text: str) -> list[int]:
  try:
    values = [int(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise UserError(f"--{name}={text} must be comma-separated integers, e.g. "
                    "100,50") from None
  if any(v <= 0 for v in values):
    raise UserError(f"--{name}={text}: every width must be positive")
  return values


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


def _check_flags() -> None:
  """Flag values that parse but make no sense become UserErrors."""
  if FLAGS.model not in models.MODELS:
    raise UserError(f"--model={FLAGS.model} is unknown; choose one of "
                    f"{', '.join(models.MODELS)}")
  for name in ("n_factors", "epochs", "lr", "bs", "div", "div_final",
               "eval_bs"):
    _positive(name, FLAGS[name].value)
  if FLAGS.wd < 0:
    raise UserError(f"--wd={FLAGS.wd} must not be negative")
  if not 0 < FLAGS.pct_start < 1:
    raise UserError(f"--pct_start={FLAGS.pct_start} must lie strictly "
                    "between 0 and 1")
  if FLAGS.sampling not in training.SAMPLINGS:
    raise UserError(f"--sampling={FLAGS.sampling} must be one of "
                    f"{', '.join(training.SAMPLINGS)}")
  if FLAGS.valid_file and FLAGS["split"].present:
    raise UserError("--valid_file and --split both choose the validation "
                    "rows; give one")


def _write_json(path: str, obj) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
    f.write("\n")
  os.replace(tmp, path)


def _versions() -> dict[str, str]:
  out = {"python": platform.python_version()}
  for pkg in ("jaxcf", "jax", "jaxlib", "flax", "optax", "numpy", "pandas"):
    try:
      out[pkg] = importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
      out[pkg] = "not installed"
  return out


def run() -> dict:
  """Trains as the flags say; returns the summary dict."""

  _check_flags()
  y_range = parse_y_range(FLAGS.y_range)
  layers = _ints("layers", FLAGS.layers) or None
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
  split_seed = FLAGS.seed if FLAGS.split_seed is None else FLAGS.split_seed
  data = datasets.load(source, item_name=item_name, split=FLAGS.split,
                       valid_pct=FLAGS.valid_pct, seed=split_seed,
                       valid_file=FLAGS.valid_file)
  model = models.create(FLAGS.model, data.n_users, data.n_items,
                        n_factors=FLAGS.n_factors, y_range=y_range,
                        layers=layers)
  config = training.TrainConfig(
      epochs=FLAGS.epochs, lr=FLAGS.lr, wd=FLAGS.wd, batch_size=FLAGS.bs,
      seed=FLAGS.seed, pct_start=FLAGS.pct_start, div=FLAGS.div,
      div_final=FLAGS.div_final, sampling=FLAGS.sampling,
      eval_batch_size=FLAGS.eval_bs)
  device = jax.devices()[0]
  print(f"model {FLAGS.model}: {models.count_params(model):,} parameters; "
        f"device {device.platform} ({device.device_kind})")

  metrics_path = None
  if FLAGS.workdir:
    try:
      os.makedirs(FLAGS.workdir, exist_ok=True)
    except OSError as e:
      raise UserError(f"--workdir={FLAGS.workdir}: {e.strerror}") from None
    metrics_path = os.path.join(FLAGS.workdir, "metrics.jsonl")
    open(metrics_path, "w").close()

  def on_epoch(row):
    if metrics_path:
      with open(metrics_path, "a") as f:
        f.write(json.dumps(row) + "\n")

  result = training.fit(model, data, config, on_epoch=on_epoch)
  final = result.history[-1]
  summary = {
      "final": final,
      "best_valid_loss": min(h["valid_loss"] for h in result.history),
      "n_params": models.count_params(model),
      "n_train": len(data.train), "n_valid": len(data.valid),
      "n_users": data.n_users, "n_items": data.n_items,
      "compile_seconds": result.compile_seconds,
      "train_seconds": result.train_seconds,
      "train_samples_per_second": result.samples_per_second,
      "device": {"platform": device.platform, "kind": device.device_kind,
                 "count": jax.device_count()},
      "versions": _versions(),
      "flags": {f.name: f.value for f in FLAGS.get_key_flags_for_module(
          sys.modules[__name__])},
  }
  print(f"final valid MSE {final['valid_loss']:.4f} (RMSE "
        f"{final['valid_rmse']:.4f}); {result.samples_per_second:,.0f} "
        f"training samples/s, compile {result.compile_seconds:.1f}s")
  if FLAGS.workdir:
    _write_json(os.path.join(FLAGS.workdir, "summary.json"), summary)
    print(f"wrote {metrics_path} and summary.json")
  return summary


def main(argv):
  if not FLAGS["verbosity"].present:  # keep JAX's INFO lines out of the table
    logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    _fail(f"unexpected arguments {' '.join(argv[1:])}; flags look like "
          "--name=value")
  try:
    run()
  except UserError as e:
    _fail(str(e))


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def parse_flags(argv):
  """absl's parsing, but a bad flag is one line on stderr and exit 2."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    _fail(f"{e}. See --helpfull.")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
