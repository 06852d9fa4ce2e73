"""train.py as a user runs it: a real subprocess, real files, exit codes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO


def run(*args, cwd=REPO):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("JAXCF_DATA", None)
  return subprocess.run([sys.executable, str(REPO / "train.py"), *args],
                        capture_output=True, text=True, cwd=cwd, env=env,
                        timeout=300)


def test_trains_and_writes_workdir(tiny_ml, tmp_path):
  workdir = tmp_path / "run"
  proc = run(f"--data_dir={tiny_ml}", "--epochs=3", "--bs=16",
             f"--workdir={workdir}", "--seed=1")
  assert proc.returncode == 0, proc.stderr
  out = proc.stdout
  assert "read " in out and "ratings from" in out
  assert "model dot_bias: " in out and "compiled" in out
  assert "epoch  train_loss valid_loss" in out
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text(
  ).splitlines()]
  assert [r["epoch"] for r in rows] == [0, 1, 2]
  for r in rows:
    assert {"epoch", "train_loss", "valid_loss", "valid_rmse",
            "seconds"} <= set(r)
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["final"] == rows[-1]
  assert summary["flags"]["bs"] == 16 and summary["flags"]["seed"] == "1"
  assert summary["versions"]["jax"] and summary["device"]["platform"]
  assert summary["train_samples_per_second"] > 0
  assert "Traceback" not in proc.stderr


def test_flagfile_and_models(tiny_ml, tmp_path):
  flagfile = tmp_path / "flags.txt"
  flagfile.write_text(f"--data_dir={tiny_ml}\n--model=embedding_nn\n"
                      "--layers=16,8\n--epochs=1\n--bs=32\n--split=u1\n")
  proc = run(f"--flagfile={flagfile}")
  assert proc.returncode == 0, proc.stderr
  assert "model embedding_nn" in proc.stdout
  assert "official split u1" in proc.stdout


def test_own_ratings_file_with_titles(tmp_path):
  ratings = tmp_path / "ratings.csv"
  lines = ["userId,movieId,rating,timestamp"]
  lines += [f"{u},{i},{(u * i) % 9 / 2 + 0.5},{u * 100 + i}"
            for u in range(1, 21) for i in range(1, 16) if (u + i) % 3]
  ratings.write_text("\n".join(lines) + "\n")
  movies = tmp_path / "movies.csv"
  movies.write_text("movieId,title,genres\n" + "".join(
      f'{i},"Film {i}, The (2001)",Drama\n' for i in range(1, 16)))
  proc = run(f"--ratings_file={ratings}", f"--items_file={movies}",
             "--item_columns=movieId,title", "--epochs=1", "--bs=8")
  assert proc.returncode == 0, proc.stderr
  assert f"read {len(lines) - 1} ratings" in proc.stdout
  proc = run(f"--ratings_file={ratings}", "--epochs=1", "--bs=8")
  assert proc.returncode == 0, proc.stderr
  assert "items are keyed by id" in proc.stdout


def _bad_files(tmp_path):
  bad = {"nonnumeric.tsv": "1\t2\t4\n1\t3\tgood\n",
         "short.tsv": "1\t2\t4\n1\t3\n",
         "empty.tsv": "",
         "pairs.tsv": "user\tmovie\n999\t1\n",
         "dups.tsv": "1\t2\t4\n2\t2\t3\n1\t2\t5\n",
         "high.tsv": "1\t2\t4\n2\t2\t7\n",
         "good.tsv": "".join(f"{u}\t{i}\t{(u + i) % 5 + 1}\n"
                             for u in range(1, 6) for i in range(1, 6))}
  for name, text in bad.items():
    (tmp_path / name).write_text(text)
  return tmp_path


ERROR_CASES = [
    # (flags, what stderr must say)
    (["--model=svd"], "--model=svd is unknown"),
    (["--lr=-1"], "--lr=-1 must be positive"),
    (["--lr=fast"], "--lr=fast: cannot read"),
    (["--epochs=many"], "flag --epochs=many"),
    (["--wd=0.1,-1"], "--wd=0.1,-1 must not be negative"),
    (["--seed=1,x"], "--seed=1,x: cannot read"),
    (["--n_factors=0"], "--n_factors=0 must be positive"),
    (["--model=dot,svd"], "--model=svd is unknown"),
    (["--chunk=-1", "--seed=1,2"], "--chunk=-1 must be at least 1"),
    (["--plot", "--seed=1,2"], "--plot writes into --workdir"),
    (["--tensorboard"], "--tensorboard writes into --workdir"),
    (["--tensorboard", "--seed=1,2", "--workdir={tmp}/w"], "drop it for sweeps"),
    (["--ensemble", "--ensemble_top=-2"], "--ensemble_top=-2"),
    (["--bs=0"], "--bs=0 must be positive"),
    (["--y_range=5,0"], "LOW must be below HIGH"),
    (["--y_range=1"], "must be LOW,HIGH"),
    (["--layers=100,abc"], "comma-separated integers"),
    (["--layers=100;0"], "every width must be positive"),
    (["--y_range=0,5.5;4,2"], "--y_range=4,2: LOW must be below HIGH"),
    (["--valid_pct=1.5"], "strictly between 0 and 1"),
    (["--sampling=bootstrap"], "--sampling=bootstrap"),
    (["--nonsense=1"], "Unknown command line flag 'nonsense'"),
    (["positional"], "unexpected arguments"),
    (["--data_dir={tmp}/nowhere"], "--data_dir"),
    (["--ratings_file={tmp}/missing.csv"], "ratings file not found"),
    (["--ratings_file={tmp}/nonnumeric.tsv"],
     "line 2: rating 'good' is not a number"),
    (["--ratings_file={tmp}/short.tsv"], "line 2: the rating field is missing"),
    (["--ratings_file={tmp}/empty.tsv"], "is empty"),
    (["--split=u7"], "unknown MovieLens split 'u7'"),
    (["--valid_file={tmp}/pairs.tsv"], "1 of 1 validation pair(s) are not in"),
    (["--valid_file={tmp}/pairs.tsv", "--split=u1"], "give one"),
    (["--bs=100000"], "larger than"),
    (["--item_name=genre"], "--item_name=genre"),
    (["--model=side_nn", "--ratings_file={tmp}/good.tsv"],
     "not available for --ratings_file"),
    (["--model=side_nn", "--side=user,weather"], "unknown ['weather']"),
    (["--id_dropout=1.5"], "must lie in [0, 1)"),
    (["--ratings_file={tmp}/dups.tsv"], "1 rating(s) repeat an earlier"),
    (["--ratings_file={tmp}/dups.tsv", "--duplicates=first"],
     "--duplicates=first must be one of"),
    (["--ratings_file={tmp}/high.tsv"], "lie outside --y_range=0,5.5"),
    (["--param_dtype=float16"], "--param_dtype=float16 must be one of"),
    (["--compute_dtype=int8"], "--compute_dtype=int8 must be one of"),
    (["--num_processes=2"], "needs --coordinator_address"),
    (["--num_processes=2", "--coordinator_address=127.0.0.1:1",
      "--process_id=2"], "--process_id=2 must lie in [0, 2)"),
    (["--num_processes=0"], "--num_processes=0 must be at least 1"),
    (["--shard_data"], "--shard_data shards over --mesh"),
    (["--row_kernel=cuda"], "--row_kernel=cuda must be one of xla, cpp"),
    (["--row_kernel=cpp"], "use it with --optimizer=lazy_adamw or "
     "rowwise_adagrad"),
    (["--row_kernel=cpp", "--optimizer=lazy_adamw", "--seed=1,2"],
     "--row_kernel=cpp applies to one run"),
    (["--row_kernel=cpp", "--optimizer=lazy_adamw",
      "--param_dtype=bfloat16"], "take float32 tables, not bfloat16"),
    (["--row_kernel=cpp", "--optimizer=lazy_adamw", "--mesh=data:1"],
     "runs on one device; drop --mesh"),
    (["--model=autorec,dot"], "--model=autorec trains alone"),
    (["--model=autorec", "--bs=32"], "--bs does not apply to --model=autorec"),
    (["--model=autorec", "--input_dropout=0,1"],
     "--input_dropout=0,1: every value must be in [0, 1)"),
    (["--model=autorec", "--wd=-1"], "--wd=-1: every value must be at least 0"),
    (["--model=autorec", "--layers=8,x"], "comma-separated integers"),
    (["--model=autorec", "--dataset=synthetic", "--n_users=100000",
      "--n_items=10000", "--n_ratings=1000"],
     "AutoRec needs the dense 10,001 x 100,001 rating matrix"),
]


@pytest.mark.parametrize("flags, message", ERROR_CASES,
                         ids=[" ".join(f) for f, _ in ERROR_CASES])
def test_user_mistakes_exit_2_with_one_line(tiny_ml, tmp_path, flags,
                                            message):
  tmp = _bad_files(tmp_path)
  args = [f.format(tmp=tmp) for f in flags]
  proc = run(f"--data_dir={tiny_ml}", "--epochs=1", *args)
  assert proc.returncode == 2, (proc.stdout, proc.stderr)
  assert "Traceback" not in proc.stderr
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1, proc.stderr
  assert message in errors[0]


def test_autorec_ranks_ensembles_and_saves_the_best(tiny_ml, tmp_path):
  workdir = tmp_path / "autorec"
  proc = run(f"--data_dir={tiny_ml}", "--model=autorec", "--layers=16",
             "--epochs=40", "--lr=1e-2", "--wd=1", "--seed=0,1",
             "--ensemble", f"--workdir={workdir}")
  assert proc.returncode == 0, proc.stderr
  assert "autorec: 2 replica(s) over seed, 40 full-batch epochs" in (
      proc.stdout)
  assert "ensemble of 2 replicas: valid MSE" in proc.stdout
  summary = json.loads((workdir / "summary.json").read_text())
  losses = [r["valid_loss"] for r in summary["ranking"]]
  assert losses == sorted(losses) and len(losses) == 2
  assert {r["seed"] for r in summary["ranking"]} == {0, 1}
  # The mean prediction's MSE is at most the mean of the members' MSEs.
  assert summary["ensemble"]["valid_loss"] <= sum(losses) / 2 + 1e-6
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text(
  ).splitlines()]
  assert len(rows) == 2 * 10 and rows[-1]["epoch"] == 40
  best = summary["ranking"][0]
  final = [r for r in rows if r["replica"] == best["replica"]][-1]
  assert final["valid_loss"] == best["valid_loss"]
  weights = np.load(workdir / "autorec_params.npz")
  assert weights["Dense_0/kernel"].shape == (summary["n_users"], 16)
  assert weights["Dense_1/kernel"].shape == (16, summary["n_users"])


def test_sweep_writes_replica_metrics_and_ranking(tiny_ml, tmp_path):
  workdir = tmp_path / "sweep"
  proc = run(f"--data_dir={tiny_ml}", "--epochs=2", "--bs=16",
             "--lr=1e-2,3e-2", "--wd=0.01,0.1", "--seed=3,4", "--ensemble",
             "--ensemble_top=3", "--chunk=3", f"--workdir={workdir}")
  assert proc.returncode == 0, proc.stderr
  assert "sweep of 8 replicas over lr, wd, seed" in proc.stdout
  assert "chunk 3 of 3" in proc.stdout
  assert "ensemble of 3 replicas" in proc.stdout
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text(
  ).splitlines()]
  assert len(rows) == 8 * 2
  assert {(r["lr"], r["wd"], r["seed"]) for r in rows} == {
      (lr, wd, s) for lr in (1e-2, 3e-2) for wd in (0.01, 0.1) for s in (3, 4)}
  summary = json.loads((workdir / "sweep.json").read_text())
  losses = [r["valid_loss"] for r in summary["ranking"]]
  assert losses == sorted(losses) and len(losses) == 8
  assert summary["ensemble"]["members"] == sorted(
      r["replica"] for r in summary["ranking"][:3])
  assert summary["swept"] == ["lr", "wd", "seed"]


def test_sweep_over_shapes_and_plot(tiny_ml, tmp_path):
  pytest.importorskip("matplotlib")
  workdir = tmp_path / "shapes"
  proc = run(f"--data_dir={tiny_ml}", "--epochs=1", "--bs=16",
             "--model=dot_bias,embedding_nn", "--n_factors=4,8",
             "--layers=8;16,8", "--y_range=0,5.5;0.5,5.25",
             f"--workdir={workdir}", "--plot")
  assert proc.returncode == 0, proc.stderr
  # dot_bias: 2 widths; embedding_nn: 2 layer sets; each x 2 y_ranges.
  assert proc.stdout.count("compiled ") == 4
  assert (workdir / "sweep.png").stat().st_size > 10_000


def _event_tags(folder):
  """Counts of scalar tags in a TensorBoard event file (tensorboardX's
  protobufs; the records are length, crc, event, crc)."""
  import struct
  from tensorboardX.proto import event_pb2
  (path,) = list(folder.glob("events.out.tfevents.*"))
  data, tags, i = path.read_bytes(), {}, 0
  while i < len(data):
    n = struct.unpack("Q", data[i:i + 8])[0]
    event = event_pb2.Event()
    event.ParseFromString(data[i + 12:i + 12 + n])
    for value in event.summary.value:
      tags[value.tag] = tags.get(value.tag, 0) + 1
    i += 12 + n + 4
  return tags


def test_tensorboard_events_and_loss_plot(tiny_ml, tmp_path):
  pytest.importorskip("tensorboardX")
  pytest.importorskip("matplotlib")
  workdir = tmp_path / "tb"
  proc = run(f"--data_dir={tiny_ml}", "--epochs=2", "--bs=8",
             f"--workdir={workdir}", "--tensorboard", "--plot")
  assert proc.returncode == 0, proc.stderr
  tags = _event_tags(workdir / "tensorboard")
  steps = int(json.loads((workdir / "summary.json").read_text())[
      "n_train"]) // 8 * 2
  chunks = 2 * -(-(steps // 2) // 50)
  assert tags["train/loss"] == tags["train/lr"] == tags["train/beta1"] == chunks
  assert tags["valid/mse"] == 2
  assert (workdir / "tensorboard" / "projector_config.pbtxt").exists()
  assert (workdir / "loss.png").stat().st_size > 5_000


def test_side_nn_trains_and_is_inspected(tiny_ml, tmp_path):
  workdir = tmp_path / "side"
  proc = run(f"--data_dir={tiny_ml}", "--epochs=2", "--bs=16",
             "--model=side_nn", "--layers=8", "--id_dropout=0.1",
             f"--workdir={workdir}")
  assert proc.returncode == 0, proc.stderr
  assert "side information: user, item, time" in proc.stdout
  inspect = subprocess.run(
      [sys.executable, "-m", "jaxcf.inspect", f"--workdir={workdir}",
       "--user=2", "--k=3"], capture_output=True, text=True, cwd=REPO,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert inspect.returncode == 0, inspect.stderr
  assert "top 3 for user 2" in inspect.stdout
