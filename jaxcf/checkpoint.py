"""Saving and restoring array pytrees with JSON metadata, via orbax.

One checkpoint is one directory: orbax writes it under a temporary name and
renames it when complete, so a crash never leaves a half-written checkpoint
where a reader would take it for a whole one. Damage after the write (a
flipped bit, a truncated file) is caught by checksums: the metadata records
the CRC-32 of every array's bytes and of the metadata itself, and reading
verifies them (orbax's own format checks neither).
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import os
import sys
import threading
import time
from typing import Any
import zlib

import jax
import numpy as np

from jaxcf.errors import UserError, write_error


class _Orbax:
  """orbax.checkpoint, imported when a checkpoint is first written or read:
  its import takes ~0.2 s, which a run without a workdir need not pay."""

  def __getattr__(self, name: str):
    import orbax.checkpoint  # pylint: disable=g-import-not-at-top
    return getattr(orbax.checkpoint, name)


ocp = _Orbax()


def import_in_background() -> None:
  """Starts importing orbax on a daemon thread, for a caller that will save
  soon and whose main thread meanwhile waits on the device (training): the
  import's ~0.3 s then overlaps the wait instead of delaying the save. A
  later `ocp.X` joins it through Python's import lock."""
  if "orbax.checkpoint" not in sys.modules:
    threading.Thread(target=lambda: ocp.Checkpointer, daemon=True,
                     name="jaxcf-import-orbax").start()


CHECKSUMS = "checksums"
_META = "<meta>"  # the metadata's own entry among the checksums


@contextlib.contextmanager
def quiet(reported: bool = False):
  """Holds back what orbax and tensorstore print while they fail (log lines
  and the tracebacks of their threads, dozens for one full disk): the
  caller reports the failure in one line. Shown after all if the failure
  is not one the caller turns into a message (a UserError, a write error,
  or anything when `reported`)."""
  loggers = [logging.getLogger(n) for n in ("absl", "asyncio")]
  levels = [logger.level for logger in loggers]
  stderr, hooks = sys.stderr, (threading.excepthook, sys.unraisablehook)
  held = io.StringIO()
  for logger in loggers:
    logger.setLevel(logging.CRITICAL)
  sys.stderr = held
  threading.excepthook = sys.unraisablehook = lambda *_: None
  before = set(threading.enumerate())
  try:
    yield
  except Exception as e:
    _settle(before, held)
    gc.collect()  # the failed coroutines complain when collected: now
    if not (reported or isinstance(e, UserError) or write_error(e)):
      stderr.write(held.getvalue())
    raise
  finally:
    for logger, level in zip(loggers, levels):
      logger.setLevel(level)
    sys.stderr = stderr
    threading.excepthook, sys.unraisablehook = hooks


def _settle(before: set, held: io.StringIO, limit: float = 5.0) -> None:
  """Waits (at most `limit` s) for a failed save's helper threads to end
  and its native threads to stop printing, so nothing of it comes later."""
  deadline = time.monotonic() + limit
  for thread in set(threading.enumerate()) - before:
    thread.join(timeout=max(0.0, deadline - time.monotonic()))
  size = -1
  while size != len(held.getvalue()) and time.monotonic() < deadline:
    size = len(held.getvalue())
    time.sleep(0.25)


def _crc(data) -> str:
  return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}"


def checksums(arrays: Any, meta: dict) -> dict[str, str]:
  """CRC-32 of each array's bytes (keyed by its path in the tree) and of
  `meta` as canonical JSON. Arrays this process cannot see whole (shards
  of another host) are left out."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(arrays)[0]:
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      continue
    data = np.ascontiguousarray(np.asarray(leaf))
    out[jax.tree_util.keystr(path)] = _crc(data.view(np.uint8).reshape(-1))
  out[_META] = _crc(json.dumps(meta, sort_keys=True).encode())
  return out


def with_checksums(arrays: Any, meta: dict) -> dict:
  """meta plus the checksums of itself and `arrays` (what `save` writes)."""
  return {**meta, CHECKSUMS: checksums(arrays, meta)}


def verify_meta(meta: dict, where: str) -> tuple[dict, dict | None]:
  """(meta without its checksums, the checksums), or a UserError if meta was
  altered (a checkpoint written before checksums passes unverified)."""
  meta = dict(meta)
  expected = meta.pop(CHECKSUMS, None)
  if expected is not None and expected.get(_META) != _crc(
      json.dumps(meta, sort_keys=True).encode()):
    raise UserError(f"{where} is damaged: its metadata does not match the "
                    "checksum saved with it")
  return meta, expected


def verify_arrays(arrays: Any, expected: dict | None, where: str) -> None:
  """UserError naming the first array whose bytes differ from its saved
  checksum (nothing to check without checksums)."""
  if not expected:
    return
  actual = checksums(arrays, {})
  for key, value in actual.items():
    if key != _META and key in expected and expected[key] != value:
      raise UserError(f"{where} is damaged: the bytes of array {key} do not "
                      "match the checksum saved with them")


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
  with quiet(), _checkpointer() as ckpt:
    ckpt.save(path, ocp.args.Composite(
        arrays=ocp.args.StandardSave(arrays),
        meta=ocp.args.JsonSave(with_checksums(arrays, meta))), force=True)


def read_meta(path: str) -> dict:
  """The JSON metadata of a checkpoint (verified against its checksum, which
  stays in it for `restore`), or a UserError saying what is wrong."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise UserError(f"no saved model at {path}; train with --workdir first")
  try:
    with quiet(reported=True), _checkpointer() as ckpt:
      meta = ckpt.restore(path, ocp.args.Composite(
          meta=ocp.args.JsonRestore()))["meta"]
  except Exception as e:  # orbax raises many kinds for a damaged directory
    raise UserError(f"{path} cannot be read: it is damaged or not a jaxcf "
                    f"checkpoint ({type(e).__name__}: {str(e)[:120]})"
                    ) from None
  if not isinstance(meta, dict):
    raise UserError(f"{path} cannot be read: it is damaged or not a jaxcf "
                    "checkpoint (its metadata is not a JSON object)")
  verify_meta(meta, path)
  return meta


def restore(path: str, like: Any, device=None,
            expected: dict | None = None) -> Any:
  """Reads the arrays of a checkpoint, shaped like `like`, onto `device`.

  Args:
    path: the checkpoint directory.
    like: a pytree of arrays or ShapeDtypeStructs with the expected shapes.
    device: where the arrays go (default: the default device), whatever
      device wrote them.
    expected: the checksums from its metadata (`read_meta(path)
      ["checksums"]`); the arrays must match them.
  """
  path = os.path.abspath(path)
  sharding = jax.sharding.SingleDeviceSharding(device or jax.local_devices()[0])
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      like)
  try:
    with quiet(reported=True), _checkpointer() as ckpt:
      arrays = ckpt.restore(path, ocp.args.Composite(
          arrays=ocp.args.StandardRestore(abstract)))["arrays"]
  except Exception as e:  # a shape mismatch, a missing or damaged file
    raise UserError(f"{path}: the saved arrays cannot be read: they are "
                    "damaged or not those of the model its metadata "
                    f"describes ({type(e).__name__}: {str(e)[:120]})"
                    ) from None
  verify_arrays(arrays, expected, path)
  return arrays
