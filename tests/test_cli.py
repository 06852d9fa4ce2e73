"""train.py as a user runs it: flags, files, exit codes and what a run
writes. In-process (`tests.conftest.train_cli`: the real flag parsing, the
real run); `test_the_script_runs` starts the real script once."""

import json
import os
import subprocess
import sys

import pytest

import jaxcf
from tests.conftest import REPO, train_cli


@pytest.fixture(autouse=True)
def _no_shared_data(monkeypatch):
  monkeypatch.delenv("JAXCF_DATA", raising=False)


def test_the_script_runs_and_fails_with_exit_2(tiny_ml, tmp_path):
  """The real script: exit 0 (keeping its compiled programs in
  $JAXCF_CACHE/xla unless --nocompilation_cache), and exit 2 with one line
  for a mistake."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("JAXCF_DATA", None)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # the tests' own cache
  command = [sys.executable, str(REPO / "train.py"), f"--data_dir={tiny_ml}",
             "--epochs=1", "--bs=32"]
  for cache, extra in (("on", [f"--workdir={tmp_path / 'w'}"]),
                       ("off", ["--nocompilation_cache"])):
    ok = subprocess.run(command + extra, capture_output=True, text=True,
                        env={**env, "JAXCF_CACHE": str(tmp_path / cache)},
                        timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "final valid MSE" in ok.stdout
  assert len(list((tmp_path / "on" / "xla").iterdir())) >= 2
  phases = json.loads((tmp_path / "w" / "summary.json").read_text())[
      "seconds"]
  assert 0 < phases["import"] < phases["total"]  # from the process's start
  assert not (tmp_path / "off" / "xla").exists()
  bad = subprocess.run(command + ["--lr=-1"], capture_output=True, text=True,
                       env=env, timeout=300)
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines() == [
      "error: --lr=-1.0 must be a positive number"]


def test_help_lists_every_flag(capsys):
  assert train_cli("--help") == 0
  out = capsys.readouterr().out
  for name in ("--n_factors", "--config", "compilation_cache", "--epochs"):
    assert name in out


def test_trains_and_writes_workdir(tiny_ml, tmp_path, capsys):
  workdir = tmp_path / "run"
  assert train_cli(f"--data_dir={tiny_ml}", "--epochs=3", "--bs=16",
                   f"--workdir={workdir}", "--seed=1") == 0
  out, err = capsys.readouterr()
  assert "read " in out and "ratings from" in out
  assert "model dot_bias: " in out and "compiled" in out
  assert "epoch  train_loss valid_loss" in out
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text(
  ).splitlines()]
  assert [r["epoch"] for r in rows] == [0, 1, 2]
  for r in rows:
    assert {"epoch", "train_loss", "train_loss_smooth", "valid_loss",
            "valid_rmse", "valid_mae", "lr_end", "seconds"} == set(r)
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["final"] == rows[-1]
  config = json.loads((workdir / "config.json").read_text())
  assert summary["config"] == config
  assert config["train"]["bs"] == 16 and config["train"]["seed"] == [1]
  assert summary["versions"]["jax"] and summary["device"]["platform"]
  assert summary["train_samples_per_second"] > 0
  phases = summary["seconds"]
  assert set(phases) == {"read", "setup", "compile", "train", "evaluation",
                         "ranking", "save", "total"}
  assert sum(v for k, v in phases.items() if k != "total") <= (
      phases["total"] + 0.01)
  assert "seconds: read " in out
  assert "Traceback" not in err
  model = jaxcf.load(str(workdir))
  assert model.spec["model"] == "dot_bias"


def test_flagfile_and_models(tiny_ml, tmp_path, capsys):
  flagfile = tmp_path / "flags.txt"
  flagfile.write_text(f"--data_dir={tiny_ml}\n--model=embedding_nn\n"
                      "--layers=16,8\n--epochs=1\n--bs=32\n--split=u1\n")
  assert train_cli(f"--flagfile={flagfile}") == 0
  out = capsys.readouterr().out
  assert "model embedding_nn" in out
  assert "official split u1" in out


def test_config_file_and_flags_over_it(tiny_ml, tmp_path, capsys):
  path = tmp_path / "cfg.py"
  path.write_text(
      "from jaxcf import config\n"
      "def get_config():\n"
      "  return config.RunConfig(\n"
      "      model=config.Model(model=('embedding_nn',), layers=((8,),)),\n"
      "      train=config.Train(epochs=3, bs=32, lr=(1e-2,)))\n")
  assert train_cli(f"--config={path}", f"--data_dir={tiny_ml}",
                   "--epochs=2", f"--workdir={tmp_path / 'w'}") == 0
  out = capsys.readouterr().out
  assert "model embedding_nn" in out
  written = json.loads((tmp_path / "w" / "config.json").read_text())
  assert written["train"]["epochs"] == 2  # the flag over the file
  assert written["train"]["bs"] == 32 and written["train"]["lr"] == [1e-2]
  assert written["model"]["layers"] == [[8]]


def test_own_ratings_file_with_titles(tmp_path, capsys):
  ratings = tmp_path / "ratings.csv"
  lines = ["userId,movieId,rating,timestamp"]
  lines += [f"{u},{i},{(u * i) % 9 / 2 + 0.5},{u * 100 + i}"
            for u in range(1, 21) for i in range(1, 16) if (u + i) % 3]
  ratings.write_text("\n".join(lines) + "\n")
  movies = tmp_path / "movies.csv"
  movies.write_text("movieId,title,genres\n" + "".join(
      f'{i},"Film {i}, The (2001)",Drama\n' for i in range(1, 16)))
  assert train_cli(f"--ratings_file={ratings}", f"--items_file={movies}",
                   "--item_columns=movieId,title", "--epochs=1",
                   "--bs=8") == 0
  assert f"read {len(lines) - 1} ratings" in capsys.readouterr().out
  assert train_cli(f"--ratings_file={ratings}", "--epochs=1", "--bs=8") == 0
  assert "items are keyed by id" in capsys.readouterr().out


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
    (["--lr=-1"], "--lr=-1.0 must be a positive number"),
    (["--lr=nan"], "--lr=nan must be a positive number"),
    (["--seed=-1"], "--seed=-1 must be an integer in [0, 2^32)"),
    (["--seed=100000000000000000000"], "must be an integer in [0, 2^32)"),
    (["--lr=fast"], "--lr=fast: cannot read"),
    (["--epochs=many"], "flag --epochs=many"),
    (["--wd=0.1,-1"], "--wd=-1.0 must be a number >= 0"),
    (["--div=nan"], "--div=nan must be a positive number"),
    (["--seed=1,x"], "--seed=1,x: cannot read"),
    (["--n_factors=0"], "--n_factors=0 must be a positive integer"),
    (["--model=collab_nn", "--n_factors=8,16"],
     "--n_factors does not apply to --model=collab_nn"),
    (["--model=autorec", "--y_range=0,5"],
     "--y_range does not apply to --model=autorec"),
    (["--side=user"], "--side does not apply to --model=dot_bias"),
    (["--optimizer=lazy_adamw", "--model=side_nn"], "not side_nn"),
    (["--optimizer=adam"], "--optimizer=adam must be one of adamw, sgd"),
    (["--config={tmp}/nowhere.py"], "--config={tmp}/nowhere.py: no such"),
    (["--checkpoint_every=0"], "--checkpoint_every=0 must be at least 1"),
    (["--checkpoint_steps=-5"], "--checkpoint_steps=-5 must be 0"),
    (["--keep_checkpoints=0"], "--keep_checkpoints=0 must be at least 1"),
    (["--model=dot,svd"], "--model=svd is unknown"),
    (["--chunk=-1", "--seed=1,2"], "--chunk=-1 must be at least 1"),
    (["--plot", "--seed=1,2"], "--plot writes into --workdir"),
    (["--tensorboard"], "--tensorboard writes into --workdir"),
    (["--tensorboard", "--seed=1,2", "--workdir={tmp}/w"], "drop it for sweeps"),
    (["--ensemble", "--ensemble_top=-2"], "--ensemble_top=-2"),
    (["--bs=0"], "--bs=0 must be a positive integer"),
    (["--y_range=5,0"], "--y_range=5.0,0.0 must be LOW,HIGH with finite"),
    (["--y_range=0,inf"], "--y_range=0.0,inf must be LOW,HIGH with finite"),
    (["--y_range=1"], "must be LOW,HIGH"),
    (["--model=collab_nn", "--layers=100,abc"], "comma-separated integers"),
    (["--model=embedding_nn", "--layers=100;0"],
     "--layers=0 must be positive integer widths"),
    (["--y_range=0,5.5;4,2"], "--y_range=4.0,2.0 must be LOW,HIGH"),
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
    (["--split=u7"], "--split=u7 must be random, ratio:TRAIN_SHARE"),
    (["--split=ratio:1.5"], "--split=ratio:1.5 must be random"),
    (["--split=temporal:x"], "--split=temporal:x must be random"),
    (["--dataset=ml-2m"], "--dataset=ml-2m must be movielens, synthetic or "
     "one of ml-100k, ml-1m"),
    (["--valid_file={tmp}/pairs.tsv"], "1 of 1 validation pair(s) are not in"),
    (["--valid_file={tmp}/pairs.tsv", "--split=u1"], "give one"),
    (["--bs=100000"], "larger than"),
    (["--item_name=genre"], "--item_name=genre"),
    (["--ratings_file={tmp}/good.tsv", "--item_name=title"],
     "--item_name=title needs titles"),
    (["--model=side_nn", "--ratings_file={tmp}/good.tsv"],
     "a --ratings_file has none"),
    (["--model=side_nn", "--side=user,weather"], "unknown ['weather']"),
    (["--model=side_nn", "--id_dropout=1.5"], "--id_dropout=1.5 must be in [0, 1)"),
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
     "--input_dropout=1.0 must be in [0, 1)"),
    (["--model=autorec", "--wd=-1"], "--wd=-1.0 must be a number >= 0"),
    (["--model=autorec", "--layers=8,x"], "comma-separated integers"),
    (["--model=autorec", "--dataset=synthetic", "--n_users=100000",
      "--n_items=10000", "--n_ratings=1000"],
     "AutoRec needs the dense 10,001 x 100,001 rating matrix"),
]


@pytest.mark.parametrize("flags, message", ERROR_CASES,
                         ids=[" ".join(f) for f, _ in ERROR_CASES])
def test_user_mistakes_exit_2_with_one_line(tiny_ml, tmp_path, capsys,
                                            flags, message):
  tmp = _bad_files(tmp_path)
  args = [f.format(tmp=tmp) for f in flags]
  assert train_cli(f"--data_dir={tiny_ml}", "--epochs=1", *args) == 2
  err = capsys.readouterr().err
  assert "Traceback" not in err
  errors = [l for l in err.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1, err
  assert message.format(tmp=tmp) in errors[0]


def test_unread_settings_collapse_instead_of_duplicating(tiny_ml, capsys):
  assert train_cli(f"--data_dir={tiny_ml}", "--epochs=1", "--bs=32",
                   "--model=dot_bias,collab_nn", "--n_factors=4,8") == 0
  out = capsys.readouterr().out
  assert "sweep of 3 replicas over model, n_factors, layers" in out


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
  assert train_cli(f"--data_dir={tiny_ml}", "--epochs=2", "--bs=8",
                   f"--workdir={workdir}", "--tensorboard", "--plot") == 0
  tags = _event_tags(workdir / "tensorboard")
  steps = int(json.loads((workdir / "summary.json").read_text())[
      "n_train"]) // 8 * 2
  chunks = 2 * -(-(steps // 2) // 50)
  assert tags["train/loss"] == tags["train/lr"] == tags["train/beta1"] == chunks
  assert tags["valid/mse"] == 2
  assert (workdir / "tensorboard" / "projector_config.pbtxt").exists()
  assert (workdir / "loss.png").stat().st_size > 5_000


def test_side_nn_trains_and_is_inspected(tiny_ml, tmp_path, capsys):
  from jaxcf import inspect
  workdir = tmp_path / "side"
  assert train_cli(f"--data_dir={tiny_ml}", "--epochs=2", "--bs=16",
                   "--model=side_nn", "--layers=8", "--id_dropout=0.1",
                   f"--workdir={workdir}") == 0
  assert "side information: user, item, time" in capsys.readouterr().out
  assert inspect.main([f"--workdir={workdir}", "--user=2", "--k=3"]) == 0
  assert "top 3 for user 2" in capsys.readouterr().out


def test_tensorboard_events_are_whole_when_no_model_is_saved(tmp_path):
  """A synthetic run saves no model/; its events still reach their file."""
  pytest.importorskip("tensorboardX")
  workdir = tmp_path / "tb"
  assert train_cli("--dataset=synthetic", "--n_users=200", "--n_items=100",
                   "--n_ratings=5000", "--epochs=2", "--bs=64",
                   f"--workdir={workdir}", "--tensorboard") == 0
  tags = _event_tags(workdir / "tensorboard")
  assert tags["valid/mse"] == 2 and tags["train/loss"] >= 2
