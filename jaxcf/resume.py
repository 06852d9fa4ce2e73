"""Checkpoints of a whole training run, so a killed run continues exactly.

A checkpoint, taken at the end of an epoch (or of a chunk of its steps),
holds the full `TrainState`
(parameters, BatchNorm statistics, optimiser moments and step, the dropout
key) and the run's history. The data order needs no saving: epoch e's order
is a function of the seed and e. Resuming from a checkpoint and training
the remaining steps therefore gives bit-identical numbers on the same
machine. orbax writes each checkpoint under a temporary name and renames it
when complete, and keeps the last few.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax

from jaxcf import checkpoint, distributed
from jaxcf.checkpoint import ocp
from jaxcf.errors import UserError, saving


def _arrays(state) -> dict:
  """The state's arrays as a plain pytree (keys as their raw data)."""
  return {"step": state.step, "params": state.params,
          "model_state": state.model_state, "opt_state": state.opt_state,
          "rng": jax.random.key_data(state.rng)}


class _Damaged(Exception):
  """A checkpoint that cannot be read back as written."""


class RunCheckpoints:
  """Epoch checkpoints of one run in `directory`.

  fingerprint: what must not change between a run and its resumption (the
  model, data and training settings); a mismatch is refused.
  log: where the notice of a damaged checkpoint, skipped, goes.
  """

  def __init__(self, directory: str, fingerprint: dict, keep: int = 2,
               log=print):
    self.directory = os.path.abspath(directory)
    self.fingerprint = json.loads(json.dumps(fingerprint, default=str))
    self.log = log or (lambda _: None)
    self.keep = keep
    self._manager = None

  @property
  def manager(self):
    """orbax's manager of the directory, made (and orbax imported, ~0.2 s)
    at first use: a run in a fresh workdir needs it only to save."""
    if self._manager is None:
      self._manager = ocp.CheckpointManager(
          self.directory, options=ocp.CheckpointManagerOptions(
              max_to_keep=self.keep, create=True,
              enable_async_checkpointing=False, cleanup_tmp_directories=True))
    return self._manager

  def save(self, index: int, state, meta: dict) -> None:
    """Checkpoint number `index` (increasing: the global step); meta must be
    JSON (history, position in the epoch...). It records the checksums of
    the arrays and of itself."""
    arrays = _arrays(state)
    meta = checkpoint.with_checksums(
        arrays, {"fingerprint": self.fingerprint, **meta})
    # Without a manager yet, this process has seen no checkpoint (restore
    # makes one where the directory holds any); making it creates the
    # directory, inside `saving` for a full disk.
    earlier = ("the earlier checkpoints are intact: rerun the same command "
               "once there is room to resume from the latest"
               if self._manager is not None
               and self._manager.latest_step() is not None else
               "no checkpoint was written yet")
    with saving(os.path.join(self.directory, str(index)), earlier):
      try:
        with checkpoint.quiet():
          self.manager.save(index, args=ocp.args.Composite(
              state=ocp.args.StandardSave(arrays),
              meta=ocp.args.JsonSave(meta)))
          self.manager.wait_until_finished()
      except Exception:
        entries = (os.listdir(self.directory)
                   if os.path.isdir(self.directory) else [])
        for entry in entries:  # the partial save
          if entry.startswith(f"{index}.orbax-checkpoint-tmp"):
            shutil.rmtree(os.path.join(self.directory, entry), True)
        raise

  def restore(self, like) -> tuple[Any, int, dict] | None:
    """(state, index, meta) of the latest intact checkpoint, or None if
    there is none. A damaged one (unreadable, or bytes that differ from
    their checksums) is moved to `<directory>-damaged/` and the next older
    one tried; if every one is damaged, a UserError.

    like: a state of the same run, or its shapes (`jax.ShapeDtypeStruct`
    leaves): gives the shapes and the static parts.
    """
    if self._manager is None and not (os.path.isdir(self.directory) and
                                      os.listdir(self.directory)):
      return None  # nothing saved yet
    skipped = []
    for index in sorted(self.manager.all_steps(), reverse=True):
      try:
        state, meta = self._restore(index, like)
      except _Damaged as e:
        skipped.append((index, str(e)))
        continue
      for bad, why in skipped:
        self.log(f"checkpoint {bad} is damaged ({why}); moved it to "
                 f"{self._set_aside(bad)}; resuming from checkpoint {index}")
      if skipped:
        distributed.barrier("damaged checkpoints set aside")
        self.manager.reload()
      return state, index, meta
    if skipped:
      raise UserError(
          f"every checkpoint in {self.directory} is damaged (checkpoint "
          f"{skipped[0][0]}: {skipped[0][1]}); --restart moves them aside "
          "and starts over")
    return None

  def _restore(self, index: int, like) -> tuple[Any, dict]:
    """Checkpoint `index`'s state and meta; _Damaged if it cannot be read
    back as written, a UserError if it belongs to another run."""
    try:
      with checkpoint.quiet(reported=True):
        meta = self.manager.restore(index, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))["meta"]
      meta, expected = checkpoint.verify_meta(meta, "it")
    except Exception as e:  # pylint: disable=broad-except
      raise _Damaged(_why(e)) from None
    if "step" not in meta:  # the layout before `loop.Progress`
      raise UserError(
          f"{self.directory} holds checkpoints an older jaxcf wrote, in "
          "another layout; they cannot resume. Use another --workdir, or "
          "--restart to start over")
    theirs = meta.get("fingerprint") or {}
    # A setting added since (absent there) is at its default, None.
    changed = sorted(k for k in set(self.fingerprint) | set(theirs)
                     if self.fingerprint.get(k) != theirs.get(k))
    if changed:
      raise UserError(
          f"{self.directory} holds checkpoints of a run with other settings "
          f"({', '.join('--' + k for k in changed)} differ); use another "
          "--workdir, or --restart to start over")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
        jax.eval_shape(_arrays, like))
    try:
      with checkpoint.quiet(reported=True):
        arrays = self.manager.restore(index, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract)))["state"]
      checkpoint.verify_arrays(arrays, expected, "it")
    except Exception as e:  # pylint: disable=broad-except
      raise _Damaged(_why(e)) from None
    state = like.replace(step=arrays["step"], params=arrays["params"],
                         model_state=arrays["model_state"],
                         opt_state=arrays["opt_state"],
                         rng=jax.random.wrap_key_data(arrays["rng"]))
    return state, meta

  def _set_aside(self, index: int) -> str:
    """Moves checkpoint `index` out of the manager's sight (kept, not
    deleted); returns where it went."""
    source = os.path.join(self.directory, str(index))
    target = os.path.join(self.directory + "-damaged", str(index))
    if not distributed.is_leader() or not os.path.isdir(source):
      return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    while os.path.exists(target):
      target += "+"
    os.rename(source, target)
    return target

  def close(self) -> None:
    if self._manager is not None:
      self._manager.close()


def _why(e: Exception) -> str:
  """An exception as a short reason."""
  if isinstance(e, UserError):
    return str(e).removeprefix("it is damaged: ")
  text = str(e).splitlines()[0] if str(e) else ""
  if len(text) > 160:
    text = text[:160].rsplit(" ", 1)[0] + " ..."
  return f"{type(e).__name__}: {text}"
