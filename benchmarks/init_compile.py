r"""Compile seconds of the book dot_bias's initialisation program, three ways.

  per-table draws     `model.init` as Flax runs it: one `jax.random.normal`
                      per table, and a traced fold_in for each table's key
  drawn together      `steps.create_train_state`: every table drawn in one
                      hash and one map (`models.tableinit`), keys traced
  host keys (fit)     the same with the table keys and the dropout key
                      computed on the host, as `training.fit` runs it

each at XLA's default optimisation level and at `loop.RUN_ONCE`, each
compile in a fresh process (no in-memory or persistent cache), rounds
alternating; reports the median and range of the rounds.

  python benchmarks/init_compile.py --out=benchmarks/results/init_compile.md
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from absl import app, flags

import report  # beside this file

flags.DEFINE_integer("rounds", 3, "Rounds of alternating measurements.")
flags.DEFINE_string("out", None, "Also write the markdown table here.")
flags.DEFINE_string("worker", None, "internal: variant|level")
FLAGS = flags.FLAGS

VARIANTS = ("per-table draws", "drawn together", "host keys (fit)")
LEVELS = ("default", "RUN_ONCE")


def _compile_seconds(variant: str, level: str) -> float:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jaxcf import keys, loop, models, steps, training  # pylint: disable=g-import-not-at-top
  from jaxcf.models import tableinit  # pylint: disable=g-import-not-at-top

  model = models.create("dot_bias", 944, 1665)
  tx = training.make_optimizer(model, training.TrainConfig(), 5 * 1250)
  key = jax.eval_shape(jax.random.key, 0)
  init_key, _ = keys.run_keys(42)
  dummy = jnp.zeros((1,), jnp.int32)
  program, args = {
      "per-table draws": (lambda k: model.init(k, dummy, dummy), (key,)),
      "drawn together": (lambda k: steps.create_train_state(model, tx, k),
                         (key,)),
      "host keys (fit)": (
          lambda k, t, r: steps.create_train_state(model, tx, k, None, t, r),
          (key, tableinit.host_keys(model, init_key),
           keys.fold_key(init_key, 1))),
  }[variant]
  lowered = jax.jit(program).lower(*args)
  start = time.perf_counter()
  lowered.compile(loop.RUN_ONCE if level == "RUN_ONCE" else None)
  return time.perf_counter() - start


def main(argv):
  del argv
  if FLAGS.worker:
    print(f"RESULT {_compile_seconds(*FLAGS.worker.split('|')):.4f}")
    return
  times = {(v, lv): [] for v in VARIANTS for lv in LEVELS}
  for rnd in range(FLAGS.rounds):
    cases = list(times) if rnd % 2 == 0 else list(reversed(times))
    for variant, level in cases:
      done = subprocess.run(
          [sys.executable, __file__, f"--worker={variant}|{level}"],
          capture_output=True, text=True, check=True, timeout=600)
      seconds = float(done.stdout.split("RESULT ")[-1])
      times[variant, level].append(seconds)
      print(f"round {rnd + 1}/{FLAGS.rounds} {variant} {level}: "
            f"{seconds:.3f}s", flush=True)
  lines = ["| init program (book dot_bias) | XLA default, s | "
           "loop.RUN_ONCE, s |", "|---|---|---|"]
  for variant in VARIANTS:
    cells = [f"{statistics.median(t):.2f} ({min(t):.2f}-{max(t):.2f})"
             for t in (times[variant, lv] for lv in LEVELS)]
    lines.append(f"| {variant} | " + " | ".join(cells) + " |")
  lines += ["", f"Compile seconds, median (range) of {FLAGS.rounds} rounds, "
            "each compile in a fresh process."]
  report.emit(lines, FLAGS.out)


if __name__ == "__main__":
  app.run(main)
