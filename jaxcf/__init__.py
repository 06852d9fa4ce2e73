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
if CPU_SCHEDULER_FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = " ".join(
      filter(None, [os.environ.get("XLA_FLAGS", ""), CPU_SCHEDULER_FLAG]))


def load(path: str, device=None):
  """The model `train.py --workdir=path` saved, as a `trained.TrainedModel`."""
  from jaxcf import trained  # pylint: disable=g-import-not-at-top
  return trained.load(path, device)
