"""The workdir contract: a workdir belongs to one run, and a run never loses
what an earlier one left in it.

    w = Workdir.open(path, log)            # one process at a time
    w.claim(kind, fingerprint, restart)    # the same run, or refused
    w.write_json("summary.json", ...)      # whole or not at all
    w.replace_dir("model", save)           # the old model or the new one
    w.close()

- **One process.** An exclusive `fcntl.flock` on W/.lock, taken before
  anything else and dropped by the kernel when the process ends however it
  ends; a second process is refused at once, naming the holder's pid (the
  processes of one multi-host run are one holder: only process 0 opens W).
- **One run.** W/run.json records what the run is: single or sweep, and its
  fingerprint (every setting that changes the result, and the data's
  content hash). A run with another fingerprint is refused naming what
  differs; `--restart` moves the old run to W/previous-N/ (nothing is
  deleted). A workdir with no results yet belongs to nobody.
- **Nothing half-written.** Files are written beside their place, fsync'd
  and renamed over it; a directory (model/) is written beside and swapped
  with the old one in one step (Linux `renameat2(RENAME_EXCHANGE)`), so a
  kill at any instant leaves the old model or the new one. What an
  interrupted save left is removed when the next run opens W.
- **Write errors are one line** (`No space left on device while saving
  W/model; the previous model is intact`), raised as a UserError.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from typing import Callable

from jaxcf import fsutil
from jaxcf.errors import UserError, saving

LOCK, RUN = ".lock", "run.json"
# What a run writes: moved together by --restart.
RESULTS = ("metrics.jsonl", "summary.json", "sweep.json", "config.json",
           "model", "checkpoints", "checkpoints-damaged", "tensorboard",
           "loss.png", "sweep.png", RUN)
_NEW, _OLD = ".{}.new", ".{}.old"  # a directory being swapped in, out


class Workdir:
  """An open, locked workdir (see the module docstring)."""

  def __init__(self, path: str, lock_fd: int, log=print):
    self.path, self._lock_fd, self.log = path, lock_fd, log

  @classmethod
  def open(cls, path: str, log=print) -> "Workdir":
    """Creates `path` if needed and locks it; a UserError if it cannot be
    written or another process holds it."""
    path = os.path.abspath(path)
    try:
      os.makedirs(path, exist_ok=True)
      fd = os.open(os.path.join(path, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise UserError(f"--workdir={path}: {e.strerror}; choose a folder "
                      "you can write") from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
      os.close(fd)
      who = f"process {holder}" if holder else "another process"
      raise UserError(f"--workdir={path} is in use by {who} (it holds "
                      f"{LOCK}); wait for it to finish, or use another "
                      "--workdir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    workdir = cls(path, fd, log)
    workdir._clean_leftovers()
    return workdir

  def close(self) -> None:
    """Releases the lock (the kernel does so anyway at exit)."""
    if self._lock_fd is not None:
      os.close(self._lock_fd)
      self._lock_fd = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def join(self, *names: str) -> str:
    return os.path.join(self.path, *names)

  # The run it belongs to.

  def results(self) -> list[str]:
    """The results of an earlier run present in W."""
    present = [n for n in RESULTS if n != RUN and os.path.lexists(self.join(n))]
    if "metrics.jsonl" in present and not os.path.getsize(
        self.join("metrics.jsonl")):
      present.remove("metrics.jsonl")
    return present

  def owner(self) -> dict | None:
    """What W holds: {kind, fingerprint, what} from W/run.json; for a
    workdir from before run.json, what its checkpoints or config.json tell
    (kind or fingerprint None where they cannot); None if W holds no
    results. A UserError if run.json is damaged."""
    results = self.results()
    if not results:
      return None
    try:
      with open(self.join(RUN)) as f:
        owner = json.load(f)
    except FileNotFoundError:
      return self._legacy_owner(results)
    except (OSError, ValueError) as e:
      raise UserError(f"{self.join(RUN)} cannot be read ({e}); --restart "
                      "moves this run aside and starts over") from None
    if not (isinstance(owner, dict) and owner.get("kind") in KINDS
            and isinstance(owner.get("fingerprint"), dict)):
      raise UserError(f"{self.join(RUN)} is not a jaxcf run.json (damaged?); "
                      "--restart moves this run aside and starts over")
    return owner

  def _legacy_owner(self, results: list[str]) -> dict:
    kind = ("sweep" if "sweep.json" in results else
            "single" if {"summary.json", "checkpoints"} & set(results)
            else None)
    fingerprint = fsutil.checkpoint_fingerprint(self.join("checkpoints"))
    if fingerprint is None:
      with contextlib.suppress(OSError, ValueError, AttributeError):
        from jaxcf import config as config_lib  # pylint: disable=g-import-not-at-top
        with open(self.join("config.json")) as f:
          fingerprint = config_lib.fingerprint_of(json.load(f))
    return {"kind": kind, "fingerprint": fingerprint}

  def claim(self, kind: str, fingerprint: dict, restart: bool = False,
            what: str = "") -> None:
    """Makes W this run's: refuses it (UserError) if it holds another run's
    results, or results it cannot tell the run of, unless `restart`, which
    moves them to W/previous-N/. Call it once every other check passed.

    kind: "single" or "sweep"; fingerprint: what the result depends on
    (`RunConfig.fingerprint`); what: this run in a few words.
    """
    fingerprint = json.loads(json.dumps(fingerprint, default=str))
    what = what or f"a {kind} run"
    try:
      owner = self.owner()
    except UserError:
      if not restart:
        raise
      owner = {}
    if owner is not None and restart:
      self.log(f"--restart: moved the earlier run to {self._move_aside()}")
    elif owner is not None:
      self._refuse_unless_same(owner, kind, fingerprint, what)
    self._write_if_changed(RUN, {"kind": kind, "what": what,
                                 "fingerprint": fingerprint})

  def _refuse_unless_same(self, owner: dict, kind: str, fingerprint: dict,
                          what: str) -> None:
    theirs = owner.get("what") or _KIND_WORDS.get(owner.get("kind"))
    move = (f"use another --workdir, or add --restart to move it to "
            f"{self.path}/previous-N and start over")
    if owner.get("kind") is None or owner.get("fingerprint") is None:
      raise UserError(
          f"--workdir={self.path} holds results ({', '.join(self.results())}"
          ") of a run it cannot tell the settings of (no run.json, "
          f"config.json or checkpoint says them); {move}")
    if owner["kind"] != kind:
      raise UserError(f"--workdir={self.path} holds {theirs}; this command "
                      f"is {what}. Rerun its command to continue it, or "
                      f"{move}")
    differs = _differences(owner["fingerprint"], fingerprint)
    if differs:
      raise UserError(f"--workdir={self.path} holds {theirs} with other "
                      f"settings ({differs}). Rerun with its settings to "
                      f"continue it, or {move}")

  def _write_if_changed(self, name: str, obj) -> None:
    """write_json, skipped when the file already holds exactly this (a
    rerun on a full disk must not fail on a file it need not change)."""
    text = json.dumps(obj, indent=2) + "\n"
    with contextlib.suppress(OSError):
      with open(self.join(name)) as f:
        if f.read() == text:
          return
    self.write_file(name, lambda f: f.write(text), mode="w")

  def _move_aside(self) -> str:
    n = 1
    while os.path.lexists(self.join(f"previous-{n}")):
      n += 1
    target = self.join(f"previous-{n}")
    os.mkdir(target)  # (an existing file, folder or link of the name: next)
    for name in RESULTS:
      if os.path.lexists(self.join(name)):
        os.rename(self.join(name), os.path.join(target, name))
    return target

  # Writing.

  def write_json(self, name: str, obj) -> None:
    """W/name := obj as JSON, atomically."""
    self.write_file(name, lambda f: (json.dump(obj, f, indent=2),
                                     f.write("\n")), mode="w")

  def write_file(self, name: str, write: Callable, mode: str = "wb") -> None:
    """W/name := what write(f) writes into an open file, atomically."""
    path = self.join(name)
    with saving(path, f"the previous {name} is intact"):
      fsutil.replace_file(path, write, mode)

  def replace_dir(self, name: str, write: Callable[[str], None]) -> None:
    """W/name := the directory write(path) creates at `path`, swapped in
    atomically; the old one is deleted only after the swap."""
    target, new = self.join(name), self.join(_NEW.format(name))
    with saving(target, f"the previous {name}/ is intact"
                if os.path.exists(target) else "nothing was written"):
      fsutil.remove(new)
      try:
        write(new)
        fsutil.sync_tree(new)
      except BaseException:
        self._remove_partial(name)
        raise
      if not os.path.lexists(target):
        os.rename(new, target)
      elif not fsutil.exchange(new, target):
        old = self.join(_OLD.format(name))  # two steps; see _clean_leftovers
        os.rename(target, old)
        os.rename(new, target)
        os.rename(old, new)
      fsutil.sync_dir(self.path)
      fsutil.remove(new)  # now the old one

  def _remove_partial(self, name: str) -> None:
    new = _NEW.format(name)
    for entry in os.listdir(self.path):
      if entry == new or entry.startswith(new + ".orbax-checkpoint-tmp"):
        fsutil.remove(self.join(entry))

  def _clean_leftovers(self) -> None:
    """Undoes what a killed save left: temporary files and directories, and
    a swap cut between its two renames (where the exchange is missing)."""
    for name in ("model",):
      target, new, old = (self.join(name), self.join(_NEW.format(name)),
                          self.join(_OLD.format(name)))
      if os.path.lexists(old) and not os.path.lexists(target):
        os.rename(new if os.path.lexists(new) else old, target)
      fsutil.remove(old)
      self._remove_partial(name)
    for entry in os.listdir(self.path):  # our temporary files only
      if (entry.startswith(".") and entry.endswith(".tmp")
          and entry[1:].split(".tmp.", 1)[0] in RESULTS
          and os.path.isfile(self.join(entry))):
        os.remove(self.join(entry))


def _differences(theirs: dict, ours: dict) -> str:
  """The settings that differ between W's run and this one, in words ('':
  none). A setting absent from W's (added since) is at its default: left
  out. W's from config.json has no data hash: not compared."""
  keys = sorted(k for k in set(theirs) & set(ours)
                if theirs[k] != ours[k]
                and not (k == "data_hash" and theirs[k] is None))

  def show(a, b):
    unwrap = lambda v: v[0] if isinstance(v, list) and len(v) == 1 else v
    if json.dumps(unwrap(a)) == json.dumps(unwrap(b)):
      unwrap = lambda v: v
    return json.dumps(unwrap(a))[:40], json.dumps(unwrap(b))[:40]

  return "; ".join(
      "the data's content differs" if k == "data_hash" else
      "--{} {} there, {} now".format(k, *show(theirs[k], ours[k]))
      for k in keys)


KINDS = ("single", "sweep")
_KIND_WORDS = {"single": "a single run", "sweep": "a sweep"}
