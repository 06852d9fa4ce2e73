"""Faults: a killed run resumes to exactly the uninterrupted numbers; signals
stop cleanly; divergence stops with a message; settings must match.

Kills and signals need a real process (train.py); the uninterrupted
references and everything else run in-process."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import REPO, train_cli, write_movielens

FLAGS = ["--bs=4", "--lr=1e-2", "--model=embedding_nn", "--layers=8",
         "--checkpoint_seconds=0"]
EPOCHS = 12
STEPS = 124  # 498 training rows // bs 4


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  return write_movielens(tmp_path_factory.mktemp("ml") / "ml-100k")


def args(folder, workdir, *extra, epochs=EPOCHS):
  return [f"--data_dir={folder}", f"--workdir={workdir}", *FLAGS,
          f"--epochs={epochs}", *extra]


def command(*a, **k):
  return [sys.executable, str(REPO / "train.py"), *args(*a, **k)]


ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def rows(workdir):
  """metrics.jsonl without wall times."""
  out = []
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    row = json.loads(line)
    row.pop("seconds")
    out.append(row)
  return out


def checkpoints(workdir) -> list[int]:
  folder = workdir / "checkpoints"
  return sorted(int(p.name) for p in folder.glob("*")
                if p.name.isdigit()) if folder.exists() else []


def wait_for_checkpoint(workdir, step, proc, timeout=120):
  """Until a checkpoint at or after global step `step` exists."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if checkpoints(workdir) and checkpoints(workdir)[-1] >= step:
      return
    if proc.poll() is not None:
      raise AssertionError(f"the run ended first: {proc.stderr.read()}")
    time.sleep(0.01)
  raise AssertionError("no checkpoint appeared")


@pytest.fixture(scope="module")
def uninterrupted(folder, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("whole")
  assert train_cli(*args(folder, workdir)) == 0
  return rows(workdir)


@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_then_resume_gives_identical_metrics(folder, tmp_path,
                                                     uninterrupted, seed):
  rng = np.random.default_rng(seed)
  proc = subprocess.Popen(command(folder, tmp_path), env=ENV,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
  wait_for_checkpoint(tmp_path, STEPS * rng.integers(1, 4), proc)
  time.sleep(rng.uniform(0, 0.05))
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  done = subprocess.run(command(folder, tmp_path), capture_output=True,
                        text=True, env=ENV)
  assert done.returncode == 0, done.stderr
  assert "resuming at epoch" in done.stdout
  assert rows(tmp_path) == uninterrupted  # bit-identical floats


def test_sigint_checkpoints_and_exits_cleanly(folder, tmp_path, uninterrupted,
                                              capsys):
  proc = subprocess.Popen(command(folder, tmp_path), env=ENV,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
  wait_for_checkpoint(tmp_path, STEPS, proc)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 128 + signal.SIGINT
  assert "Traceback" not in err
  assert "stopped by SIGINT" in err
  assert "rerun the same command to continue" in err
  stopped_at = checkpoints(tmp_path)[-1]
  assert stopped_at % STEPS == 0 and stopped_at < EPOCHS * STEPS
  assert train_cli(*args(folder, tmp_path)) == 0  # resumed in-process
  assert f"resuming at epoch {stopped_at // STEPS}" in capsys.readouterr().out
  assert rows(tmp_path) == uninterrupted


def test_mid_epoch_checkpoints_resume_exactly(folder, tmp_path,
                                              tmp_path_factory, capsys):
  """With --checkpoint_steps, a kill inside an epoch loses at most that many
  steps, and the resumed run still ends bit-identical."""
  whole = tmp_path_factory.mktemp("whole_short")
  assert train_cli(*args(folder, whole, epochs=4)) == 0
  cmd = command(folder, tmp_path, "--checkpoint_steps=10", epochs=4)
  proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  wait_for_checkpoint(tmp_path, STEPS + 20, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  latest = checkpoints(tmp_path)[-1]
  capsys.readouterr()
  assert train_cli(*args(folder, tmp_path, "--checkpoint_steps=10",
                         epochs=4)) == 0
  if latest % STEPS:
    assert f"step {latest % STEPS} of {STEPS}" in capsys.readouterr().out
  assert rows(tmp_path) == rows(whole)


def test_divergence_stops_with_a_message(folder, tmp_path, capsys):
  code = train_cli(f"--data_dir={folder}", f"--workdir={tmp_path}",
                   "--epochs=2", "--bs=4", "--model=dot", "--lr=1e12",
                   "--y_range=none", "--wd=0")
  assert code == 2
  err = capsys.readouterr().err
  assert "Traceback" not in err
  assert "training diverged in epoch" in err
  assert "lower --lr" in err
  assert not (tmp_path / "model").exists()  # nothing NaN saved as a model


def test_changed_settings_are_refused_or_restarted(folder, tmp_path, capsys):
  short = args(folder, tmp_path, epochs=2)
  assert train_cli(*short) == 0
  before = (tmp_path / "metrics.jsonl").read_text()
  capsys.readouterr()
  assert train_cli(*short, "--wd=0.3") == 2
  assert "other settings (--wd 0.1 there, 0.3 now)" in capsys.readouterr().err
  assert (tmp_path / "metrics.jsonl").read_text() == before  # untouched
  assert train_cli(*short, "--wd=0.3", "--restart") == 0
  out = capsys.readouterr().out
  assert "resuming" not in out
  assert f"moved the earlier run to {tmp_path / 'previous-1'}" in out
  assert (tmp_path / "previous-1" / "metrics.jsonl").read_text() == before


def test_edited_data_is_another_run(folder, tmp_path, capsys):
  """The fingerprint holds the data's content: editing a rating and
  rerunning the command is refused instead of resuming stale factors."""
  data = tmp_path / "ml-100k"
  write_movielens(data)
  short = [f"--data_dir={data}", f"--workdir={tmp_path / 'w'}", *FLAGS,
           "--epochs=1"]
  assert train_cli(*short) == 0
  lines = (data / "u.data").read_text().splitlines()
  k = next(k for k, l in enumerate(lines) if l.split("\t")[2] != "3")
  user, item, rating, stamp = lines[k].split("\t")
  lines[k] = "\t".join([user, item, str(6 - int(rating)), stamp])
  (data / "u.data").write_text("\n".join(lines) + "\n")
  capsys.readouterr()
  assert train_cli(*short) == 2
  assert "the data's content differs" in capsys.readouterr().err


def test_checkpoints_of_an_older_layout_are_named(folder, tmp_path, capsys):
  import jax
  from jaxcf import models, optim, resume, training
  model = models.create("dot", 5, 5, n_factors=2)
  state = training.create_train_state(
      model, optim.one_cycle_adamw(1e-3, 0.1, 10), jax.random.key(0))
  store = resume.RunCheckpoints(str(tmp_path / "checkpoints"), {})
  store.save(124, state, {"history": [], "epoch": 0, "done": 124})
  store.close()
  assert train_cli(*args(folder, tmp_path, epochs=1)) == 2
  assert "checkpoints an older jaxcf wrote" in capsys.readouterr().err


def test_checkpoint_seconds_skips_early_saves_but_never_the_end_or_a_stop(
    folder, tmp_path):
  """Saves due within --checkpoint_seconds of the previous one are skipped:
  a short run checkpoints once, at its end; a stop saves at once."""
  from jaxcf import datasets, resume, sweep, training
  short = tmp_path / "short"
  assert train_cli(*args(folder, short, "--checkpoint_seconds=3600",
                         epochs=3)) == 0
  assert checkpoints(short) == [3 * STEPS]
  every = tmp_path / "every"
  assert train_cli(*args(folder, every, epochs=3)) == 0  # FLAGS: 0 s
  assert checkpoints(every) == [2 * STEPS, 3 * STEPS]  # two kept
  d = datasets.load(datasets.Source(data_dir=str(folder.parent)), seed=42,
                    log=None)
  model = sweep.Replica(model="embedding_nn", layers=(8,)).create_model(d)
  store = resume.RunCheckpoints(str(tmp_path / "stopped"), {})
  calls = []
  result = training.fit(
      model, d, training.TrainConfig(epochs=EPOCHS, batch_size=4), log=None,
      checkpoints=store, checkpoint_seconds=3600.0,
      stop_requested=lambda: calls.append(1) or len(calls) >= 2)
  store.close()
  assert result.stopped
  steps = sorted(int(p.name) for p in (tmp_path / "stopped").iterdir()
                 if p.name.isdigit())
  assert steps == [STEPS]
