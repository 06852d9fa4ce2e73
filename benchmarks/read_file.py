r"""Reading a big ratings file: seconds and peak memory of `jaxcf.io`.

Writes a CSV of --rows synthetic ratings (user, item, rating, timestamp;
Netflix-like id ranges), then, each in a fresh process, reads it with
`io.read_ratings` (the chunked numeric path) and with the whole load
`datasets.load` (read, drop repeated pairs, encode ids, random split,
device arrays), and
reports wall seconds and the process's peak resident memory.
With --release=ml-25m the file is laid out as that MovieLens release
(ml-25m/ratings.csv and movies.csv) and read by name (`jaxcf.mlread`):
the first read parses and caches the arrays, the second reads the cache.

  python benchmarks/read_file.py --rows=10000000 \
      --out=benchmarks/results/read_file.md
  python benchmarks/read_file.py --rows=25000000 --release=ml-25m \
      --out=benchmarks/results/read_release.md
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from absl import app, flags
import numpy as np

import report  # beside this file

flags.DEFINE_integer("rows", 10_000_000, "Ratings in the file.")
flags.DEFINE_string("out", None, "Also write the markdown table here.")
flags.DEFINE_string("release", None, "Lay the file out as this MovieLens "
                    "release (a csv one: ml-20m, ml-25m, ml-32m) and read it "
                    "by name.")
flags.DEFINE_string("_child", None, "internal: what to measure")
flags.DEFINE_string("_path", None, "internal: the file")
FLAGS = flags.FLAGS


def write_file(path: str, rows: int) -> None:
  rng = np.random.default_rng(0)
  block = 1_000_000
  with open(path, "w") as f:
    f.write("userId,movieId,rating,timestamp\n")
    for start in range(0, rows, block):
      n = min(block, rows - start)
      table = np.stack([rng.integers(1, 480_190, n), rng.integers(1, 17_771, n),
                        rng.integers(1, 6, n),
                        rng.integers(10**9, 1.2 * 10**9, n)], axis=1)
      np.savetxt(f, table, fmt="%d", delimiter=",")


def write_movies(path: str, n: int = 17_770) -> None:
  with open(path, "w", encoding="utf-8") as f:
    f.write("movieId,title,genres\n")
    for i in range(1, n + 1):
      f.write(f'{i},"Movie {i}, The ({1900 + i % 120})",Comedy|Drama\n')


def child(kind: str, path: str) -> None:
  from jaxcf import datasets, io, mlread, movielens  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  if kind == "read":
    n = len(io.read_ratings(path))
  elif kind == "release":
    release = movielens.RELEASES[FLAGS.release]
    n = len(mlread.read(release, movielens.find(path, release=release)))
  else:
    # Random pairs repeat now and then (about 1 in 15,000): keep the last.
    d = datasets.load(datasets.Source(ratings_file=path), item_name="movie",
                      seed=0, duplicates="keep_last", log=None)
    n = d.train.size + d.valid.size
  seconds = time.perf_counter() - start
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB
  print("RESULT " + json.dumps({"rows": n, "seconds": seconds, "peak": peak}))


def main(argv):
  del argv
  if FLAGS._child:
    return child(FLAGS._child, FLAGS._path)
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "ratings.csv")
    kinds = (("read", "io.read_ratings (parse)"),
             ("load", "datasets.load (parse, encode, split)"))
    if FLAGS.release:
      os.mkdir(os.path.join(tmp, FLAGS.release))
      path = os.path.join(tmp, FLAGS.release, "ratings.csv")
      write_movies(os.path.join(tmp, FLAGS.release, "movies.csv"))
      kinds = ((("release", f"--dataset={FLAGS.release}, first read (parse "
                 "and cache)"), ("release", "the second read (the cache)")))
    start = time.perf_counter()
    write_file(path, FLAGS.rows)
    size = os.path.getsize(path) / 2**20
    print(f"wrote {FLAGS.rows:,} ratings ({size:,.0f} MiB) in "
          f"{time.perf_counter() - start:.0f}s", flush=True)
    lines = [f"| {FLAGS.rows:,} ratings, {size:,.0f} MiB CSV | seconds | "
             "rows/s | peak memory (GiB) |", "|---|---|---|---|"]
    for kind, label in kinds:
      target = tmp if kind == "release" else path
      proc = subprocess.run(
          [sys.executable, __file__, f"--_child={kind}", f"--_path={target}",
           f"--release={FLAGS.release or ''}"],
          capture_output=True, text=True, check=True,
          env={**os.environ, "JAX_PLATFORMS": "cpu",
               "XDG_CACHE_HOME": os.path.join(tmp, "cache")})
      result = json.loads(proc.stdout.split("RESULT ")[-1])
      assert result["rows"] > 0.99 * FLAGS.rows, result
      lines.append(f"| {label} | {result['seconds']:.1f} | "
                   f"{result['rows'] / result['seconds']:,.0f} | "
                   f"{result['peak']:.2f} |")
      print(lines[-1], flush=True)
  report.emit(lines, FLAGS.out)


if __name__ == "__main__":
  app.run(main)
