"""Saving and restoring array pytrees with JSON metadata, via orbax.

One checkpoint is one directory: orbax writes it under a temporary name and
renames it when complete, so a crash never leaves a half-written checkpoint
where a reader would take it for a whole one.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxcf.errors import UserError


def _checkpointer() -> ocp.Checkpointer:
  """An orbax checkpointer for this process alone: in a multi-process run
  only process 0 writes the model, and must not wait for the others."""
  me = jax.process_index()
  options = ocp.options.MultiprocessingOptions(primary_host=me,
                                               active_processes={me})
  handler = ocp.CompositeCheckpointHandler(
      composite_options=ocp.CompositeOptions(multiprocessing_options=options),
      arrays=ocp.StandardCheckpointHandler(multiprocessing_options=options),
      meta=ocp.JsonCheckpointHandler(multiprocessing_options=options))
  return ocp.Checkpointer(handler, multiprocessing_options=options)


def save(path: str, arrays: Any, meta: dict) -> None:
  """Writes `arrays` (a pytree of arrays) and `meta` (JSON) to `path`.

  An existing checkpoint at `path` is replaced.
  """
  path = os.path.abspath(path)
  if jax.process_count() > 1:  # orbax takes no process-local jax.Arrays there
    arrays = jax.device_get(arrays)
  with _checkpointer() as ckpt:
    ckpt.save(path, ocp.args.Composite(arrays=ocp.args.StandardSave(arrays),
                                       meta=ocp.args.JsonSave(meta)),
              force=True)


def read_meta(path: str) -> dict:
  """The JSON metadata of a checkpoint, or a UserError saying what is wrong."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise UserError(f"no saved model at {path}; train with --workdir first")
  try:
    with _checkpointer() as ckpt:
      return ckpt.restore(path, ocp.args.Composite(
          meta=ocp.args.JsonRestore()))["meta"]
  except Exception as e:  # orbax raises many kinds for a damaged directory
    raise UserError(f"{path} is not a readable jaxcf checkpoint "
                    f"({type(e).__name__}: {str(e)[:120]})") from None


def restore(path: str, like: Any, device=None) -> Any:
  """Reads the arrays of a checkpoint, shaped like `like`, onto `device`.

  Args:
    path: the checkpoint directory.
    like: a pytree of arrays or ShapeDtypeStructs with the expected shapes.
    device: where the arrays go (default: the default device), whatever
      device wrote them.
  """
  path = os.path.abspath(path)
  sharding = jax.sharding.SingleDeviceSharding(device or jax.local_devices()[0])
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      like)
  try:
    with _checkpointer() as ckpt:
      return ckpt.restore(path, ocp.args.Composite(
          arrays=ocp.args.StandardRestore(abstract)))["arrays"]
  except Exception as e:  # a shape mismatch, a missing or damaged file
    raise UserError(f"{path}: the saved arrays do not match the model its "
                    f"metadata describes ({type(e).__name__}: "
                    f"{str(e)[:120]})") from None
