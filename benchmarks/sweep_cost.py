r"""What a vmapped sweep costs: 8 replicas in one run vs 8 runs vs one run.

Wall time of whole `python train.py` processes (imports, data, compilation
and 5 epochs of the book's recipe included), as a user would run them:

  one run        python train.py --seed=0
  8 runs         python train.py --seed=S, for S in 0..7, one after another
  sweep of 8     python train.py --seed=0,1,2,3,4,5,6,7

  python benchmarks/sweep_cost.py --data_dir=../shared/data \
      --out=benchmarks/results/sweep_cost.md
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from absl import app, flags

import report  # beside this file

flags.DEFINE_string("data_dir", None, "Folder that is or holds ml-100k/.")
flags.DEFINE_list("batch_sizes", ["64", "1024"], "Batch sizes.")
flags.DEFINE_list("models", ["dot_bias", "embedding_nn"], "Models.")
flags.DEFINE_integer("replicas", 8, "Replicas in the sweep.")
flags.DEFINE_string("out", None, "Also write the markdown table here.")
FLAGS = flags.FLAGS

TRAIN = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "train.py")


def wall(*flags_: str) -> float:
  args = [sys.executable, TRAIN, *flags_]
  if FLAGS.data_dir:
    args.append(f"--data_dir={FLAGS.data_dir}")
  start = time.perf_counter()
  subprocess.run(args, check=True, capture_output=True)
  return time.perf_counter() - start


def main(argv):
  del argv
  n = FLAGS.replicas
  lines = [f"| model | bs | one run (s) | {n} runs (s) | sweep of {n} (s) | "
           f"{n} runs / sweep | sweep / one run |", "|---|---|---|---|---|---|---|"]
  for model in FLAGS.models:
    for bs in FLAGS.batch_sizes:
      common = (f"--model={model}", f"--bs={bs}")
      one = wall(*common, "--seed=0")
      many = sum(wall(*common, f"--seed={s}") for s in range(n))
      swept = wall(*common, "--seed=" + ",".join(map(str, range(n))))
      lines.append(f"| {model} | {bs} | {one:.1f} | {many:.1f} | "
                   f"{swept:.1f} | {many / swept:.1f}x | "
                   f"{swept / one:.1f}x |")
      print(lines[-1], flush=True)
  report.emit(lines, FLAGS.out)


if __name__ == "__main__":
  app.run(main)
