r"""The Gibbs sampler's speed in two checkouts, side by side.

Runs `benchmarks/bpmf.py`'s speed cells (sweeps/s of one chain on u1.base,
compilation excluded) in a fresh process per checkout, alternating in
rounds, so a change to the sampler is measured against its parent on the
same machine at the same time:

  git worktree add /tmp/before COMMIT
  python benchmarks/bpmf_ab.py --data=../shared/data --checkouts=/tmp/before,.

Cells: 10, 50 and 100 factors with the layout `gibbs.dense_layout` picks
('auto'), and 10 and 50 factors forced to the rating lists ('sparse').
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import app, flags

flags.DEFINE_string("data", None, "Folder that holds ml-100k/ (bpmf.py's "
                    "--data_dir).")
flags.DEFINE_list("checkouts", [], "Checkouts to compare (folders).")
flags.DEFINE_integer("rounds", 2, "Alternating rounds.")
flags.DEFINE_string("worker", None, "internal: the checkout to time")
FLAGS = flags.FLAGS

CELLS = [(10, "auto"), (50, "auto"), (100, "auto"), (10, "sparse"),
         (50, "sparse")]


def worker(checkout: str) -> None:
  """Times every cell with `checkout`'s jaxcf and bpmf.py."""
  sys.path[:0] = [checkout, os.path.join(checkout, "benchmarks")]
  import jaxcf  # pylint: disable=g-import-not-at-top,unused-import
  import bpmf  # pylint: disable=g-import-not-at-top
  FLAGS.data_dir = FLAGS.data  # bpmf.py's flags, defined by its import
  data = bpmf._data("u1")  # pylint: disable=protected-access
  out = {f"{k} {layout}": bpmf.speed(k, 1, layout, data) for k, layout in
         CELLS}
  print("RESULT " + json.dumps(out))


def main(argv):
  del argv
  if FLAGS.worker:
    worker(os.path.abspath(FLAGS.worker))
    return
  results = {c: [] for c in FLAGS.checkouts}
  for _ in range(FLAGS.rounds):
    for checkout in FLAGS.checkouts:
      proc = subprocess.run(
          [sys.executable, os.path.abspath(__file__),
           f"--worker={checkout}", f"--data={FLAGS.data}"],
          capture_output=True, text=True, check=True)
      line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
      results[checkout].append(json.loads(line[-1][len("RESULT "):]))
      print(checkout, results[checkout][-1], flush=True)
  print("| checkout | " + " | ".join(f"{k} factors, {layout}"
                                      for k, layout in CELLS) + " |")
  print("|---|" + "---|" * len(CELLS))
  for checkout, runs in results.items():
    cells = [" / ".join(f"{r[f'{k} {layout}']:.1f}" for r in runs)
             for k, layout in CELLS]
    print(f"| {checkout} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  app.run(main)
