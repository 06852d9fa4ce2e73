"""Sharded training on 8 CPU devices equals the single-device run, and the
arrays really are split (a subprocess: the device count is fixed at start)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO, write_movielens

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from jaxcf import datasets, sharding, sweep, training
    d = datasets.load(datasets.Source(data_dir=sys.argv[1]), seed=0, log=None)
    mesh = sharding.make_mesh("data:4,model:2")
    replica = sweep.Replica(model=sys.argv[2], n_factors=8, layers=(16,))
    model = replica.create_model(d, mesh)
    config = training.TrainConfig(epochs=2, batch_size=16, optimizer=sys.argv[3])
    one = training.fit(model, d, config, log=None)
    many = training.fit(model, d, config, log=None, mesh=mesh)
    table = many.state.params["user_factors"]["embedding"]
    mu = jax.tree.leaves(many.state.opt_state)
    print("RESULT " + json.dumps({
        "devices": jax.device_count(),
        "rows": [model.n_users, model.n_items, d.n_users, d.n_items],
        "one": [h["valid_loss"] for h in one.history],
        "many": [h["valid_loss"] for h in many.history],
        "table_spec": str(table.sharding.spec),
        "table_shards": sorted({s.data.shape[0] for s in table.addressable_shards}),
        "moments_sharded": any(
            str(getattr(x.sharding, "spec", "")).startswith("P('model'")
            for x in mu if getattr(x, "ndim", 0) >= 2),
    }))
""")


@pytest.mark.parametrize("model, optimizer", [
    ("dot_bias", "adamw"), ("embedding_nn", "adamw"),
    ("dot_bias", "lazy_adamw")])
def test_sharded_equals_single_device(tmp_path, model, optimizer):
  folder = write_movielens(tmp_path / "ml-100k")
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  proc = subprocess.run([sys.executable, "-c", SCRIPT, str(folder), model,
                         optimizer], capture_output=True, text=True, env=env,
                        cwd=REPO, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][0]
  out = json.loads(line[len("RESULT "):])
  assert out["devices"] == 8
  n_users, n_items, vocab_users, vocab_items = out["rows"]
  assert n_users % 2 == 0 and n_items % 2 == 0
  assert 0 <= n_users - vocab_users < 2 and 0 <= n_items - vocab_items < 2
  assert out["table_spec"] == "P('model', None)"
  assert out["table_shards"] == [n_users // 2]  # each device: half the rows
  assert out["moments_sharded"]
  for a, b in zip(out["one"], out["many"]):
    assert a == pytest.approx(b, rel=1e-4)


def test_mesh_errors():
  from jaxcf import sharding
  from jaxcf.errors import UserError
  with pytest.raises(UserError, match="needs 8 devices"):
    sharding.make_mesh("data:4,model:2")
  with pytest.raises(UserError, match="data:N,model:M"):
    sharding.make_mesh("batch:2")
  mesh = sharding.make_mesh("data:1,model:1")
  assert sharding.pad_rows(945, mesh) == 945
