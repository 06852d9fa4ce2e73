"""train.py's sweeps and ensembles as a user runs them: vmapped replicas,
their metrics, ranking, ensemble and plot in the workdir. In-process
(`tests.conftest.train_cli`: the real flag parsing, the real run)."""

import json

import numpy as np
import pytest

import jaxcf
from tests.conftest import train_cli


@pytest.fixture(autouse=True)
def _no_shared_data(monkeypatch):
  monkeypatch.delenv("JAXCF_DATA", raising=False)


def test_autorec_ranks_ensembles_and_saves_the_ensemble(tiny_ml, tmp_path,
                                                        capsys):
  workdir = tmp_path / "autorec"
  assert train_cli(f"--data_dir={tiny_ml}", "--model=autorec", "--layers=16",
                   "--epochs=40", "--lr=1e-2", "--wd=1", "--seed=0,1",
                   "--ensemble", f"--workdir={workdir}") == 0
  out = capsys.readouterr().out
  assert "sweep of 2 replicas over seed, 40 full-batch epochs" in out
  assert "ensemble of 2 replicas: valid MSE" in out
  summary = json.loads((workdir / "sweep.json").read_text())
  losses = [r["valid_loss"] for r in summary["ranking"]]
  assert losses == sorted(losses) and len(losses) == 2
  assert {r["seed"] for r in summary["ranking"]} == {0, 1}
  # The mean prediction's MSE is at most the mean of the members' MSEs.
  assert summary["ensemble"]["valid_loss"] <= sum(losses) / 2 + 1e-6
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text(
  ).splitlines()]
  assert len(rows) == 2 * 10 and rows[-1]["epoch"] == 39
  best = summary["ranking"][0]
  final = [r for r in rows if r["replica"] == best["replica"]][-1]
  assert final["valid_loss"] == best["valid_loss"]
  # model/ is the ensemble, in the one format jaxcf.load reads.
  model = jaxcf.load(str(workdir))
  assert [s.model for s in model.specs] == ["autorec", "autorec"]
  assert model.info["ensemble"]["valid_loss"] == pytest.approx(
      summary["ensemble"]["valid_loss"])
  users = model.users.decode(np.asarray(model.valid.users))
  items = model.items.decode(np.asarray(model.valid.items))
  keep = model.user_trained[np.asarray(model.valid.users)] & (
      model.item_counts[np.asarray(model.valid.items)] > 0)
  preds = model.predict(users[keep], items[keep])
  truth = np.asarray(model.valid.ratings)[keep]
  assert np.isfinite(preds).all() and preds.shape == truth.shape
  assert len(model.recommend(users[0], k=3)) == 3


def test_sweep_writes_replica_metrics_and_ranking(tiny_ml, tmp_path, capsys):
  workdir = tmp_path / "sweep"
  assert train_cli(f"--data_dir={tiny_ml}", "--epochs=2", "--bs=16",
                   "--lr=1e-2,3e-2", "--wd=0.01,0.1", "--seed=3,4",
                   "--ensemble", "--ensemble_top=3", "--chunk=3",
                   f"--workdir={workdir}") == 0
  out = capsys.readouterr().out
  assert "sweep of 8 replicas over lr, wd, seed" in out
  assert "chunk 3 of 3" in out
  assert "ensemble of 3 replicas" in out
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
  assert len(jaxcf.load(str(workdir)).specs) == 3  # the ensemble


def test_sweep_over_shapes_and_plot(tiny_ml, tmp_path, capsys):
  pytest.importorskip("matplotlib")
  workdir = tmp_path / "shapes"
  assert train_cli(f"--data_dir={tiny_ml}", "--epochs=1", "--bs=16",
                   "--model=dot_bias,embedding_nn", "--n_factors=4,8",
                   "--layers=8;16,8", "--y_range=0,5.5;0.5,5.25",
                   f"--workdir={workdir}", "--plot") == 0
  out = capsys.readouterr().out
  # dot_bias: 2 widths; embedding_nn: 2 layer sets; each x 2 y_ranges.
  assert out.count("compiled ") == 4
  assert "sweep of 8 replicas" in out
  assert (workdir / "sweep.png").stat().st_size > 10_000
  summary = json.loads((workdir / "sweep.json").read_text())
  by_model = {}
  for row in summary["ranking"]:
    by_model.setdefault(row["model"], []).append(row)
  # Settings a model does not read are null, never duplicated replicas.
  assert {r["n_factors"] for r in by_model["embedding_nn"]} == {None}
  assert {tuple(r["layers"]) for r in by_model["embedding_nn"]} == {
      (8,), (16, 8)}
  assert {r["layers"] for r in by_model["dot_bias"]} == {None}
