"""Faults: a killed run resumes to exactly the uninterrupted numbers; signals
stop cleanly; divergence stops with a message; settings must match."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import REPO, write_movielens

FLAGS = ["--epochs=40", "--bs=4", "--lr=1e-2", "--model=embedding_nn",
         "--layers=8"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  return write_movielens(tmp_path_factory.mktemp("ml") / "ml-100k")


def command(folder, workdir, *extra):
  return [sys.executable, str(REPO / "train.py"), f"--data_dir={folder}",
          f"--workdir={workdir}", *FLAGS, *extra]


ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def rows(workdir):
  """metrics.jsonl without wall times."""
  out = []
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    row = json.loads(line)
    row.pop("seconds")
    out.append(row)
  return out


def wait_for_checkpoint(workdir, epoch, proc, timeout=120):
  deadline = time.time() + timeout
  while time.time() < deadline:
    steps = [int(p.name) for p in (workdir / "checkpoints").glob("*")
             if p.name.isdigit()] if (workdir / "checkpoints").exists() else []
    if steps and max(steps) >= epoch:
      return
    if proc.poll() is not None:
      raise AssertionError(f"the run ended first: {proc.stderr.read()}")
    time.sleep(0.01)
  raise AssertionError("no checkpoint appeared")


@pytest.fixture(scope="module")
def uninterrupted(folder, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("whole")
  subprocess.run(command(folder, workdir), check=True, capture_output=True,
                 env=ENV)
  return rows(workdir)


@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_then_resume_gives_identical_metrics(folder, tmp_path,
                                                     uninterrupted, seed):
  kill_after = np.random.default_rng(seed).integers(2, 20)
  proc = subprocess.Popen(command(folder, tmp_path), env=ENV,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
  wait_for_checkpoint(tmp_path, kill_after, proc)
  time.sleep(np.random.default_rng(seed).uniform(0, 0.05))
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  done = subprocess.run(command(folder, tmp_path), capture_output=True,
                        text=True, env=ENV)
  assert done.returncode == 0, done.stderr
  assert "resuming at epoch" in done.stdout
  assert rows(tmp_path) == uninterrupted  # bit-identical floats


def test_sigint_checkpoints_and_exits_cleanly(folder, tmp_path,
                                              uninterrupted):
  proc = subprocess.Popen(command(folder, tmp_path), env=ENV,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
  wait_for_checkpoint(tmp_path, 3, proc)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 128 + signal.SIGINT
  assert "Traceback" not in err
  assert "stopped by SIGINT" in err
  assert "rerun the same command to continue" in err
  done = subprocess.run(command(folder, tmp_path), capture_output=True,
                        text=True, env=ENV)
  assert done.returncode == 0, done.stderr
  assert rows(tmp_path) == uninterrupted


def test_divergence_stops_with_a_message(folder, tmp_path):
  args = [a for a in command(folder, tmp_path) if a != "--layers=8"]
  proc = subprocess.run(args + ["--model=dot", "--lr=1e12", "--y_range=none",
                                "--wd=0"],
                        capture_output=True, text=True, env=ENV)
  assert proc.returncode == 2, proc.stdout
  assert "Traceback" not in proc.stderr
  assert "training diverged in epoch" in proc.stderr
  assert "lower --lr" in proc.stderr
  assert not (tmp_path / "model").exists()  # nothing NaN saved as a model


def test_changed_settings_are_refused_or_restarted(folder, tmp_path):
  short = [a for a in command(folder, tmp_path) if not a.startswith(
      "--epochs")] + ["--epochs=2"]
  subprocess.run(short, check=True, capture_output=True, env=ENV)
  other = subprocess.run(short + ["--wd=0.3"], capture_output=True, text=True,
                         env=ENV)
  assert other.returncode == 2
  assert "other settings (wd differ)" in other.stderr
  fresh = subprocess.run(short + ["--wd=0.3", "--restart"],
                         capture_output=True, text=True, env=ENV)
  assert fresh.returncode == 0, fresh.stderr
  assert "resuming" not in fresh.stdout


def test_mid_epoch_checkpoints_resume_exactly(folder, tmp_path,
                                              uninterrupted):
  """With --checkpoint_steps, a kill inside an epoch loses at most that many
  steps, and the resumed run still ends bit-identical."""
  args = command(folder, tmp_path, "--checkpoint_steps=10")
  proc = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  steps = 124  # 498 training rows // bs 4
  wait_for_checkpoint(tmp_path, 3 * steps + 20, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  latest = max(int(p.name) for p in (tmp_path / "checkpoints").glob("*")
               if p.name.isdigit())
  done = subprocess.run(args, capture_output=True, text=True, env=ENV)
  assert done.returncode == 0, done.stderr
  if latest % steps:
    assert f"step {latest % steps} of {steps}" in done.stdout
  assert rows(tmp_path) == uninterrupted
