"""jaxcf's cache folder, and JAX's persistent compilation cache in it.

Compiled XLA programs are kept in `$JAXCF_CACHE/xla` (default
`~/.cache/jaxcf/xla`), so a repeated or resumed run loads its train epoch
and evaluation instead of compiling them; `--nocompilation_cache` turns
this off. The C++ row kernels are built into the same folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax


def root() -> Path:
  """$JAXCF_CACHE, else ~/.cache/jaxcf."""
  return Path(os.environ.get("JAXCF_CACHE", Path.home() / ".cache" /
                             "jaxcf"))


def enable() -> str | None:
  """Turns on JAX's persistent compilation cache in root()/xla, for every
  program however quick to compile, unless a cache folder is already set
  (e.g. $JAX_COMPILATION_CACHE_DIR). A setting of the whole process: once
  on, it stays on. Returns the folder in use, or None when it cannot be
  created (the run goes on without it).

  Not capped in size: JAX's cap needs the `filelock` package, and without
  it JAX drops the whole cache silently. Entries are small (the book run's
  programs take 0.4 MB); deleting the folder at any time is safe."""
  current = jax.config.jax_compilation_cache_dir
  if current:
    return current
  folder = root() / "xla"
  try:
    folder.mkdir(parents=True, exist_ok=True)
  except OSError:
    return None
  jax.config.update("jax_compilation_cache_dir", str(folder))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  return str(folder)
