"""fastai's embedding initialisation, with all of a model's tables drawn in
one computation.

fastai initialises a table with `trunc_normal_(std=0.01)`: standard normal
draws, fmod 2, times 0.01. Drawn table by table with `jax.random.normal`, a
model's initialisation program holds one Threefry hash and one inverse-erf
map per table, and XLA compiles each: the book's dot_bias's `init` (four
tables, and the keys Flax derives for them) compiled in 0.45 s, and
`steps.create_train_state` with one hash and one map over all the tables'
elements in 0.24 s (`benchmarks/init_compile.py`, at `loop.RUN_ONCE`,
XLA:CPU on 2 cores, medians of 5 rounds, 2026-12-04; results in
`benchmarks/results/init_compile.md`).

`drawn_together(init)` runs an initialisation twice in one trace: the first
pass records each table's key and shape (handing out zeros), one
elementwise computation then draws every table, and the second pass hands
the tables out in the order they are asked for (so `init` must ask for the
same tables in the same order each time, as a Flax module's init does).
The values are `jax.random.normal`'s bit for bit: with partitionable
threefry keys, element i of a draw is sqrt(2) erfinv(u) of the uniform u
that the 32 bits `hash_pairs(key, (0, i))` make (tests/test_tableinit.py;
tests/test_families.py checks every family with tables).
These tables are drawn by `jax.random.normal`, each on its own: those not
float32, those whose key is not a typed, partitionable threefry key, those
past 2**32 elements in all, and those asked for under a transformation
inside `init` (`nn.remat`, `nn.scan`, an inner `jax.jit`: their keys live
in another trace).

The keys Flax derives for the tables (a fold_in of the init key per table)
are a Threefry hash each, and cost the compile almost as much again: 0.14
s with them computed on the host (the same benchmark's `host keys` row).
`host_keys` computes them there (`jaxcf.keys`) from one trace of the init
(`traced_init`, which also gives the parameters' shapes), and
`drawn_together(init, table_keys)` draws with them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
from typing import Any

import jax
from jax.extend import core as jax_core
import jax.numpy as jnp
import numpy as np

from jaxcf import keys

_COLLECTING = threading.local()  # .draws: the _Draws of the running init


def fastai_normal(key, shape, dtype=jnp.float32) -> jax.Array:
  """fmod(N(0, 1), 2) * 0.01 of `shape`, drawn with `key` (deferred to the
  batched draw inside `drawn_together`)."""
  draws = getattr(_COLLECTING, "draws", None)
  if (draws is not None and draws.trace == _trace()
      and _batchable(key, shape, dtype) and draws.fits(shape)):
    return draws.take(key, tuple(shape))
  return _fastai(jax.random.normal(key, shape, dtype))


def _fastai(normal: jax.Array) -> jax.Array:
  return jnp.fmod(normal, 2.0) * 0.01


def _trace():
  """Which trace is running (Flax's test for the same question)."""
  return jax_core.get_opaque_trace_state(convention="flax")


def _batchable(key, shape, dtype) -> bool:
  return (np.dtype(dtype) == np.float32
          and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
          and key.shape == () and keys.threefry_key(key))


class _Draws:
  """The tables one initialisation asks for: recorded on the first pass,
  handed out on the second."""

  def __init__(self):
    self.trace = _trace()  # only tables asked for in this trace wait
    self.requests: list[tuple[jax.Array, tuple[int, ...]]] = []
    self.tables: list[jax.Array] | None = None
    self.size = 0  # elements recorded (pass 1) or handed out (pass 2)

  def fits(self, shape) -> bool:
    """Whether the table's elements can be counted in uint32 after those
    before it (the same answer on both passes)."""
    if self.size + math.prod(shape) >= 2**32:
      return False
    self.size += math.prod(shape)
    return True

  def take(self, key, shape):
    if self.tables is None:
      self.requests.append((key, shape))
      return jnp.zeros(shape, jnp.float32)
    if not self.tables or self.tables[0].shape != shape:
      raise RuntimeError("the initialisation asked for different tables on "
                         "its second pass")
    return self.tables.pop(0)

  def draw(self, table_keys=None) -> None:
    """Draws the recorded tables, with `table_keys` (uint32 [tables, 2])
    for their keys if given."""
    shapes = tuple(shape for _, shape in self.requests)
    if table_keys is None:
      table_keys = [jax.random.key_data(key) for key, _ in self.requests]
    elif table_keys.shape != (len(shapes), 2):
      raise RuntimeError(f"table_keys of shape {table_keys.shape} for "
                         f"{len(shapes)} tables")
    self.tables = list(_draw(table_keys, shapes))
    self.size = 0


@functools.partial(jax.jit, static_argnums=1)  # one program when eager, too
def _draw(words, shapes):
  """fastai tables of `shapes`, one per key (words: each key's data,
  uint32 [2]), from one hash and one map over all their elements: element
  i of the whole belongs to the last table j with start_j <= i, and hashes
  the counter (0, i - start_j) under table j's key."""
  sizes = [math.prod(shape) for shape in shapes]
  starts = np.cumsum([0] + sizes)
  i = jax.lax.iota(jnp.uint32, int(starts[-1]))
  k1, k2 = (jnp.full_like(i, words[0][w]) for w in (0, 1))
  start = jnp.zeros_like(i)
  for j in range(1, len(shapes)):
    later = i >= np.uint32(starts[j])
    k1 = jnp.where(later, words[j][0], k1)
    k2 = jnp.where(later, words[j][1], k2)
    start = jnp.where(later, np.uint32(starts[j]), start)
  hi, lo = keys.hash_pairs(k1, k2, jnp.zeros_like(i), i - start)
  flat = _fastai(_normal_from_bits(hi ^ lo))
  return [flat[a:b].reshape(shape)
          for a, b, shape in zip(starts[:-1], starts[1:], shapes)]


def _normal_from_bits(bits: jax.Array) -> jax.Array:
  """float32 standard normals from uint32 bits, as `jax.random.normal`
  makes them: 23 bits fill the mantissa of a float in [1, 2), which moves
  to u in (-1, 1) (the lower end clipped to the float above -1), and
  z = sqrt(2) erfinv(u)."""
  low = np.nextafter(np.float32(-1), np.float32(0))
  one = np.float32(1)
  floats = jax.lax.bitcast_convert_type(
      (bits >> np.uint32(9)) | np.uint32(0x3F800000), jnp.float32) - one
  u = jax.lax.max(low, floats * (one - low) + low)
  return np.float32(np.sqrt(2)) * jax.lax.erf_inv(u)


def _recording(init, draws: _Draws, *args, **kwargs):
  outer = getattr(_COLLECTING, "draws", None)
  _COLLECTING.draws = draws
  try:
    return init(*args, **kwargs)
  finally:
    _COLLECTING.draws = outer


def drawn_together(init, table_keys=None):
  """`init` (e.g. a module's `init`) with every `fastai_normal` table it
  asks for drawn in one computation; same values.

  table_keys: uint32 [tables, 2], the data of the keys `init` derives for
  its tables (`host_keys`), so that the computation need not derive them;
  None: derived as `init` does.
  """

  @functools.wraps(init)
  def run(*args, **kwargs):
    draws = _Draws()
    out = _recording(init, draws, *args, **kwargs)
    if not draws.requests:
      return out
    draws.draw(table_keys)
    out = _recording(init, draws, *args, **kwargs)
    if draws.tables:
      raise RuntimeError("the initialisation asked for fewer tables on its "
                         "second pass")
    return out

  return run


@dataclasses.dataclass(frozen=True)
class TracedInit:
  """What one trace of a module's `init(key, ids, ids)` tells.

  params: the parameters' shapes (`jax.ShapeDtypeStruct` leaves); keys:
  the jaxpr from the init key to the data of the keys of the tables drawn
  together, pruned to what those need (None: no such tables).
  """
  params: Any
  keys: Any = None


@functools.lru_cache(maxsize=32)
def traced_init(model) -> TracedInit:
  """Traces `model.init` (with one-id dummy batches, as `steps.
  create_train_state` calls it) once per module; nothing is compiled."""

  def first_pass(key):
    draws = _Draws()
    ids = jnp.zeros((1,), jnp.int32)  # made inside: nothing to compile
    variables = _recording(model.init, draws, key, ids, ids)
    return variables["params"], [jax.random.key_data(k)
                                 for k, _ in draws.requests]

  closed, (params, words) = jax.make_jaxpr(first_pass, return_shape=True)(
      jax.eval_shape(jax.random.key, 0))
  n_params = len(jax.tree.leaves(params))
  return TracedInit(params, _pruned(closed, n_params) if words else None)


def _pruned(closed, skip: int):
  """The equations of `closed` that its outputs after the first `skip`
  need, with those outputs (in order): (jaxpr, consts)."""
  jaxpr = closed.jaxpr
  outs = jaxpr.outvars[skip:]
  needed = {v for v in outs if not isinstance(v, jax_core.Literal)}
  kept = []
  for eqn in reversed(jaxpr.eqns):
    if any(v in needed for v in eqn.outvars):
      kept.append(eqn)
      needed.update(v for v in eqn.invars
                    if not isinstance(v, jax_core.Literal))
  return jaxpr.invars[0], kept[::-1], outs, dict(zip(jaxpr.constvars,
                                                     closed.consts))


def host_keys(model, key: jax.Array) -> np.ndarray | None:
  """uint32 [tables, 2]: the data of the keys `model.init` derives from
  the typed `key` for its fastai tables (in the order it asks for them),
  computed on the host; None when it has no such tables, `key` is not a
  partitionable threefry key, or the derivation is more than fold_ins of
  constants (then `drawn_together` derives them as `init` does)."""
  traced = traced_init(model)
  if traced.keys is None or not keys.threefry_key(key):
    return None
  root, eqns, outs, env = traced.keys
  env = {**env, root: np.asarray(jax.random.key_data(key), np.uint32)}
  read = lambda v: v.val if isinstance(v, jax_core.Literal) else env[v]
  for eqn in eqns:
    name = eqn.primitive.name
    if name == "random_unwrap":
      env[eqn.outvars[0]] = read(eqn.invars[0])
    elif name == "random_fold_in":
      data = np.asarray(read(eqn.invars[1]))
      if data.shape or data.dtype != np.uint32:
        return None
      env[eqn.outvars[0]] = keys.fold_in(read(eqn.invars[0]), [data])[0]
    else:
      return None
  return np.stack([read(v) for v in outs]).astype(np.uint32)
