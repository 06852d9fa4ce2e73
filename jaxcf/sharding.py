"""Training over a mesh of devices with JAX's own SPMD partitioner.

`--mesh=data:4,model:2` arranges the devices in a 2-D mesh. Each batch is
split over the 'data' axis; each user/item table — and its Adam moments —
is split by rows over the 'model' axis; everything else is replicated. The
compiled epoch is the very same `train_epoch`: `jax.jit` with these
shardings lets XLA insert the gathers and reductions. With one device
(`data:1,model:1`) it is the plain single-device run.

Tables are split evenly, so their rows are padded to a multiple of the
'model' axis (the extra rows are never indexed); a sharded run therefore
equals a single-device run with the same padding (`pad_rows`).
"""

from __future__ import annotations

import math

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from jaxcf.errors import UserError

AXES = ("data", "model")


def make_mesh(spec: str, devices=None) -> Mesh:
  """'data:4,model:2' -> a Mesh over the first 8 devices."""
  devices = list(devices or jax.devices())
  sizes = {}
  for part in filter(None, (p.strip() for p in spec.split(","))):
    name, _, size = part.partition(":")
    if name not in AXES or not size.isdigit() or int(size) < 1:
      raise UserError(f"--mesh={spec}: write it as data:N,model:M (axes "
                      f"{', '.join(AXES)}, sizes >= 1)")
    sizes[name] = int(size)
  shape = tuple(sizes.get(a, 1) for a in AXES)
  if math.prod(shape) != len(devices):
    raise UserError(f"--mesh={spec} needs {math.prod(shape)} devices; this "
                    f"process sees {len(devices)} ({devices[0].platform}). "
                    "On a CPU, XLA_FLAGS=--xla_force_host_platform_device_"
                    f"count={math.prod(shape)} makes that many")
  return Mesh(np.array(devices).reshape(shape), AXES)


def pad_rows(n: int, mesh: Mesh | None) -> int:
  """Table rows for n ids: a multiple of the mesh's 'model' axis."""
  if mesh is None:
    return n
  m = mesh.shape["model"]
  return -(-n // m) * m


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches [steps, batch] split over 'data' along the batch axis."""
  return NamedSharding(mesh, P(None, "data"))


def state_sharding(state, mesh: Mesh, table_rows: tuple[int, ...]):
  """Shardings for every leaf of a train state: tables (leaves whose first
  dimension is one of `table_rows`) by rows over 'model', the rest
  replicated."""

  def rule(leaf):
    shape = getattr(leaf, "shape", ())
    if len(shape) >= 1 and shape[0] in table_rows:
      return NamedSharding(mesh, P("model", *([None] * (len(shape) - 1))))
    return replicated(mesh)

  return jax.tree.map(rule, state)


def check_batch(batch_size: int, mesh: Mesh) -> None:
  if batch_size % mesh.shape["data"]:
    raise UserError(f"--bs={batch_size} must be a multiple of the mesh's "
                    f"data axis ({mesh.shape['data']})")
