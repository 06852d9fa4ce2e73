"""File-system steps the workdir contract is built of: temporary names,
removal that never follows a link, fsync of trees, and an atomic swap of
two directories."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil


def remove(path: str) -> None:
  """Removes a file, link or folder tree (a link itself, never what it
  points to); nothing if absent."""
  if os.path.islink(path) or os.path.isfile(path):
    os.remove(path)
  elif os.path.isdir(path):
    shutil.rmtree(path)


def sync_tree(path: str) -> None:
  """fsyncs every file under path, so that a swapped-in folder survives a
  power loss whole."""
  for root, _, files in os.walk(path):
    for name in files:
      with contextlib.suppress(OSError):
        fd = os.open(os.path.join(root, name), os.O_RDONLY)
        try:
          os.fsync(fd)
        finally:
          os.close(fd)
    sync_dir(root)


def sync_dir(path: str) -> None:
  """Makes the renames inside `path` durable."""
  with contextlib.suppress(OSError):
    fd = os.open(path, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)


_RENAME_EXCHANGE, _AT_FDCWD = 2, -100


def exchange(a: str, b: str) -> bool:
  """Swaps two paths in one step (Linux renameat2); False where the
  system or file system cannot."""
  try:
    renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
  except (AttributeError, OSError):
    return False
  renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                        ctypes.c_char_p, ctypes.c_uint]
  done = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b),
                   _RENAME_EXCHANGE)
  return done == 0


def temporary(path: str) -> str:
  """Where a file is written before it is renamed to `path`:
  `.NAME.tmp.PID.tmp` beside it (cleaned by the next run's open)."""
  head, name = os.path.split(path)
  return os.path.join(head, f".{name}.tmp.{os.getpid()}.tmp")


def checkpoint_fingerprint(directory: str) -> dict | None:
  """The fingerprint in the newest checkpoint's JSON metadata (orbax keeps
  it in <step>/meta/metadata), or None."""
  with contextlib.suppress(OSError, ValueError, AttributeError):
    steps = sorted((int(e) for e in os.listdir(directory) if e.isdigit()),
                   reverse=True)
    for step in steps:
      with contextlib.suppress(OSError, ValueError, AttributeError):
        with open(os.path.join(directory, str(step), "meta", "metadata")) as f:
          found = json.load(f).get("fingerprint")
        if isinstance(found, dict):
          return found
  return None


def replace_file(path: str, write, mode: str = "wb") -> None:
  """path := what write(f) writes into an open file: written beside
  (`temporary`), fsync'd and renamed over it, so it appears whole or not at
  all; the temporary file is removed if anything fails."""
  tmp = temporary(path)
  try:
    with open(tmp, mode) as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise
  sync_dir(os.path.dirname(path) or ".")
