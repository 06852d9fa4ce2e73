"""C++ kernels for XLA:CPU (`rowkernels.cc`, `gaussianrows.cc`), built on
first use.

XLA:CPU moves embedding rows with generic gather/scatter loops (~1 ns per
element); at bs 8192 on a 480k x 50 table that is most of a row-wise
optimiser's step. `jaxcf.sparse` can hand the row traffic to three small
C++ kernels instead, called through `jax.ffi`:

* `gather_rows(table, ids)`: table[ids], [batch, f];
* `update_rows(kind, ids, hyper, tables)`: the optimisers' row updates of
  one side's tables (factors, bias), summing the gradients of repeated ids
  first, in place (the outputs alias the table and slot buffers).

And the Gibbs sampler (`jaxcf.conjugate.gaussian_rows`) draws its rows with
a fourth, in a library of its own:

* `gaussian_rows(precision, shift, noise)`: every row's Cholesky factor and
  both triangular solves in one pass, 8 small matrices at once across SIMD
  lanes; any leading batch shape, and `vmap`. At 50 factors a draw of
  ML-100k's 943 users took 2.2-2.7 ms, its 1682 items 4.2-4.4, against
  12.6-17 and 42-46 ms by jnp's batched LAPACK calls (2 busy cores).

Each source is compiled with the system's C++ compiler (`$CXX`, else `c++`)
against the XLA FFI headers that jaxlib ships, into a cache directory
(`$JAXCF_CACHE`, else ~/.cache/jaxcf), once per source, jaxlib version and
machine, for the baseline ISA only (the Gaussian kernel picks AVX2 code at
run time where the CPU has it). CPU only, float32, one device, and `vmap`
only for the Gaussian kernel: `check` and `gaussian_unavailable` say why
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
import numpy as np

from jaxcf import compilecache

SOURCE = Path(__file__).with_name("rowkernels.cc")
FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC")
TARGETS = {"gather_rows": "JaxcfGatherRows",
           "rowwise_adagrad": "JaxcfRowwiseAdagrad",
           "lazy_adamw": "JaxcfLazyAdamw"}
GAUSSIAN_SOURCE = Path(__file__).with_name("gaussianrows.cc")
# Contraction makes a * b + c one FMA where the CPU has it; no errno lets
# sqrt be one vector instruction.
GAUSSIAN_FLAGS = FLAGS + ("-ffp-contract=fast", "-fno-math-errno",
                          "-Wno-psabi")
GAUSSIAN_TARGETS = {"gaussian_rows": "JaxcfGaussianRows"}
# 0: the fastest code this CPU runs; 1 baseline ISA, 2 AVX2 + FMA (tests).
GAUSSIAN_VARIANTS = {"auto": 0, "baseline": 1, "avx2": 2}


class Unavailable(RuntimeError):
  """The kernels cannot be built or used here (the message says why)."""


def _cache_dir() -> Path:
  return compilecache.root()


def _build(source_path: Path, flags, targets) -> ctypes.CDLL:
  """Builds (once) and loads one source's kernels, registering them."""
  if not hasattr(jax, "ffi"):
    raise Unavailable(f"jax {jax.__version__} has no jax.ffi")
  wanted = os.environ.get("CXX")
  compiler = shutil.which(wanted) if wanted else (
      shutil.which("c++") or shutil.which("g++") or shutil.which("clang++"))
  if not compiler:
    raise Unavailable(f"$CXX={wanted} is not a program" if wanted else
                      "no C++ compiler found (c++, g++, clang++; or set $CXX)")
  include = jax.ffi.include_dir()
  source = source_path.read_bytes()
  tag = hashlib.sha256(b"\0".join(
      [source, *(x.encode() for x in (jax.__version__, platform.machine(),
                                      include, compiler, *flags))])
                       ).hexdigest()[:16]
  path = _cache_dir() / f"{source_path.stem}-{tag}.so"
  try:
    if not path.exists():
      path.parent.mkdir(parents=True, exist_ok=True)
      with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        built = Path(tmp) / path.name
        proc = subprocess.run(
            [compiler, *flags, "-I", include, str(source_path), "-o",
             str(built)], capture_output=True, text=True, check=False)
        if proc.returncode:
          raise Unavailable(f"compiling {source_path.name} with {compiler} "
                            f"failed: {proc.stderr.strip()[-2000:]}")
        os.replace(built, path)  # atomic: parallel builders agree
    library = ctypes.cdll.LoadLibrary(str(path))
  except OSError as e:
    raise Unavailable(f"building the kernels in {path.parent}: {e} (set "
                      "$JAXCF_CACHE to a writable folder)") from e
  for name, symbol in targets.items():
    jax.ffi.register_ffi_target(f"jaxcf_{name}",
                                jax.ffi.pycapsule(getattr(library, symbol)),
                                platform="cpu")
  return library


@functools.cache
def _library() -> ctypes.CDLL:
  """The row kernels (`rowkernels.cc`), built and registered once."""
  return _build(SOURCE, FLAGS, TARGETS)


@functools.cache
def _gaussian_library() -> ctypes.CDLL:
  """The Gaussian rows kernel (`gaussianrows.cc`), built and registered
  once."""
  return _build(GAUSSIAN_SOURCE, GAUSSIAN_FLAGS, GAUSSIAN_TARGETS)


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


@functools.cache
def gaussian_unavailable() -> str | None:
  """Why `gaussian_rows` cannot run here (building it if need be), or None.
  Asked once per process: a failed build is not retried."""
  if jax.default_backend() != "cpu":
    return (f"the Gaussian rows kernel is for the CPU backend, not "
            f"{jax.default_backend()}")
  try:
    _gaussian_library()
  except Unavailable as e:
    return str(e)
  return None


def gaussian_rows(precision: jax.Array, shift: jax.Array, noise: jax.Array,
                  variant: str = "auto") -> jax.Array:
  """x_r = L_r^-T (L_r^-1 h_r + z_r) with P_r = L_r L_r^T (of (P_r + P_r^T)
  / 2) for every row r: float32 precision P [..., k, k], shift h and noise
  z [..., k] -> [..., k]; NaN rows where P_r is not positive definite.
  variant: a key of GAUSSIAN_VARIANTS (an error where the CPU lacks it)."""
  _gaussian_library()
  out = jax.ShapeDtypeStruct(shift.shape, jnp.float32)
  return jax.ffi.ffi_call("jaxcf_gaussian_rows", out,
                          vmap_method="broadcast_all")(
                              precision, shift, noise,
                              variant=np.int32(GAUSSIAN_VARIANTS[variant]))
