"""Where a run's arrays live: the memory check, the device mesh, data
shards and huge pages.

`place` puts a single run's state and data on its devices: with a mesh,
the tables (and their optimiser state) split by rows over 'model' and
batches over 'data' (`jaxcf.sharding`); with data shards (several
processes, or --shard_data) each 'data' shard keeps and shuffles its own
training rows; on the CPU, big arrays on 2 MiB pages. It returns the epoch
function and the data order that go with that placement.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import flax.linen as nn
import jax

from jaxcf import hugepages, keys, models, sharding, steps
from jaxcf.data import CollabData
from jaxcf.errors import UserError


def train_bytes(model: nn.Module, data: CollabData, batch_size: int) -> int:
  """Device bytes one run needs, roughly: weights, Adam's two moments,
  gradients and updates (5 copies of the parameters, in their dtype), the
  ratings on the device and an epoch's batch indices."""
  del batch_size  # the batches are indices into the ratings, counted here
  rows = data.train.size + data.valid.size
  per_row = 4 * (3 + (data.train.times is not None))
  return 5 * models.param_bytes(model) + per_row * rows + 4 * data.train.size


def available_bytes(device=None) -> int:
  """Free memory of the device (its allocator's limit on accelerators, the
  host's available memory on the CPU)."""
  device = device or jax.local_devices()[0]
  try:
    return int(device.memory_stats()["bytes_limit"])
  except (AttributeError, KeyError, TypeError, NotImplementedError,
          jax.errors.JaxRuntimeError):
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_memory(model: nn.Module, data: CollabData, batch_size: int,
                 replicas: int = 1) -> None:
  """Refuses, with the numbers, a run that will not fit on the device."""
  need = replicas * train_bytes(model, data, batch_size)
  have = available_bytes()
  if need > have:
    raise UserError(
        f"training needs about {need / 2**30:.1f} GiB on the device "
        f"({models.count_params(model):,} parameters x 5 copies for "
        f"weights, Adam moments, gradients and updates, plus "
        f"{data.train.size + data.valid.size:,} ratings) but only "
        f"{have / 2**30:.1f} GiB is free; use a smaller --n_factors or "
        "--layers, --param_dtype=bfloat16 (half the bytes), --mesh to "
        "shard the tables over devices, fewer replicas (--chunk), or less "
        "data")


def data_shards(mesh, shard_data: bool) -> int | None:
  """How many data shards keep their own rows (None: one data order)."""
  if mesh is not None and (shard_data or jax.process_count() > 1):
    return mesh.shape["data"]
  return None


def steps_per_epoch(n: int, batch_size: int, shards: int | None) -> int:
  """Steps of an epoch: with D data shards, each draws bs / D rows a step
  from its own n // D rows."""
  count = ((n // shards) // (batch_size // shards) if shards
           else n // batch_size)
  if count == 0:
    raise UserError(f"--bs={batch_size} is larger than the {n} training "
                    "rows; use a smaller batch size")
  return count


@dataclasses.dataclass
class Placed:
  """A run's state and data on its devices, and what goes with them.

  order: epoch -> its batches' row indices, int32 [steps, batch] (host);
  to_device: host batches -> device; epoch_fn: `steps.train_epoch`, or its
  variant gathering each shard's rows locally; out_shardings for jit.
  """
  state: Any
  train: Any
  valid: Any
  order: Callable[[int], Any]
  to_device: Callable[[Any], Any]
  epoch_fn: Callable
  out_shardings: Any = None

  def put_state(self, state) -> None:
    """The state's values, where `place` was given only its shapes."""
    self.state = state
    hugepages.advise(state)


def place(state, data: CollabData, *, batch_size: int, sampling: str,
          order_key: jax.Array, epochs: int, mesh=None,
          shard_data: bool = False,
          log: Callable[[str], None] = lambda _: None) -> Placed:
  """Puts a single run's state and data on its devices (see module doc).
  The data order of each of `epochs` epochs comes from `order_key`.

  state: the values, or without a mesh their shapes (`jax.ShapeDtypeStruct`
  leaves: the epoch can be lowered from them), the values given later to
  `Placed.put_state`."""
  n = data.train.size
  seeds = steps.epoch_seeds(order_key, epochs)
  order = lambda epoch: steps.epoch_order(seeds[epoch], n, batch_size,
                                          sampling)
  placed = Placed(state, data.train, data.valid, order, jax.device_put,
                  steps.train_epoch)
  if mesh is not None:
    model = state.model
    shardings = sharding.state_sharding(state, mesh,
                                        (model.n_users, model.n_items))
    placed.state = sharding.put(state, shardings)
    placed.train, placed.valid = sharding.put((data.train, data.valid),
                                              sharding.replicated(mesh))
    placed.out_shardings = (shardings, sharding.replicated(mesh))
    placed.to_device = lambda rows: jax.device_put(rows,
                                             sharding.batch_sharding(mesh))
  shards = data_shards(mesh, shard_data)
  if shards:
    placed.train = sharding.shard_rows(data.train, mesh)
    shard_seeds = [steps.epoch_seeds(keys.fold_key(order_key, d), epochs)
                   for d in range(shards)]
    placed.order = lambda epoch: sharding.shard_batches(
        epoch, n // shards, mesh, batch_size,
        lambda d, e, n_local, b: steps.epoch_order(shard_seeds[d][e],
                                                   n_local, b, sampling))
    placed.epoch_fn = functools.partial(steps.train_epoch,
                                        take=sharding.local_take(mesh))
    log(f"{shards} data shards of {n // shards:,} training rows each, "
        f"{batch_size // shards} rows a step from each"
        + (f" ({n % shards} rows left over)" if n % shards else ""))
  hugepages.advise((placed.train, placed.state))  # random rows: fewer TLB misses
  return placed
