"""C++ row kernels for XLA:CPU (`rowkernels.cc`), built on first use.

XLA:CPU moves embedding rows with generic gather/scatter loops (~1 ns per
element); at bs 8192 on a 480k x 50 table that is most of a row-wise
optimiser's step. `jaxcf.sparse` can hand the row traffic to three small
C++ kernels instead, called through `jax.ffi`:

* `gather_rows(table, ids)`: table[ids], [batch, f];
* `update_rows(kind, ids, hyper, tables)`: the optimisers' row updates of
  one side's tables (factors, bias), summing the gradients of repeated ids
  first, in place (the outputs alias the table and slot buffers).

The source is compiled with the system's C++ compiler (`$CXX`, else `c++`)
against the XLA FFI headers that jaxlib ships, into a cache directory
(`$JAXCF_CACHE`, else ~/.cache/jaxcf), once per source, jaxlib version and
machine. CPU only, float32 tables, one device, no `vmap`: `check` says why
not otherwise.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxcf import compilecache

SOURCE = Path(__file__).with_name("rowkernels.cc")
FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC")
TARGETS = {"gather_rows": "JaxcfGatherRows",
           "rowwise_adagrad": "JaxcfRowwiseAdagrad",
           "lazy_adamw": "JaxcfLazyAdamw"}


class Unavailable(RuntimeError):
  """The kernels cannot be built or used here (the message says why)."""


def _cache_dir() -> Path:
  return compilecache.root()


@functools.cache
def _library() -> ctypes.CDLL:
  """Builds (once) and loads the kernels, registering them with XLA."""
  if not hasattr(jax, "ffi"):
    raise Unavailable(f"jax {jax.__version__} has no jax.ffi")
  wanted = os.environ.get("CXX")
  compiler = shutil.which(wanted) if wanted else (
      shutil.which("c++") or shutil.which("g++") or shutil.which("clang++"))
  if not compiler:
    raise Unavailable(f"$CXX={wanted} is not a program" if wanted else
                      "no C++ compiler found (c++, g++, clang++; or set $CXX)")
  include = jax.ffi.include_dir()
  source = SOURCE.read_bytes()
  tag = hashlib.sha256(b"\0".join(
      [source, *(x.encode() for x in (jax.__version__, platform.machine(),
                                      include, compiler, *FLAGS))])
                       ).hexdigest()[:16]
  path = _cache_dir() / f"rowkernels-{tag}.so"
  try:
    if not path.exists():
      path.parent.mkdir(parents=True, exist_ok=True)
      with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        built = Path(tmp) / path.name
        proc = subprocess.run(
            [compiler, *FLAGS, "-I", include, str(SOURCE), "-o", str(built)],
            capture_output=True, text=True, check=False)
        if proc.returncode:
          raise Unavailable(f"compiling {SOURCE.name} with {compiler} "
                            f"failed: {proc.stderr.strip()[-2000:]}")
        os.replace(built, path)  # atomic: parallel builders agree
    library = ctypes.cdll.LoadLibrary(str(path))
  except OSError as e:
    raise Unavailable(f"building the kernels in {path.parent}: {e} (set "
                      "$JAXCF_CACHE to a writable folder)") from e
  for name, symbol in TARGETS.items():
    jax.ffi.register_ffi_target(f"jaxcf_{name}",
                                jax.ffi.pycapsule(getattr(library, symbol)),
                                platform="cpu")
  return library


def check(param_dtype=jnp.float32) -> None:
  """Raises Unavailable unless the kernels can run tables of this dtype
  here (building them if need be)."""
  if jax.default_backend() != "cpu":
    raise Unavailable(f"the row kernels are for the CPU backend, not "
                      f"{jax.default_backend()}")
  if jnp.dtype(param_dtype) != jnp.float32:
    raise Unavailable(f"the row kernels take float32 tables, not "
                      f"{jnp.dtype(param_dtype).name}")
  _library()


def gather_rows(table: jax.Array, ids: jax.Array) -> jax.Array:
  """table[ids]: float32 [n, f] and int32 [batch] -> [batch, f]."""
  _library()
  out = jax.ShapeDtypeStruct((ids.shape[0], *table.shape[1:]), table.dtype)
  return jax.ffi.ffi_call("jaxcf_gather_rows", out)(table, ids)


def update_rows(kind: str, ids: jax.Array, hyper, tables):
  """One side's row update, in place: kind 'rowwise_adagrad' or 'lazy_adamw'.

  Args:
    ids: int32 [batch], the side's (user or item) row of each position.
    hyper: float32 scalars: rowwise_adagrad [lr, 1 - lr * wd, eps];
      lazy_adamw [lr / (1 - b1^t), 1 - lr * wd, b1, b2, eps, 1 - b2^t].
    tables: (table [n, f], slots, grads [batch, f]) per table of the side;
      slots are the accumulators [n] or the moments [n, 2, f].

  Returns:
    [(table, slots)] updated, in the order given.
  """
  _library()
  args = [ids, jnp.stack([jnp.asarray(x, jnp.float32) for x in hyper])]
  out, aliases = [], {}
  for k, (table, slots, grads) in enumerate(tables):
    args += [table, slots, grads.astype(jnp.float32)]
    out += [jax.ShapeDtypeStruct(table.shape, table.dtype),
            jax.ShapeDtypeStruct(slots.shape, slots.dtype)]
    aliases.update({2 + 3 * k: 2 * k, 3 + 3 * k: 2 * k + 1})
  new = jax.ffi.ffi_call(f"jaxcf_{kind}", out,
                         input_output_aliases=aliases)(*args)
  return [tuple(new[2 * k:2 * k + 2]) for k in range(len(tables))]
