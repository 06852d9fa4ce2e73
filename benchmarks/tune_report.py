"""The tables of benchmarks/tune.py: test MSE/RMSE per split and their
mean, from its OUT.json results (also joined across runs: --merge)."""

from __future__ import annotations

import json

import numpy as np

COLUMNS = [("book_single", "book recipe (mean of 8 seeds)"),
           ("tuned_single", "tuned dot_bias (mean of 16 seeds)"),
           ("tuned_single_seed0", "tuned dot_bias, seed 0"),
           ("nn_single", "tuned side_nn (mean of 4 seeds)"),
           ("autorec_ensemble", "AutoRec, 1 layer, 30% input dropout x 4 seeds"),
           ("autorec_deep_ensemble", "AutoRec, 2 layers x 4 seeds"),
           ("bpmf_ensemble", "BPMF x 4 chains"),
           ("dot_ensemble", "ensemble: tuned dot_bias x 16 seeds"),
           ("ensemble", "ensemble: + 16 bagged dot_bias + 4 side_nn")]


def markdown(results: dict[str, dict], rmse: bool) -> str:
  unit = "RMSE" if rmse else "MSE"
  f = np.sqrt if rmse else (lambda v: v)
  names = list(results)
  lines = [f"| test {unit} | " + " | ".join(names) + " | mean |",
           "|---|" + "---|" * (len(names) + 1)]
  for key, label in COLUMNS:
    if any(key not in results[n] for n in names):
      continue
    if key == "ensemble" and "autorec_ensemble" in results[names[0]]:
      label += " + both AutoRec families"
    if key == "ensemble" and "bpmf_ensemble" in results[names[0]]:
      label += " + BPMF"
    values = [f(results[n][key]) for n in names]
    lines.append(f"| {label} | " + " | ".join(f"{v:.4f}" for v in values) +
                 f" | **{np.mean(values):.4f}** |")
  return "\n".join(lines)


def _families(result: dict) -> set[str]:
  return {key for key, _ in COLUMNS if key in result}


def merged(paths: list[str]) -> dict[str, dict]:
  """The splits of several OUT.json files, in order. Raises ValueError
  (one line) for a file that cannot be read or is not a tune.py result, a
  split in two files, splits whose runs mixed other families (made
  with other flags: --autorec, --bpmf), or splits of different inner
  carve-outs (--inner_seed, as chosen.inner_seed; older results do not
  record theirs, so merge only runs of one command line but --splits and
  --out)."""
  results = {}
  for path in paths:
    try:
      with open(path) as f:
        runs = json.load(f)
    except (OSError, ValueError) as e:
      raise ValueError(f"--merge: cannot read {path} ({e}); pass the .json "
                       "a tune.py --out run wrote") from None
    if not runs or not isinstance(runs, dict) or not all(
        isinstance(r, dict) and isinstance(r.get("chosen"), dict)
        and "ensemble" in r for r in runs.values()):
      raise ValueError(f"--merge: {path} holds no tune.py results (a dict "
                       "of splits, each with 'chosen' and 'ensemble')")
    for name, result in runs.items():
      if name in results:
        raise ValueError(f"--merge: split {name} is in two files (again in "
                         f"{path}); pass each split once")
      first = next(iter(results.items()), None)
      if first and _families(result) != _families(first[1]):
        raise ValueError(
            f"--merge: split {name} ({path}) mixes other families than "
            f"{first[0]} ({', '.join(sorted(_families(result) ^ _families(first[1])))}"
            " in one only); merge runs made with the same flags")
      results[name] = result
  seeds = {r["chosen"]["inner_seed"]: name for name, r in results.items()
           if "inner_seed" in r["chosen"]}
  if len(seeds) > 1:
    raise ValueError("--merge: splits of different inner carve-outs ("
                     + ", ".join(f"{n}: --inner_seed={s}"
                                 for s, n in sorted(seeds.items()))
                     + "); merge runs made with the same flags")
  return results
