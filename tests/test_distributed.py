"""Two processes joined by jax.distributed (CPU, loopback) train exactly as
one process with two devices does: real subprocesses of train.py."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxcf import trained
from tests.conftest import REPO


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int = 1) -> dict:
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  env.pop("JAXCF_DATA", None)
  return env


def _start_two(args, own_args=((), ())) -> list[subprocess.Popen]:
  """Processes 0 and 1 of a two-process train.py run over loopback, each
  with `args` and its own `own_args[i]`."""
  port = _free_port()
  return [subprocess.Popen(
      args + [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
              f"--process_id={i}", *own_args[i]],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
          for i in range(2)]


def _valid_losses(workdir) -> list[float]:
  rows = (workdir / "metrics.jsonl").read_text().splitlines()
  return [json.loads(r)["valid_loss"] for r in rows]


@pytest.mark.parametrize("mesh", ["data:2", "data:1,model:2"])
def test_two_processes_equal_one_process_with_two_devices(tiny_ml, tmp_path,
                                                          mesh):
  common = [sys.executable, str(REPO / "train.py"), f"--data_dir={tiny_ml}",
            "--epochs=2", "--bs=16", "--n_factors=8", f"--mesh={mesh}"]
  single = subprocess.run(
      common + ["--shard_data", f"--workdir={tmp_path / 'single'}"],
      capture_output=True, text=True, env=_env(2), timeout=300)
  assert single.returncode == 0, single.stderr
  procs = _start_two(common + [f"--workdir={tmp_path / 'p'}"])
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err
  assert "process 1 of 2: 1 of 2 devices" in outs[1][1]
  # Only process 0 prints and writes (Gloo's C++ says hello to stdout).
  assert [l for l in outs[1][0].splitlines() if "[Gloo]" not in l] == []
  assert "final valid MSE" in outs[0][0]
  np.testing.assert_allclose(_valid_losses(tmp_path / "p"),
                             _valid_losses(tmp_path / "single"), rtol=1e-5)
  # The model process 0 saved is whole (gathered when sharded) and usable.
  a, b = trained.load(str(tmp_path / "p")), trained.load(
      str(tmp_path / "single"))
  np.testing.assert_allclose(
      np.asarray(a.state.params["item_factors"]["embedding"]),
      np.asarray(b.state.params["item_factors"]["embedding"]), atol=1e-5)
  user = a.users.decode([1])[0]
  assert list(a.recommend(user, k=3)["item"]) == list(
      b.recommend(user, k=3)["item"])


def _checkpoints(workdir) -> list[int]:
  folder = workdir / "checkpoints"
  return sorted(int(p.name) for p in folder.glob("*") if p.name.isdigit()) \
      if folder.exists() else []


def test_two_processes_stop_together_and_resume_exactly(tiny_ml, tmp_path):
  common = [sys.executable, str(REPO / "train.py"), f"--data_dir={tiny_ml}",
            "--epochs=12", "--bs=8", "--n_factors=8", "--mesh=data:2",
            "--checkpoint_seconds=0"]
  single = subprocess.run(
      common + ["--shard_data", f"--workdir={tmp_path / 'single'}"],
      capture_output=True, text=True, env=_env(2), timeout=300)
  assert single.returncode == 0, single.stderr
  workdir = tmp_path / "shared"

  def start():
    return _start_two(common + [f"--workdir={workdir}"])

  def wait_for_checkpoint(procs, after: int) -> None:
    while not [s for s in _checkpoints(workdir) if s > after]:
      assert all(p.poll() is None for p in procs), [
          p.communicate()[1] for p in procs]
      time.sleep(0.05)

  # SIGTERM to one process: both stop after the same epoch, checkpointed.
  procs = start()
  wait_for_checkpoint(procs, 0)
  procs[1].send_signal(signal.SIGTERM)
  outs = [p.communicate(timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [128 + signal.SIGTERM] * 2, outs
  assert "stopped by SIGTERM" in outs[1][1]
  assert "stopped by a signal to another process" in outs[0][1]
  stopped_at = _checkpoints(workdir)[-1]
  # Resumed, then SIGKILLed, both of them, at the next checkpoint.
  procs = start()
  wait_for_checkpoint(procs, stopped_at)
  for p in procs:
    p.kill()
    p.wait()
  # Resumed again, to the end: the metrics of the uninterrupted run.
  procs = start()
  outs = [p.communicate(timeout=300) for p in procs]
  assert all(p.returncode == 0 for p in procs), outs
  assert "resuming at epoch" in outs[0][0]
  np.testing.assert_allclose(_valid_losses(workdir),
                             _valid_losses(tmp_path / "single"), rtol=1e-5)
  assert len(_valid_losses(workdir)) == 12


def test_processes_must_share_the_workdir(tiny_ml, tmp_path):
  procs = _start_two([sys.executable, str(REPO / "train.py"),
                      f"--data_dir={tiny_ml}", "--epochs=1", "--mesh=data:2"],
                     [[f"--workdir={tmp_path / str(i)}"] for i in range(2)])
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 2, err
    assert "error: every process needs the same --workdir" in err
    assert "Traceback" not in err
