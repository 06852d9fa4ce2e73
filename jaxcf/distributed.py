"""Several processes (hosts) training one model: `jax.distributed`.

Every process runs the same `train.py` command with its own
`--process_id`; `initialize` joins them through the coordinator, after
which `jax.devices()` lists the devices of all of them and a `--mesh` over
those devices trains one model (see `jaxcf.sharding`): each process keeps
its own share of the training rows on its devices, XLA's collectives (NCCL
on GPUs, ICI on TPUs, Gloo on CPUs) combine the gradients. Only process 0
prints and writes the run's files.
"""

from __future__ import annotations

import jax
from jax.experimental import multihost_utils
import numpy as np

from jaxcf.errors import UserError


def initialize(coordinator_address: str | None, num_processes: int,
               process_id: int) -> None:
  """Joins this process to the others (nothing to do for one process).

  Must run before anything touches a JAX device.
  """
  if num_processes < 1:
    raise UserError(f"--num_processes={num_processes} must be at least 1")
  if num_processes == 1:
    return
  if not coordinator_address:
    raise UserError("--num_processes > 1 needs --coordinator_address="
                    "HOST:PORT (process 0's address, the same for all)")
  if not 0 <= process_id < num_processes:
    raise UserError(f"--process_id={process_id} must lie in "
                    f"[0, {num_processes})")
  # CPUs need a collectives library for cross-process reductions.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               initialization_timeout=120)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"could not join the {num_processes} processes at "
                    f"{coordinator_address}: {e}") from None


def is_leader() -> bool:
  """Whether this process writes the run's output (process 0)."""
  return jax.process_index() == 0


def to_host(tree):
  """Every leaf as a numpy array holding the whole global value, in every
  process (sharded leaves are gathered across processes)."""

  def get(leaf):
    if not isinstance(leaf, jax.Array):
      return leaf
    if leaf.is_fully_addressable or leaf.is_fully_replicated:
      return np.asarray(leaf)
    return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))

  return jax.tree.map(get, tree)


def barrier(name: str) -> None:
  """Waits until every process gets here (nothing with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
  """Whether `flag` is true in any process (every process must call it at
  the same point: it is a collective)."""
  if jax.process_count() == 1:
    return flag
  flags = multihost_utils.process_allgather(np.asarray([flag], np.int32))
  return bool(np.asarray(flags).any())


def check_same(text: str, what: str) -> None:
  """Refuses to go on unless every process was given the same `text`."""
  if jax.process_count() == 1:
    return
  data = np.frombuffer(text.encode()[:4096].ljust(4096, b"\0"), np.uint8)
  every = np.asarray(multihost_utils.process_allgather(data[None]))
  if not (every == data).all():
    raise UserError(f"every process needs the same {what} (a folder they "
                    f"all see); process {jax.process_index()} has {text}")


def on_leader(fn):
  """fn() on process 0 (None elsewhere); a UserError it raises is raised in
  every process (a collective: every process must call it)."""
  result, error = None, ""
  if is_leader():
    try:
      result = fn()
    except UserError as e:
      error = str(e)
  if any_process(bool(error)):
    raise UserError(error or "process 0 refused the run (see its output)")
  return result
