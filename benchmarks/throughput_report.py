"""The throughput table: medians, spreads, and which ratios the noise decides.

`throughput.py` measures every (model, batch size) cell in rounds, the
contenders alternating within a round, so round k of jaxcf and round k of a
contender ran minutes apart on the same machine. A ratio is therefore taken
per round (jaxcf's round-k rate over the contender's round-k rate), and the
cell reports the median of those ratios with their range. A ratio is marked
unsettled (`?`) when that range is wider than its distance from 1.0x: the
rounds disagree by more than the gap the cell claims, so the cell says
nothing about who is faster.
"""

from __future__ import annotations

import statistics

SCAN = "jaxcf scan"
TORCHES = ("torch eager", "torch fused", "torch compile")


def spread(values: list[float]) -> float:
  """(max - min) / median of the values, a fraction (0.1 = 10%)."""
  return (max(values) - min(values)) / statistics.median(values)


def round_ratios(cell: dict, a: str, b: str) -> list[float]:
  """a's rate over b's rate, round by round (rounds where both ran)."""
  pairs = zip(cell.get(a, {}).get("runs", []), cell.get(b, {}).get("runs", []))
  return [x / y for x, y in pairs if x and y]


def ratio_summary(ratios: list[float]) -> dict | None:
  """Median, range and whether the range straddles or dwarfs 1.0x."""
  if not ratios:
    return None
  med = statistics.median(ratios)
  lo, hi = min(ratios), max(ratios)
  return {"median": med, "low": lo, "high": hi,
          "unsettled": (hi - lo) > abs(med - 1.0)}


def best_torch(cell: dict) -> str | None:
  """The PyTorch contender with the highest median rate in this cell."""
  rated = [(cell[c]["samples_per_s"], c) for c in TORCHES
           if cell.get(c, {}).get("samples_per_s")]
  return max(rated)[1] if rated else None


def cells(results: dict) -> dict:
  """{(model, bs): {contender: row}} from the results' rows."""
  out: dict = {}
  for r in results["rows"]:
    out.setdefault((r["model"], r["bs"]), {})[r["contender"]] = r
  return out


def ratios_of(cell: dict) -> dict:
  """The table's ratio columns for one cell, each a ratio_summary."""
  best = best_torch(cell)
  return {
      "scan / torch eager": ratio_summary(round_ratios(cell, SCAN,
                                                       "torch eager")),
      "scan / best torch": ratio_summary(round_ratios(cell, SCAN, best))
                           if best else None,
      "scan / fastai": ratio_summary(round_ratios(cell, SCAN, "fastai")),
      "8x vmap / scan": ratio_summary(round_ratios(cell, "jaxcf 8x vmap",
                                                   SCAN)),
  }


def behind(results: dict) -> list[str]:
  """Cells where jaxcf's scan is settled-slower than some contender."""
  found = []
  for (model, bs), cell in cells(results).items():
    for c in (*TORCHES, "fastai"):
      s = ratio_summary(round_ratios(cell, SCAN, c))
      if s and s["median"] < 1.0 and not s["unsettled"]:
        found.append(f"{model} bs {bs}: jaxcf scan {s['median']:.2f}x "
                     f"{c} ({s['low']:.2f}-{s['high']:.2f})")
  return found


def _rate(row: dict | None) -> str:
  if not row or not row.get("samples_per_s"):
    return "-"
  runs = [r for r in row["runs"] if r]
  text = f"{row['samples_per_s'] / 1e3:,.0f}k"
  return text + (f" ±{spread(runs) / 2:.0%}" if len(runs) > 1 else "")


def _ratio(s: dict | None) -> str:
  if not s:
    return "-"
  text = f"{s['median']:.2f}x ({s['low']:.2f}-{s['high']:.2f})"
  return text + (" ?" if s["unsettled"] else "")


def markdown(results: dict, contenders: tuple, target_mse: float) -> str:
  """The table README quotes, with memory and time-to-accuracy below."""
  table = cells(results)
  present = [c for c in contenders
             if any(c in cell for cell in table.values())]
  ratio_cols = ["scan / torch eager", "scan / best torch", "scan / fastai",
                "8x vmap / scan"]
  head = ["model", "bs", *present, *ratio_cols]
  lines = [] if not table else [
           f"Samples/s: median of {results['rounds']} alternating rounds "
           "± half their range. Ratios: median of the per-round ratios "
           "(range); `?` marks a ratio whose range is wider than its "
           "distance from 1.0x (the rounds do not decide it).", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for (model, bs), cell in table.items():
    ratios = ratios_of(cell)
    best = best_torch(cell)
    cols = [_ratio(ratios[k]) for k in ratio_cols]
    if best and ratios["scan / best torch"]:
      cols[1] += f" [{best.split()[1]}]"
    lines.append("| " + " | ".join(
        [model, str(bs), *(_rate(cell.get(c)) for c in present), *cols])
                 + " |")
  slower = behind(results)
  if table:
    lines += ["", "Settled cells where jaxcf scan is slower than a "
              "contender: " + ("; ".join(slower) if slower else "none")]
  mem: dict = {}
  for r in results["rows"]:
    if r.get("peak_rss_mb"):
      mem.setdefault(r["contender"], []).append(r["peak_rss_mb"])
  if mem:
    lines += ["", "Peak resident memory of a process (MB, max over its "
              "runs): " + ", ".join(f"{c} {max(v):,.0f}"
                                    for c, v in mem.items())]
  tta = results.get("time_to_accuracy")
  if tta:
    lines += ["", f"| time to valid MSE <= {target_mse} (book recipe, "
              "seed-42 split) | seconds from process start, median (range) "
              "| epoch | valid MSE then | final valid MSE |",
              "|---|---|---|---|---|"]
    for name, runs in tta.items():
      ok = [r for r in runs if "seconds_to_target" in r]
      if not ok:
        lines.append(f"| {name} | not reached | - | - | - |")
        continue
      secs = [r["seconds_to_target"] for r in ok]
      first = ok[0]
      lines.append(
          f"| {name} | {statistics.median(secs):.1f} ({min(secs):.1f}-"
          f"{max(secs):.1f}) | {first.get('epoch', '-')} | "
          f"{first.get('valid_loss', float('nan')):.4f} | "
          f"{first.get('final_valid_loss', float('nan')):.4f} |")
    base = results.get("baseline")
    if base:
      lines += ["", f"[baseline]: the checkout in {base['dir']} "
                f"({base['commit']}; this one {base.get('this commit', '?')}"
                "), its rows alternating with this one's, which goes first "
                "in odd rounds. Paired by round, this one minus the "
                "baseline:"]
      for name in [n for n in tta if n + " [baseline]" in tta]:
        diffs = [a["seconds_to_target"] - b["seconds_to_target"]
                 for a, b in zip(tta[name], tta[name + " [baseline]"])
                 if "seconds_to_target" in a and "seconds_to_target" in b]
        if diffs:
          lines.append(
              f"- {name}: median {statistics.median(diffs):+.2f} s (range "
              f"{min(diffs):+.2f} to {max(diffs):+.2f}), faster in "
              f"{sum(d < 0 for d in diffs)} of {len(diffs)} rounds")
  return "\n".join(lines)


def chart(results: dict, contenders: tuple, path: str) -> None:
  """Samples/s against batch size per model, log-log, one line each."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  models = list(dict.fromkeys(r["model"] for r in results["rows"]))
  fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.2))
  axes = axes if len(models) > 1 else [axes]
  for ax, model in zip(axes, models):
    for c in contenders:
      pts = sorted((r["bs"], r["samples_per_s"], min(x for x in r["runs"] if x),
                    max(x for x in r["runs"] if x))
                   for r in results["rows"]
                   if r["model"] == model and r["contender"] == c
                   and r.get("samples_per_s"))
      if pts:
        bs, med, lo, hi = zip(*pts)
        ax.errorbar(bs, med, yerr=[[m - l for m, l in zip(med, lo)],
                                   [h - m for m, h in zip(med, hi)]],
                    fmt="-o", capsize=3, label=c,
                    lw=2.5 if "jaxcf" in c else 1.2)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("training samples / s (median, range)")
    cores = "1 core" if results["cores"] == "1" else "all cores"
    ax.set_title(f"{model} ({results['device']['kind']}, {cores})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
