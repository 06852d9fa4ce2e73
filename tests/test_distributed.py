"""Two processes joined by jax.distributed (CPU, loopback) train exactly as
one process with two devices does: real subprocesses of train.py."""

import json
import os
import socket
import subprocess
import sys

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
  port = _free_port()
  procs = [subprocess.Popen(
      common + [f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2", f"--process_id={i}",
                f"--workdir={tmp_path / f'p{i}'}"],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
           for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err
  assert "process 1 of 2: 1 of 2 devices" in outs[1][1]
  # Only process 0 prints and writes (Gloo's C++ says hello to stdout).
  assert [l for l in outs[1][0].splitlines() if "[Gloo]" not in l] == []
  assert not (tmp_path / "p1").exists()
  assert "final valid MSE" in outs[0][0]
  np.testing.assert_allclose(_valid_losses(tmp_path / "p0"),
                             _valid_losses(tmp_path / "single"), rtol=1e-5)
  # The model process 0 saved is whole (gathered when sharded) and usable.
  a, b = trained.load(str(tmp_path / "p0")), trained.load(
      str(tmp_path / "single"))
  np.testing.assert_allclose(
      np.asarray(a.state.params["item_factors"]["embedding"]),
      np.asarray(b.state.params["item_factors"]["embedding"]), atol=1e-5)
  user = a.users.decode([1])[0]
  assert list(a.recommend(user, k=3)["item"]) == list(
      b.recommend(user, k=3)["item"])
