"""jaxcf: collaborative filtering the JAX way (fastai's chapter 8, exact).

Modules, in the order data flows: io, movielens, synthetic -> data,
datasets, features -> models (one file per family) -> optim, sparse ->
steps -> loop, hooks <- training, sweep, fullbatch -> config, experiment ->
artifact, trained, foldin -> inspect, plots. See README.md's Architecture.
"""

import os

__version__ = "0.1.0"

# XLA's concurrency-optimised CPU scheduler deadlocks some programs (jaxlib
# 0.10.2: bpmf's Gibbs sweep at ML-100k size). Turned off here, before JAX
# starts its backends; the other programs run as fast without it (the book
# run: 356k vs 356-391k samples/s, three runs each). `gibbs` checks that it
# took effect.
CPU_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def _backends_started() -> bool:
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    return xla_bridge.backends_are_initialized()
  except (ImportError, AttributeError):
    return False


CPU_SCHEDULER_OFF = (CPU_SCHEDULER_FLAG in os.environ.get("XLA_FLAGS", "")
                     or not _backends_started())

# XLA's CPU backend hands matrix products, elementwise ops and reductions to
# YNNPACK by default (jaxlib 0.10); a factor model's row-wise dot products
# (a multiply and a sum) then run as separate library calls instead of one
# XLA fusion. Handing it the matrix products only is 8-12% faster for
# dot_bias at bs 1024-8192 and 2-4% for embedding_nn, no slower at bs 64
# (benchmarks/throughput.py workers, alternating runs on one core). The flag
# exists from jaxlib 0.10 on; an older jaxlib would abort on it.
YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type=individual_dot"


def _jaxlib_at_least(version: tuple[int, ...]) -> bool:
  try:
    from jaxlib import version as jaxlib_version  # pylint: disable=g-import-not-at-top
    have = jaxlib_version.__version__.split(".")[:len(version)]
    return tuple(int("".join(c for c in p if c.isdigit()) or 0)
                 for p in have) >= version
  except (ImportError, AttributeError, ValueError):
    return False


def _add_xla_flags() -> None:
  """Adds jaxcf's CPU flags to XLA_FLAGS unless the user set them."""
  flags = os.environ.get("XLA_FLAGS", "")
  wanted = [CPU_SCHEDULER_FLAG]
  if _jaxlib_at_least((0, 10)):
    wanted.append(YNN_FLAG)
  for flag in wanted:
    if flag.split("=")[0] not in flags:
      flags = " ".join(filter(None, [flags, flag]))
  os.environ["XLA_FLAGS"] = flags


_add_xla_flags()


def load(path: str, device=None):
  """The model `train.py --workdir=path` saved, as a `trained.TrainedModel`."""
  from jaxcf import trained  # pylint: disable=g-import-not-at-top
  return trained.load(path, device)
