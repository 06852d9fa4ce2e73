"""benchmarks/tune.py --merge: runs of different splits join into one
table (the five-fold table from a u1 run and a u2..u5 run)."""

import json

import pytest

from benchmarks import tune_report as tune


def _run(tmp_path, name, splits, chosen=None, **extra):
  path = tmp_path / f"{name}.json"
  path.write_text(json.dumps({s: {"chosen": chosen or {},
                                  "tuned_single": 0.8 + i / 100,
                                  "ensemble": 0.78 + i / 100, **extra}
                              for i, s in enumerate(splits)}))
  return str(path)


def test_merge_joins_splits_in_order_and_tables_their_mean(tmp_path):
  paths = [_run(tmp_path, "a", ["u1"]), _run(tmp_path, "b", ["u2", "u3"])]
  results = tune.merged(paths)
  assert list(results) == ["u1", "u2", "u3"]
  table = tune.markdown(results, rmse=False)
  row = next(r for r in table.splitlines() if r.startswith("| tuned"))
  # u1 0.80 (its file's first split), u2 0.80, u3 0.81: mean 0.8033.
  assert row.endswith("| 0.8000 | 0.8000 | 0.8100 | **0.8033** |")


def test_merge_refuses_a_split_twice_and_unreadable_files(tmp_path):
  a, b = _run(tmp_path, "a", ["u1"]), _run(tmp_path, "b", ["u1"])
  with pytest.raises(ValueError, match="split u1 is in two files"):
    tune.merged([a, b])
  (tmp_path / "bad.json").write_text("{")
  with pytest.raises(ValueError, match="cannot read .*bad.json"):
    tune.merged([a, str(tmp_path / "bad.json")])
  with pytest.raises(ValueError, match="cannot read .*missing.json"):
    tune.merged([str(tmp_path / "missing.json")])


def test_merge_refuses_other_families_and_other_files(tmp_path):
  a = _run(tmp_path, "a", ["u1"], bpmf_ensemble=0.77)
  b = _run(tmp_path, "b", ["u2"])
  with pytest.raises(ValueError, match="u2 .* mixes other families than "
                     "u1 .bpmf_ensemble in one only"):
    tune.merged([a, b])
  for text in ("[]", "{}", '{"u1": {"ensemble": 0.8}}'):
    (tmp_path / "other.json").write_text(text)
    with pytest.raises(ValueError, match="holds no tune.py results"):
      tune.merged([str(tmp_path / "other.json")])


def test_merge_refuses_splits_of_different_inner_carve_outs(tmp_path):
  a = _run(tmp_path, "a", ["u1"], chosen={"inner_seed": 0})
  b = _run(tmp_path, "b", ["u2"], chosen={"inner_seed": 1})
  with pytest.raises(ValueError, match="different inner carve-outs "
                     r"\(u1: --inner_seed=0, u2: --inner_seed=1\)"):
    tune.merged([a, b])
  old = _run(tmp_path, "old", ["u3"])  # written before seeds were recorded
  assert list(tune.merged([a, old])) == ["u1", "u3"]
