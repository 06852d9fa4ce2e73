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


def put(tree, shardings):
  """`jax.device_put` onto shardings that may span other processes' devices:
  from host values, which every process holds alike (PRNG keys by their
  key data)."""

  def one(leaf, spec):
    if leaf is None:
      return None
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(
        leaf.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(
          jax.device_put(np.asarray(jax.random.key_data(leaf)), spec),
          impl=jax.random.key_impl(leaf))
    return jax.device_put(np.asarray(leaf), spec)

  if isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(lambda leaf: one(leaf, shardings), tree)
  return jax.tree.map(one, tree, shardings)


def check_batch(batch_size: int, mesh: Mesh) -> None:
  if batch_size % mesh.shape["data"]:
    raise UserError(f"--bs={batch_size} must be a multiple of the mesh's "
                    f"data axis ({mesh.shape['data']})")


# Data-parallel input: each 'data' shard keeps its own rows ----------------
#
# With several processes no process should hold every training row on its
# devices. `shard_rows` deals the rows out round-robin (row r to shard
# r % D, so each shard sees all of the file), `shard_batches` shuffles each
# shard's rows on its own, and `local_take` gathers a batch from the rows
# of the shard it runs on (`jax.shard_map`), so no step moves ratings
# between devices. The data order therefore differs from a single-device
# run's; one process with D devices and D processes with one device each
# train identically.


def shard_rows(rows, mesh: Mesh):
  """Training ratings (host or device arrays [n]) as global arrays
  [D * (n // D)] split over 'data': shard d holds rows d, d + D, d + 2D, ...

  Each process builds only the shards of its own devices. The last n % D
  rows (fewer than D) are left out; `shard_batches` says so.
  """
  d_size = mesh.shape["data"]
  spec = NamedSharding(mesh, P("data"))

  def put(column):
    if column is None:
      return None
    host = np.asarray(column)
    local = host.shape[0] // d_size

    def block(index):  # shard-major: position d * local + k is row d + k D
      start, stop, _ = index[0].indices(d_size * local)
      position = np.arange(start, stop)
      return host[(position % local) * d_size + position // local]

    return jax.make_array_from_callback((d_size * local,), spec, block)

  return type(rows)(*(put(c) for c in rows))


def shard_batches(epoch: int, n_local: int, mesh: Mesh, batch_size: int,
                  draw) -> np.ndarray:
  """One epoch's batches [steps, batch_size]: columns d * b .. (d + 1) * b
  (b = batch_size / D) are shard d's own rows, as indices into its
  n_local rows, drawn by `draw(d, epoch, n_local, b)` (each shard from its
  own key: see `placement.place`)."""
  d_size = mesh.shape["data"]
  b = batch_size // d_size
  return np.concatenate([draw(d, epoch, n_local, b) for d in range(d_size)],
                        axis=1)


def local_take(mesh: Mesh):
  """take(data, rows): rows [batch] of the data shard each device holds."""
  return jax.shard_map(lambda data, rows: data.take(rows), mesh=mesh,
                       in_specs=(P("data"), P("data")), out_specs=P("data"))
