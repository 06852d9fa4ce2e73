"""The sections of a run's config (`jaxcf.config.RunConfig`): data, models,
training, output and hosts. Each field is named as train.py's flag that
sets it and carries that flag's help; a bad value is a UserError naming the
flag when the section is built.
"""

from __future__ import annotations

import dataclasses
import math

from jaxcf import data as data_lib
from jaxcf import models, movielens
from jaxcf.errors import UserError


def field(default, doc: str, *, affects_result: bool = True):
  """A config field: its default, its flag's help, and whether a resumed
  run must share its value (`RunConfig.fingerprint`)."""
  return dataclasses.field(default=default, metadata={
      "doc": doc, "affects_result": affects_result})


def _check(ok: bool, name: str, value, rule: str) -> None:
  if not ok:
    raise UserError(f"--{name}={_text(value)} must be {rule}")


def _text(value) -> str:
  if isinstance(value, (tuple, list)):
    return ";".join(_text(v) for v in value) if any(
        isinstance(v, (tuple, list)) for v in value) else ",".join(
            "none" if v is None else str(v) for v in value)
  return str(value)


def _tuple(value):
  return None if value is None else tuple(value)


def _as_tuple(section, name: str) -> None:
  """A list field given one bare value (lr=1e-3, model='dot') or any
  iterable (a list, range(4), a numpy array): stored as a tuple of plain
  Python values."""
  value = getattr(section, name)
  plain = lambda v: v.item() if hasattr(v, "item") else v
  if value is None:
    return
  if isinstance(value, str) or not hasattr(value, "__iter__"):
    value = (value,)
  object.__setattr__(section, name, tuple(plain(v) for v in value))


def _finite(*values) -> bool:
  return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


@dataclasses.dataclass(frozen=True)
class Data:
  """Where ratings come from and how they are split."""
  dataset: str = field("movielens", "movielens (= ml-100k) or another "
                       "MovieLens release by name: ml-1m, ml-10m, ml-20m, "
                       "ml-25m, ml-32m, ml-latest-small (or --ratings_file);"
                       " or synthetic: --n_ratings ratings of --n_users x "
                       "--n_items from a low-rank model plus noise.")
  data_dir: str | None = field(None, "Folder that is or holds the "
                               "release's folder (ml-100k/, ml-1m/, ...; "
                               "else $JAXCF_DATA, the cache, or a "
                               "download).", affects_result=False)
  ratings_file: str | None = field(None, "Your own ratings CSV/TSV instead "
                                   "of MovieLens 100k.")
  columns: str | None = field(None, "Ratings file columns USER,ITEM,RATING"
                              "[,TIMESTAMP] by header name or 0-based "
                              "position (default: guessed).")
  sep: str | None = field(None, "Ratings file separator (default: guessed).")
  items_file: str | None = field(None, "Items file with titles.")
  item_columns: str = field("0,1", "Items file columns ID,TITLE.")
  items_sep: str | None = field(None, "Items file separator (default: "
                                "guessed).")
  encoding: str | None = field(None, "Text encoding of the ratings, items "
                               "and validation files (default: UTF-8, or "
                               "latin-1 for a file with no UTF-8 in it).")
  item_name: str | None = field(None, "title (the book: 1664 titles) or "
                                "movie (1682 ids); default: title where "
                                "there are titles (MovieLens, or "
                                "--items_file), else the ids.")
  split: str = field("random", "random (--valid_pct), ratio:0.9 (a seeded "
                     "90/10 holdout), temporal:0.2 (each user's latest 20%"
                     "), leave_last_out (each user's last rating), or an "
                     "official MovieLens 100k split: u1..u5, ua, ub.")
  valid_pct: float = field(0.2, "Validation share of --split=random.")
  split_seed: int | None = field(None, "Seed of --split=random (default: "
                                 "the first --seed).")
  valid_file: str | None = field(None, "TSV/CSV of validation (user, item "
                                 "id) pairs; overrides --split.")
  duplicates: str = field("error", "Repeated (user, item) ratings: error, "
                          "keep_last (in file order) or mean.")
  clip_ratings: bool = field(False, "Clip ratings outside --y_range into it "
                             "(with a warning) instead of stopping.")
  side: str = field("user,item,time", "side_nn's side information "
                    "(MovieLens 100k): any of user (age, gender, "
                    "occupation), item (genres, year), time (of the "
                    "rating).")
  n_users: int = field(480_000, "Synthetic users.")
  n_items: int = field(18_000, "Synthetic items.")
  n_ratings: int = field(10_000_000, "Synthetic ratings.")

  def __post_init__(self):
    _check(self.dataset in ("movielens", "synthetic", *movielens.RELEASES),
           "dataset", self.dataset, "movielens, synthetic or one of "
           f"{', '.join(movielens.RELEASES)}")
    _check(_finite(self.valid_pct) and 0 < self.valid_pct < 1, "valid_pct",
           self.valid_pct, "strictly between 0 and 1")
    data_lib.parse_split(self.split, movielens.SPLITS)
    _check(self.duplicates in data_lib.DUPLICATES, "duplicates",
           self.duplicates, f"one of {', '.join(data_lib.DUPLICATES)}")
    _check(self.item_name in (None, "title", "movie", "item"), "item_name",
           self.item_name, "'title' or 'movie'")
    _check(self.split_seed is None or 0 <= self.split_seed < 2**32,
           "split_seed", self.split_seed, "an integer in [0, 2^32)")
    for name in ("n_users", "n_items", "n_ratings"):
      _check(getattr(self, name) >= 1, name, getattr(self, name), "positive")
    if self.encoding:
      import codecs  # pylint: disable=g-import-not-at-top
      try:
        codecs.lookup(self.encoding)
      except LookupError:
        raise UserError(f"--encoding={self.encoding} is not an encoding "
                        "Python knows (e.g. utf-8, latin-1, cp1252)") from None
    if self.valid_file and self.split != "random":
      raise UserError("--valid_file and --split both choose the validation "
                      "rows; give one")


@dataclasses.dataclass(frozen=True)
class Model:
  """The models: lists sweep (their cartesian product with lr, wd, seed)."""
  model: tuple[str, ...] = field(("dot_bias",), "")
  n_factors: tuple[int, ...] = field((50,), "Factor width of the factor-dot "
                                     "models (a list: one program per "
                                     "width).")
  layers: tuple[tuple[int, ...] | None, ...] = field(
      (None,), "Hidden widths of the MLP models, e.g. 100,50 (empty: the "
      "model's own, collab_nn 100, embedding_nn 100,50, autorec 500); a "
      "list with ';'.")
  y_range: tuple[tuple[float, float] | None, ...] = field(
      ((0.0, 5.5),), "LOW,HIGH of sigmoid_range, or 'none' for a raw "
      "output; a list with ';', e.g. '0,5.5;0.5,5.25'.")
  id_dropout: tuple[float, ...] = field((0.0,), "side_nn: the share of user "
                                        "ids hidden in training, so the "
                                        "'#na#' row learns new users (a "
                                        "list sweeps).")
  input_dropout: tuple[float, ...] = field((0.0,), "autorec: the share of "
                                           "input ratings hidden while "
                                           "training (a list sweeps).")
  samples: int = field(32, "bpmf: posterior samples kept in the saved "
                       "model (the last this many sweeps).")
  implicit: bool = field(False, "bpmf: regress each user's prior mean on "
                         "the items they rated and each item's on its "
                         "raters (Bayesian SVD++, flipped; training "
                         "ratings only).")
  side_prior: bool = field(False, "bpmf: regress the prior means on the "
                           "MovieLens side features too (users: gender, "
                           "occupation, age; items: genres, year).")
  param_dtype: str = field("float32", "float32, or bfloat16: store weights "
                           "and optimiser moments in half the bytes.")
  compute_dtype: str = field("float32", "float32, or bfloat16: compute "
                             "lookups and layers in bfloat16 (outputs and "
                             "the loss stay float32).")

  def __post_init__(self):
    for name in ("model", "n_factors", "id_dropout", "input_dropout"):
      _as_tuple(self, name)
    # One layer spec (100, 50) or y_range (0, 5.5) given bare: a list of one.
    if self.layers is None or all(isinstance(w, int) for w in self.layers):
      object.__setattr__(self, "layers", (_tuple(self.layers),))
    else:
      object.__setattr__(self, "layers", tuple(_tuple(v) for v in
                                               self.layers))
    if self.y_range is None or all(isinstance(v, (int, float))
                                   for v in self.y_range):
      object.__setattr__(self, "y_range", (_tuple(self.y_range),))
    else:
      object.__setattr__(self, "y_range", tuple(_tuple(v) for v in
                                                self.y_range))
    for name in ("model", "n_factors", "layers", "y_range", "id_dropout",
                 "input_dropout"):
      _check(len(getattr(self, name)) > 0, name, "", "given")
    for name in self.model:
      models.get(name)
    trainers = {models.get(name).trainer for name in self.model}
    if len(trainers) > 1:
      full = [n for n in self.model if models.get(n).trainer != "batches"]
      raise UserError(f"--model={full[0]} trains alone (its own trainer); run "
                      "the other models in another command")

  @property
  def families(self) -> list[models.Family]:
    return [models.get(name) for name in self.model]


@dataclasses.dataclass(frozen=True)
class Train:
  """How every replica trains: fastai's fit_one_cycle and a batch size."""
  epochs: int | None = field(None, "Epochs of the one-cycle run (default "
                             "5; autorec: full-batch epochs, 500).")
  lr: tuple[float, ...] | None = field(None, "Peak learning rate (fastai's "
                                       "lr_max; default 5e-3; autorec: "
                                       "Adam's constant lr, 1e-3), or a "
                                       "list.")
  wd: tuple[float, ...] | None = field(None, "Decoupled weight decay "
                                       "(fastai's wd; default 0.1; autorec: "
                                       "its L2 weight, 100), or a list.")
  seed: tuple[int, ...] = field((42,), "Seed of initialisation and data "
                                "order, or a list; the first also seeds the "
                                "random split.")
  bs: int = field(64, "Training batch size.")
  burn_in: int | None = field(None, "bpmf: Gibbs sweeps (--epochs) before "
                              "the posterior mean starts averaging "
                              "(default: a quarter of them).")
  pct_start: float = field(0.25, "Share of the cycle spent warming up.")
  div: float = field(25.0, "The cycle starts at lr / div.")
  div_final: float = field(1e5, "The cycle ends at lr / div_final.")
  sampling: str = field("shuffle", "shuffle: every training row once per "
                        "epoch. replacement: draw rows with replacement, as "
                        "fastai 2.8's tabular loader does.")
  optimizer: str = field("adamw", "")
  row_kernel: str = field("xla", "With a row-wise --optimizer: xla, or cpp:"
                          " move and update the rows with small C++ kernels "
                          "(CPU, one device, float32; built on first use).",
                          affects_result=False)
  # steps.EVAL_BATCH, written out: config stays free of JAX at import.
  eval_bs: int = field(32768, "Evaluation batch size (does not change the "
                       "result).", affects_result=False)

  def __post_init__(self):
    from jaxcf import steps, training  # pylint: disable=g-import-not-at-top
    for name in ("lr", "wd", "seed"):
      _as_tuple(self, name)
    for name in ("epochs", "bs", "eval_bs"):
      value = getattr(self, name)
      _check(value is None or (isinstance(value, int) and value >= 1), name,
             value, "a positive integer")
    for name in ("div", "div_final"):
      value = getattr(self, name)
      _check(_finite(value) and value > 0, name, value, "a positive number")
    _check(_finite(self.pct_start) and 0 < self.pct_start < 1, "pct_start",
           self.pct_start, "strictly between 0 and 1")
    _check(self.optimizer in training.OPTIMIZERS, "optimizer",
           self.optimizer, f"one of {', '.join(training.OPTIMIZERS)}")
    _check(self.sampling in steps.SAMPLINGS, "sampling", self.sampling,
           f"one of {', '.join(steps.SAMPLINGS)}")
    _check(self.row_kernel in training.ROW_KERNELS, "row_kernel",
           self.row_kernel, f"one of {', '.join(training.ROW_KERNELS)}")
    for name in ("lr", "wd", "seed"):
      _check(getattr(self, name) is None or len(getattr(self, name)) > 0,
             name, "", "given")


@dataclasses.dataclass(frozen=True)
class Output:
  """What a run writes, and how often it checkpoints."""
  workdir: str | None = field(None, "Folder for metrics.jsonl, config.json, "
                              "summary.json (sweep.json for sweeps), the "
                              "model and checkpoints.", affects_result=False)
  checkpoint_every: int = field(1, "With --workdir (one run): checkpoint "
                                "every this many epochs (and at the end); "
                                "rerunning the command resumes from the "
                                "latest.", affects_result=False)
  checkpoint_steps: int = field(0, "With --workdir: also checkpoint every "
                                "this many steps inside an epoch (for long "
                                "epochs; 0: at epoch ends only), within "
                                "--checkpoint_seconds.",
                                affects_result=False)
  checkpoint_seconds: float = field(
      30.0, "With --workdir (one run): skip a checkpoint due less than this "
      "many seconds after the previous one (or the start), so short runs "
      "save once, at the end; a stop by a signal always saves (0: every "
      "one).", affects_result=False)
  keep_checkpoints: int = field(2, "Checkpoints kept.", affects_result=False)
  restart: bool = field(False, "Move what --workdir holds (another run, "
                        "or this one's checkpoints) to WORKDIR/previous-N "
                        "and start over.", affects_result=False)
  plot: bool = field(False, "With --workdir: draw loss.png, or sweep.png for"
                     " a sweep (needs matplotlib).", affects_result=False)
  tensorboard: bool = field(False, "With --workdir (one run): write "
                            "TensorBoard events to WORKDIR/tensorboard "
                            "(needs tensorboardX).", affects_result=False)
  ensemble: bool = field(False, "Average the replicas' predictions, report "
                         "the ensemble's validation MSE and save it as the "
                         "model.", affects_result=False)
  ensemble_top: int = field(0, "With --ensemble: average only the k "
                            "replicas with the lowest validation loss (0: "
                            "all).", affects_result=False)
  chunk: int = field(0, "At most this many replicas per compiled program "
                     "(0: as many as fit in half the memory).",
                     affects_result=False)

  def __post_init__(self):
    _check(self.checkpoint_every >= 1, "checkpoint_every",
           self.checkpoint_every, "at least 1")
    _check(self.checkpoint_steps >= 0, "checkpoint_steps",
           self.checkpoint_steps, "0 (epoch ends only) or positive")
    _check(self.checkpoint_seconds >= 0, "checkpoint_seconds",
           self.checkpoint_seconds, "0 (every checkpoint) or positive")
    _check(self.keep_checkpoints >= 1, "keep_checkpoints",
           self.keep_checkpoints, "at least 1 (the latest is what resumes)")
    _check(self.ensemble_top >= 0, "ensemble_top", self.ensemble_top,
           "0 (all) or a positive count")
    _check(self.chunk >= 0, "chunk", self.chunk, "at least 1 (or 0: auto)")
    for name in ("plot", "tensorboard"):
      if getattr(self, name) and not self.workdir:
        raise UserError(f"--{name} writes into --workdir; give one")


@dataclasses.dataclass(frozen=True)
class Hosts:
  """Devices, processes and the compilation cache."""
  mesh: str | None = field(None, "Train over a device mesh, e.g. "
                           "data:4,model:2: batches split over data, "
                           "user/item tables by rows over model (one run).",
                           affects_result=False)
  shard_data: bool = field(False, "With --mesh: each data shard keeps and "
                           "shuffles its own training rows (what several "
                           "processes always do).")
  coordinator_address: str | None = field(
      None, "Several processes: HOST:PORT of process 0, the same for every "
      "process.", affects_result=False)
  num_processes: int = field(1, "Several processes: how many.",
                             affects_result=False)
  process_id: int = field(0, "Several processes: this one's index, 0 .. "
                          "num_processes - 1.", affects_result=False)
  compilation_cache: bool = field(True, "Keep compiled programs in "
                                  "$JAXCF_CACHE/xla (~/.cache/jaxcf/xla), so "
                                  "a repeated or resumed run skips most "
                                  "compilation.", affects_result=False)

  def __post_init__(self):
    if self.shard_data and not self.mesh:
      raise UserError("--shard_data shards over --mesh; give one")
