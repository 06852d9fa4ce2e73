r"""Sharded against single-device training on forced CPU devices.

Runs `train.py` (book recipe, ML-100k) in fresh processes with
XLA_FLAGS=--xla_force_host_platform_device_count=8: without a mesh, with
--mesh=data:4,model:2, and with --mesh=data:8 --shard_data, and reports
the final valid MSE and training samples/s of each. On a CPU the fake
devices share the same cores, so this measures the partitioning's
overhead (and checks the numbers agree), not a speed-up.

  python benchmarks/mesh_overhead.py --data_dir=../shared/data \
      --out=benchmarks/results/mesh_overhead.md
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from absl import app, flags

import report  # beside this file

flags.DEFINE_string("data_dir", None, "Folder that is or holds ml-100k/.")
flags.DEFINE_string("out", None, "Also write the markdown table here.")
FLAGS = flags.FLAGS

RUNS = (("one device", []), ("--mesh=data:4,model:2", ["--mesh=data:4,model:2"]),
        ("--mesh=data:8 --shard_data", ["--mesh=data:8", "--shard_data"]))


def main(argv):
  del argv
  train = os.path.join(os.path.dirname(__file__), "..", "train.py")
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  lines = ["| 8 forced CPU devices, dot_bias book recipe | valid MSE | "
           "training samples/s |", "|---|---|---|"]
  for name, extra in RUNS:
    with tempfile.TemporaryDirectory() as workdir:
      args = [sys.executable, train, f"--workdir={workdir}",
              *([f"--data_dir={FLAGS.data_dir}"] if FLAGS.data_dir else []),
              *extra]
      subprocess.run(args, check=True, capture_output=True, env=env)
      with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    lines.append(f"| {name} | {summary['final']['valid_loss']:.6f} | "
                 f"{summary['train_samples_per_second']:,.0f} |")
    print(lines[-1], flush=True)
  report.emit(lines, FLAGS.out)


if __name__ == "__main__":
  app.run(main)
