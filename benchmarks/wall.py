r"""Whole-process wall time, by phase: what a user waits for, not the step.

Each case is a fresh process, timed from its start to its exit, the cases
alternating in rounds (the table reports medians and the spread); every
case but the first runs with its compiled programs cached (one untimed run
fills the cache first):

  book (cold)   python train.py --workdir=W, an empty compilation cache
  book (warm)   the same again, its compiled programs cached
  sweep of 8    the book's recipe over lr x wd x seed (8 vmapped replicas)
  synthetic 10M --dataset=synthetic 480k users x 18k items, 10M ratings,
                rowwise_adagrad, bs 8192, one epoch
  fastai book   the book's fastai code end to end: CollabDataLoaders,
                collab_learner, fit_one_cycle(5, 5e-3, wd=0.1) (needs the
                bench extra: torch, fastai)

With --baseline=DIR (another checkout, e.g. `git worktree add /tmp/before
COMMIT`), that checkout's book runs, cold and warm, alternate with this
one's in the same rounds: a change's gain measured side by side.

jaxcf's phases come from its summary (`seconds`: import, read, setup,
compile, train, evaluation, ranking, save); the process's exit is what
remains.

  python benchmarks/wall.py --data_dir=../shared/data --out=benchmarks/results/wall
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

flags.DEFINE_string("data_dir", None, "Folder that is or holds ml-100k/.")
flags.DEFINE_integer("rounds", 3, "Rounds of alternating measurements.")
flags.DEFINE_list("cases", None, "Subset of cases (default: all).")
flags.DEFINE_string("out", None, "Write OUT.json, OUT.md and OUT.png.")
flags.DEFINE_string("baseline", None, "Another checkout whose book runs "
                    "(cold, warm) alternate with this one's.")
flags.DEFINE_bool("fastai_worker", False, "internal")
flags.DEFINE_bool("redraw", False, "Only redraw OUT.md and OUT.png from "
                  "OUT.json.")
FLAGS = flags.FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = ("import", "read", "setup", "compile", "train", "evaluation",
          "ranking", "save", "other")  # other: checkpoints, printing, ...
CASES = {
    "book (cold)": [],
    "book (warm)": [],
    "sweep of 8": ["--lr=3e-3,5e-3", "--wd=0.05,0.1", "--seed=0,1"],
    "synthetic 10M": ["--dataset=synthetic", "--n_users=480000",
                      "--n_items=18000", "--n_ratings=10000000",
                      "--optimizer=rowwise_adagrad", "--bs=8192",
                      "--epochs=1"],
    "fastai book": None,
}
BASELINE = " [baseline]"  # the suffix of the --baseline checkout's cases


def fastai_book() -> None:
  """The book's code, as a reader types it (chapter 8)."""
  import torch  # pylint: disable=g-import-not-at-top
  from fastai.collab import CollabDataLoaders, collab_learner  # pylint: disable=g-import-not-at-top
  from fastai.tabular.all import pd, set_seed  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count())
  folder = os.path.join(FLAGS.data_dir, "ml-100k")
  ratings = pd.read_csv(os.path.join(folder, "u.data"), delimiter="\t",
                        header=None,
                        names=["user", "movie", "rating", "timestamp"])
  movies = pd.read_csv(os.path.join(folder, "u.item"), delimiter="|",
                       encoding="latin-1", usecols=(0, 1),
                       names=("movie", "title"), header=None)
  ratings = ratings.merge(movies)
  set_seed(42)
  dls = CollabDataLoaders.from_df(ratings, item_name="title", bs=64)
  learn = collab_learner(dls, n_factors=50, y_range=(0, 5.5))
  with learn.no_bar():
    learn.fit_one_cycle(5, 5e-3, wd=0.1)
  print("RESULT " + json.dumps(
      {"final_valid_loss": float(learn.recorder.values[-1][1])}))


def run_case(name: str, cache: str, workdir: str) -> dict:
  """One fresh process of a case: its wall seconds and phases."""
  env = {**os.environ, "JAXCF_CACHE": cache,
         "OMP_WAIT_POLICY": "PASSIVE"}  # torch's threads do not spin
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  if CASES[name] is None:
    args = [sys.executable, os.path.abspath(__file__), "--fastai_worker",
            f"--data_dir={FLAGS.data_dir}"]
  else:
    shutil.rmtree(workdir, ignore_errors=True)
    repo = FLAGS.baseline if name.endswith(BASELINE) else REPO
    args = [sys.executable, os.path.join(repo, "train.py"),
            f"--workdir={workdir}", *CASES[name]]
    if FLAGS.data_dir:
      args.append(f"--data_dir={FLAGS.data_dir}")
  start = time.perf_counter()
  proc = subprocess.run(args, capture_output=True, text=True, env=env)
  wall = time.perf_counter() - start
  if proc.returncode:
    return {"error": proc.stderr.strip().splitlines()[-1:]}
  out = {"wall": wall}
  if CASES[name] is None:
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    out.update(json.loads(line[-1][len("RESULT "):]))
    return out
  summary = os.path.join(workdir, "summary.json")
  if not os.path.exists(summary):
    summary = os.path.join(workdir, "sweep.json")
  with open(summary) as f:
    seconds = json.load(f)["seconds"]
  seconds["other"] = seconds["total"] - sum(
      v for k, v in seconds.items() if k not in ("total", "other"))
  out.update(seconds=seconds, exit=wall - seconds["total"])
  return out


def markdown(runs: dict) -> str:
  lines = ["| case | whole process (s), median | spread | " +
           " | ".join(PHASES) + " | exit |", "|" + "---|" * (len(PHASES) + 4)]
  for name, outs in runs.items():
    ok = [o for o in outs if "wall" in o]
    if not ok:
      lines.append(f"| {name} | failed: {outs[-1].get('error')} |")
      continue
    walls = [o["wall"] for o in ok]
    med = lambda key: statistics.median(
        o["seconds"].get(key, 0.0) for o in ok) if "seconds" in ok[0] else None
    cells = [f"{med(p):.2f}" if med(p) is not None else "-" for p in PHASES]
    exit_s = (f"{statistics.median(o['exit'] for o in ok):.2f}"
              if "exit" in ok[0] else "-")
    lines.append(f"| {name} | **{statistics.median(walls):.1f}** | "
                 f"{min(walls):.1f}-{max(walls):.1f} | " + " | ".join(cells) +
                 f" | {exit_s} |")
  return "\n".join(lines)


def chart(runs: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  names = [n for n, outs in runs.items() if any("wall" in o for o in outs)]
  fig, ax = plt.subplots(figsize=(9, 0.6 * len(names) + 1.5))
  for y, name in enumerate(names):
    ok = [o for o in runs[name] if "wall" in o]
    left = 0.0
    parts = ([(p, statistics.median(o["seconds"].get(p, 0.0) for o in ok))
              for p in PHASES] + [("exit", statistics.median(
                  o["exit"] for o in ok))]) if "seconds" in ok[0] else [
                      ("whole", statistics.median(o["wall"] for o in ok))]
    for k, (phase, seconds) in enumerate(parts):
      ax.barh(y, seconds, left=left,
              color="0.6" if phase == "whole" else f"C{k}",
              label=phase if y == 0 or "seconds" not in ok[0] else None)
      left += seconds
  ax.set_yticks(range(len(names)), names)
  ax.set_xlabel("seconds from process start to exit (median)")
  ax.legend(fontsize=7, ncol=5, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv):
  del argv
  if FLAGS.fastai_worker:
    fastai_book()
    return
  if FLAGS.redraw:
    with open(FLAGS.out + ".json") as f:
      runs = json.load(f)
    for outs in runs.values():
      for o in outs:
        if "seconds" in o and "other" not in o["seconds"]:
          o["seconds"]["other"] = o["seconds"]["total"] - sum(
              v for k, v in o["seconds"].items() if k != "total")
    write(runs)
    return
  if FLAGS.baseline:
    for name in ("book (cold)", "book (warm)"):
      CASES[name + BASELINE] = CASES[name]
  names = FLAGS.cases or list(CASES)
  scratch = tempfile.mkdtemp(prefix="jaxcf-wall-")
  warm = os.path.join(scratch, "warm-cache")
  runs = {name: [] for name in names}
  try:
    for name in names:  # untimed: fills the warm cache with every program
      if CASES[name] is not None and not name.startswith("book (cold)"):
        run_case(name, warm, os.path.join(scratch, "w"))
    for rnd in range(FLAGS.rounds):
      for name in names:
        cache = (os.path.join(scratch, f"cold-{rnd}-{names.index(name)}")
                 if name.startswith("book (cold)") else warm)
        out = run_case(name, cache, os.path.join(scratch, "w"))
        runs[name].append(out)
        print(f"round {rnd + 1} {name}: " + (f"{out['wall']:.2f}s" if "wall"
                                             in out else str(out)),
              flush=True)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  write(runs)


def write(runs: dict) -> None:
  text = markdown(runs)
  print(text)
  if FLAGS.out:
    with open(FLAGS.out + ".json", "w") as f:
      json.dump(runs, f, indent=2)
    with open(FLAGS.out + ".md", "w") as f:
      f.write(text + "\n")
    try:
      chart(runs, FLAGS.out + ".png")
    except ImportError:
      print("no matplotlib: no chart")


if __name__ == "__main__":
  app.run(main)
