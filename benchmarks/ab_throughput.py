r"""Training throughput of two checkouts of jaxcf, side by side.

Runs benchmarks/throughput.py's jaxcf workers from each checkout in fresh
processes pinned to one core, alternating the checkouts (and their order)
in rounds, and reports the median samples/s of each and their ratio: the
check that a refactor did not slow the step.

  git worktree add /tmp/before HEAD~1
  python benchmarks/ab_throughput.py --before=/tmp/before \
      --data_dir=../shared/data --out=benchmarks/results/ab_throughput.md
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from absl import app, flags

flags.DEFINE_string("before", None, "The other checkout (a git worktree).")
flags.DEFINE_string("after", os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "This checkout.")
flags.DEFINE_string("data_dir", None, "Folder that is or holds ml-100k/.")
flags.DEFINE_integer("rounds", 3, "Rounds of alternating measurements.")
flags.DEFINE_string("out", None, "Write the table here (markdown).")
FLAGS = flags.FLAGS

CASES = [("dot_bias", 64, "jaxcf scan"), ("dot_bias", 1024, "jaxcf scan"),
         ("dot_bias", 64, "jaxcf 8x vmap"), ("embedding_nn", 64, "jaxcf scan"),
         ("embedding_nn", 1024, "jaxcf scan")]


def measure(root: str, model: str, bs: int, contender: str) -> float | None:
  """samples/s of one worker process of `root`'s throughput.py."""
  args = [sys.executable, os.path.join(root, "benchmarks", "throughput.py"),
          f"--worker={contender}", f"--model={model}", f"--bs={bs}",
          "--cores=1", "--min_seconds=3"]
  if FLAGS.data_dir:
    args.append(f"--data_dir={FLAGS.data_dir}")
  proc = subprocess.run(args, capture_output=True, text=True,
                        env={**os.environ, "PYTHONPATH": root})
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  return json.loads(lines[-1][len("RESULT "):])["samples_per_s"] if lines \
      else None


def main(argv):
  del argv
  trees = {"before": FLAGS.before, "after": FLAGS.after}
  runs = {}
  for rnd in range(FLAGS.rounds):
    order = list(trees) if rnd % 2 == 0 else list(reversed(trees))
    for model, bs, contender in CASES:
      for name in order:
        rate = measure(trees[name], model, bs, contender)
        runs.setdefault((model, bs, contender, name), []).append(rate)
        print(f"round {rnd + 1} {model} bs {bs} {contender} {name}: "
              f"{rate or float('nan'):,.0f} samples/s", flush=True)
  lines = ["| model | bs | contender | before (samples/s) | after | after / "
           "before | runs before | runs after |", "|---|---|---|---|---|---|"
           "---|---|"]
  for model, bs, contender in CASES:
    got = {n: [r for r in runs[(model, bs, contender, n)] if r]
           for n in trees}
    if not all(got.values()):
      lines.append(f"| {model} | {bs} | {contender} | failed | | | | |")
      continue
    med = {n: statistics.median(v) for n, v in got.items()}
    show = lambda v: ", ".join(f"{x / 1e3:,.0f}k" for x in v)
    lines.append(f"| {model} | {bs} | {contender} | {med['before']:,.0f} | "
                 f"{med['after']:,.0f} | {med['after'] / med['before']:.2f}x |"
                 f" {show(got['before'])} | {show(got['after'])} |")
  text = "\n".join(lines)
  print(text)
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  flags.mark_flag_as_required("before")
  app.run(main)
