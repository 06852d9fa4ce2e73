r"""Training throughput of jaxcf against the PyTorch baseline and fastai.

Every measurement runs in a fresh subprocess (clean compile caches and peak
memory), pinned to one CPU core unless --cores=all; contenders alternate in
rounds and the table reports medians with their spread, and which ratios
the rounds leave undecided (throughput_report.py). Needs the bench extra (torch, fastai)
beside jaxcf: pip install -e '.[bench,plot]'.

  python benchmarks/throughput.py --data_dir=../shared/data            # full
  python benchmarks/throughput.py --data_dir=../shared/data --quick    # ~5 min

Writes benchmarks/results/<device>.json, .md and .png.

Contenders (training samples per second, steady state, compile/warm-up
reported apart):
  jaxcf scan      a whole epoch in one compiled lax.scan (jaxcf's way)
  jaxcf step      the same jitted train step called from a Python loop
  jaxcf 8x vmap   8 replicas vmapped in the scanned epoch (total samples/s)
  jaxcf lazy      the scanned epoch with --optimizer=lazy_adamw (touched
                  rows only; not fastai-exact, same accuracy)
  torch eager     the PyTorch baseline: Python loop, AdamW (foreach)
  torch fused     the same with AdamW(fused=True)
  torch compile   torch.compile(model) + fused AdamW
  fastai          the book's code: CollabDataLoaders, collab_learner,
                  fit_one_cycle (progress bar off)
Time to accuracy: wall time from process start (imports and compilation
included) until the validation MSE after an epoch is <= 0.87 on fastai's
seed-42 split, with the book's settings. With --baseline=DIR, another
checkout's jaxcf rows alternate with this one's (into <device>-tta-ab.*):

  python benchmarks/throughput.py --data_dir=../shared/data --models=none \
      --cores=all --baseline=/tmp/before
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

import throughput_report as report  # beside this script (run as one)
import throughput_workers as workers

flags.DEFINE_string("data_dir", None, "Folder that is or holds ml-100k/ "
                    "(with fastai-splits/ beside it).")
flags.DEFINE_bool("quick", False, "One round, bs 64 and 1024, fewer "
                  "contenders.")
flags.DEFINE_integer("rounds", 3, "Rounds of alternating measurements.")
flags.DEFINE_list("models", ["dot_bias", "embedding_nn"], "Models (none: "
                  "time to accuracy only, into <device>-tta.*).")
flags.DEFINE_list("batch_sizes", ["64", "1024", "8192"], "Batch sizes.")
flags.DEFINE_list("contenders", None, "Subset of contenders (default: all).")
flags.DEFINE_string("cores", "1", "'1' pins every process to one core; "
                    "'all' leaves them free.")
flags.DEFINE_float("min_seconds", 3.0, "Time each measurement at least "
                   "this long.")
flags.DEFINE_string("out_dir", "benchmarks/results", "Where results go.")
flags.DEFINE_bool("time_to_accuracy", True, "Also measure time to 0.87.")
flags.DEFINE_bool("tta_fastai", True, "Time fastai to 0.87 too (off: "
                  "jaxcf's rows only, e.g. for a quick --baseline).")
flags.DEFINE_string("baseline", None, "Another checkout (e.g. `git worktree "
                    "add /tmp/before COMMIT`) whose time to 0.87, first run "
                    "and cached, alternates with this one's in the same "
                    "rounds.")
# Internal: run one measurement and print RESULT {...}.
flags.DEFINE_string("worker", None, "internal")
flags.DEFINE_string("model", "dot_bias", "internal")
flags.DEFINE_integer("bs", 64, "internal")
FLAGS = flags.FLAGS

CONTENDERS = ("jaxcf scan", "jaxcf step", "jaxcf 8x vmap", "jaxcf lazy",
              "torch eager",
              "torch fused", "torch compile", "fastai")
QUICK = ("jaxcf scan", "jaxcf 8x vmap", "torch eager", "fastai")
TARGET_MSE = workers.TARGET_MSE


# The orchestrator ------------------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINE = " [baseline]"  # the suffix of the --baseline checkout's rows


def spawn(name: str, model: str = "dot_bias", bs: int = 64,
          env: dict | None = None, repo: str = REPO) -> dict:
  """Runs worker `name` of `repo`'s copy of this script; its result."""
  script = os.path.join(os.path.abspath(repo), "benchmarks", "throughput.py")
  args = [sys.executable, script, f"--worker={name}",
          f"--model={model}", f"--bs={bs}", f"--cores={FLAGS.cores}",
          f"--min_seconds={FLAGS.min_seconds}"]
  if FLAGS.data_dir:
    args.append(f"--data_dir={FLAGS.data_dir}")
  env = {**os.environ, **(env or {}), "PYTHONPATH": os.path.abspath(repo)}
  start = time.time()
  proc = subprocess.run(args, capture_output=True, text=True, env=env)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  if proc.returncode or not lines:
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": " | ".join(tail)}
  out = json.loads(lines[-1][len("RESULT "):])
  if "at" in out:
    out["seconds_to_target"] = out.pop("at") - start
  return out


def describe_device() -> dict:
  from jaxcf import runinfo  # pylint: disable=g-import-not-at-top
  dev = runinfo.device()
  slug = ("cpu" if dev["platform"] == "cpu" else
          f"{dev['platform']}-{dev['kind']}").lower().replace(" ", "-")
  return {"slug": slug, **dev}


def main(argv):
  del argv
  if FLAGS.worker:
    workers.run_worker(FLAGS.worker)
    return
  if FLAGS.baseline and not FLAGS.time_to_accuracy:
    raise app.UsageError("--baseline compares time to accuracy; it needs "
                         "--time_to_accuracy")
  contenders = FLAGS.contenders or (QUICK if FLAGS.quick else CONTENDERS)
  batch_sizes = [64, 1024] if FLAGS.quick else list(map(int,
                                                         FLAGS.batch_sizes))
  rounds = 1 if FLAGS.quick else FLAGS.rounds
  FLAGS.batch_sizes = list(map(str, batch_sizes))
  measured: dict[tuple, list[dict]] = {}
  for rnd in range(rounds):
    for model in [m for m in FLAGS.models if m != "none"]:
      for bs in batch_sizes:
        for c in contenders:
          out = spawn(c, model, bs)
          measured.setdefault((model, bs, c), []).append(out)
          rate = out.get("samples_per_s")
          print(f"round {rnd + 1}/{rounds} {model} bs {bs} {c}: " +
                (f"{rate:,.0f} samples/s" if rate else out.get("error", "?")),
                flush=True)
  rows = []
  for (model, bs, c), outs in measured.items():
    ok = [o for o in outs if "samples_per_s" in o]
    row = {"model": model, "bs": bs, "contender": c,
           "runs": [o.get("samples_per_s") for o in outs]}
    if ok:
      row.update(samples_per_s=statistics.median(o["samples_per_s"]
                                                 for o in ok),
                 warmup_s=statistics.median(o["warmup_s"] for o in ok),
                 peak_rss_mb=max(o["peak_rss_mb"] for o in ok))
    else:
      row["error"] = outs[-1].get("error")
    rows.append(row)
  from jaxcf import runinfo  # pylint: disable=g-import-not-at-top
  results = {"device": describe_device(), "cores": FLAGS.cores,
             "versions": runinfo.versions(runinfo.PACKAGES + ("torch",
                                                              "fastai")),
             "rounds": rounds, "rows": rows,
             "threads": "torch.set_num_threads(1) and every process pinned "
                        "to one core" if FLAGS.cores == "1" else
                        "all cores, torch threads = cpu_count"}
  if FLAGS.time_to_accuracy:
    jaxcf_rows = ["jaxcf (first run)", "jaxcf (programs cached)"]
    if FLAGS.baseline:
      jaxcf_rows += [name + BASELINE for name in jaxcf_rows]
    tta: dict[str, list[dict]] = {name: [] for name in jaxcf_rows + (
        ["fastai"] if FLAGS.tta_fastai else [])}
    for rnd in range(rounds):
      caches = {}  # per checkout: cold, then warm
      order = list(tta)
      if FLAGS.baseline and rnd % 2:  # ABBA: neither checkout always first
        order = order[2:4] + order[:2] + order[4:]
      for name in order:
        runs = tta[name]
        worker = "tta fastai" if name == "fastai" else "tta jaxcf"
        repo = FLAGS.baseline if name.endswith(BASELINE) else REPO
        if repo not in caches:
          caches[repo] = tempfile.mkdtemp(prefix="jaxcf-tta-")
        runs.append(spawn(worker, env={"JAXCF_CACHE": caches[repo]},
                          repo=repo))
        print(f"round {rnd + 1}/{rounds} time to {TARGET_MSE} {name}: "
              f"{runs[-1].get('seconds_to_target', 'not reached')}",
              flush=True)
      for cache in caches.values():
        shutil.rmtree(cache, ignore_errors=True)
    results["time_to_accuracy"] = tta
    if FLAGS.baseline:
      describe = lambda repo: subprocess.run(
          ["git", "-C", repo, "describe", "--always", "--dirty"],
          capture_output=True, text=True).stdout.strip() or "not git"
      results["baseline"] = {"dir": FLAGS.baseline,
                             "commit": describe(FLAGS.baseline),
                             "this commit": describe(REPO)}
  slug = results["device"]["slug"] + ("" if FLAGS.cores == "1" else "-all")
  os.makedirs(FLAGS.out_dir, exist_ok=True)
  base = os.path.join(FLAGS.out_dir, slug + ("-quick" if FLAGS.quick else "")
                      + ("" if rows else "-tta")
                      + ("-ab" if FLAGS.baseline else ""))
  with open(base + ".json", "w") as f:
    json.dump(results, f, indent=2)
  text = report.markdown(results, CONTENDERS, TARGET_MSE)
  with open(base + ".md", "w") as f:
    f.write(text + "\n")
  print(text)
  if not rows:
    print(f"wrote {base}.json and .md")
    return
  try:
    report.chart(results, CONTENDERS, base + ".png")
    print(f"wrote {base}.json, .md and .png")
  except ImportError:
    print(f"wrote {base}.json and .md (no matplotlib for the chart)")


if __name__ == "__main__":
  app.run(main)
