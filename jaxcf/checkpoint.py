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


def save(path: str, arrays: Any, meta: dict) -> None:
  """Writes `arrays` (a pytree of arrays) and `meta` (JSON) to `path`.

  An existing checkpoint at `path` is replaced.
  """
  path = os.path.abspath(path)
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckpt:
    ckpt.save(path, ocp.args.Composite(arrays=ocp.args.StandardSave(arrays),
                                       meta=ocp.args.JsonSave(meta)),
              force=True)


def read_meta(path: str) -> dict:
  """The JSON metadata of a checkpoint, or a UserError saying what is wrong."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise UserError(f"no saved model at {path}; train with --workdir first")
  try:
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckpt:
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
  sharding = jax.sharding.SingleDeviceSharding(device or jax.devices()[0])
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      like)
  try:
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckpt:
      return ckpt.restore(path, ocp.args.Composite(
          arrays=ocp.args.StandardRestore(abstract)))["arrays"]
  except Exception as e:  # a shape mismatch, a missing or damaged file
    raise UserError(f"{path}: the saved arrays do not match the model its "
                    f"metadata describes ({type(e).__name__}: "
                    f"{str(e)[:120]})") from None
