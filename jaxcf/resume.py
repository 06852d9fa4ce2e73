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
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxcf.errors import UserError


def _arrays(state) -> dict:
  """The state's arrays as a plain pytree (keys as their raw data)."""
  return {"step": state.step, "params": state.params,
          "model_state": state.model_state, "opt_state": state.opt_state,
          "rng": jax.random.key_data(state.rng)}


class RunCheckpoints:
  """Epoch checkpoints of one run in `directory`.

  fingerprint: what must not change between a run and its resumption (the
  model, data and training settings); a mismatch is refused.
  """

  def __init__(self, directory: str, fingerprint: dict, keep: int = 2):
    self.directory = os.path.abspath(directory)
    self.fingerprint = json.loads(json.dumps(fingerprint, default=str))
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False))

  def save(self, index: int, state, meta: dict) -> None:
    """Checkpoint number `index` (increasing: the global step); meta must be
    JSON (history, position in the epoch...)."""
    self.manager.save(index, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_arrays(state)),
        meta=ocp.args.JsonSave({"fingerprint": self.fingerprint, **meta})))
    self.manager.wait_until_finished()

  def restore(self, like) -> tuple[Any, int, dict] | None:
    """(state, index, meta) of the latest checkpoint, or None if none.

    like: a freshly initialised state of the same run (gives the shapes and
    the static parts).
    """
    index = self.manager.latest_step()
    if index is None:
      return None
    meta = self.manager.restore(index, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"]
    if "step" not in meta:  # the layout before `loop.Progress`
      raise UserError(
          f"{self.directory} holds checkpoints an older jaxcf wrote, in "
          "another layout; they cannot resume. Use another --workdir, or "
          "--restart to start over")
    if meta.get("fingerprint") != self.fingerprint:
      changed = sorted(k for k in set(self.fingerprint) | set(
          meta.get("fingerprint") or {}) if self.fingerprint.get(k) !=
                       (meta.get("fingerprint") or {}).get(k))
      raise UserError(
          f"{self.directory} holds checkpoints of a run with other settings "
          f"({', '.join(changed)} differ); use another --workdir, or "
          "--restart to start over")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _arrays(like))
    try:
      arrays = self.manager.restore(index, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract)))["state"]
    except Exception as e:  # a damaged or foreign checkpoint
      raise UserError(f"{self.directory}: checkpoint {index} "
                      f"cannot be read ({type(e).__name__}); --restart "
                      "starts over") from None
    state = like.replace(step=arrays["step"], params=arrays["params"],
                         model_state=arrays["model_state"],
                         opt_state=arrays["opt_state"],
                         rng=jax.random.wrap_key_data(arrays["rng"]))
    return state, index, meta

  def close(self) -> None:
    self.manager.close()
