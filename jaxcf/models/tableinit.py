"""fastai's embedding initialisation, with all of a model's tables drawn in
one computation.

fastai initialises a table with `trunc_normal_(std=0.01)`: standard normal
draws, fmod 2, times 0.01. Drawn table by table with `jax.random.normal`, a
model's initialisation program holds one Threefry hash and one inverse-erf
map per table, and XLA compiles each: the book's dot_bias's four tables
compiled in 0.52 s, against 0.16 s for one hash and one map over all their
elements (`lower(...).compile(loop.RUN_ONCE)`, XLA:CPU on 2 cores), out of
the ~1.5 s a first book run spends compiling.

`drawn_together(init)` runs an initialisation twice in one trace: the first
pass records each table's key and shape (handing out zeros), one
elementwise computation then draws every table, and the second pass hands
the tables out in the order they are asked for (initialisers run in the
same order on the same module). The values are `jax.random.normal`'s bit
for bit: with partitionable threefry keys, element i of a draw is
sqrt(2) erfinv(u) of the uniform u that the 32 bits
`hash_pairs(key, (0, i))` make (tests/test_families.py checks every family).
Tables that are not float32, have 2**32 elements or more, or whose keys are
not partitionable threefry ones are drawn by `jax.random.normal`, each on
its own.
"""

from __future__ import annotations

import functools
import math
import threading

import jax
import jax.numpy as jnp
import numpy as np

from jaxcf import keys

_COLLECTING = threading.local()  # .draws: the _Draws of the running init


def fastai_normal(key, shape, dtype=jnp.float32) -> jax.Array:
  """fmod(N(0, 1), 2) * 0.01 of `shape`, drawn with `key` (deferred to the
  batched draw inside `drawn_together`)."""
  draws = getattr(_COLLECTING, "draws", None)
  if draws is not None and _batchable(key, shape, dtype):
    return draws.take(key, tuple(shape))
  return _fastai(jax.random.normal(key, shape, dtype))


def _fastai(normal: jax.Array) -> jax.Array:
  return jnp.fmod(normal, 2.0) * 0.01


def _batchable(key, shape, dtype) -> bool:
  return (np.dtype(dtype) == np.float32 and math.prod(shape) < 2**32
          and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
          and key.shape == ()
          and keys.default_threefry()
          and str(jax.random.key_impl(key)) == "threefry2x32")


class _Draws:
  """The tables one initialisation asks for: recorded on the first pass,
  handed out on the second."""

  def __init__(self):
    self.requests: list[tuple[jax.Array, tuple[int, ...]]] = []
    self.tables: list[jax.Array] | None = None

  def take(self, key, shape):
    if self.tables is None:
      self.requests.append((key, shape))
      return jnp.zeros(shape, jnp.float32)
    if not self.tables or self.tables[0].shape != shape:
      raise RuntimeError("the initialisation asked for different tables on "
                         "its second pass")
    return self.tables.pop(0)

  def draw(self) -> None:
    shapes = tuple(shape for _, shape in self.requests)
    self.tables = list(_draw([key for key, _ in self.requests], shapes))


@functools.partial(jax.jit, static_argnums=1)  # one program when eager, too
def _draw(table_keys, shapes):
  """fastai tables of `shapes`, one per key, from one hash and one map
  over all their elements."""
  sizes = [math.prod(shape) for shape in shapes]
  words = [jax.random.key_data(key) for key in table_keys]
  spread = lambda w: jnp.concatenate([
      jnp.broadcast_to(kd[w], (n,)) for kd, n in zip(words, sizes)])
  counters = jnp.concatenate([jnp.arange(n, dtype=jnp.uint32)
                              for n in sizes])
  hi, lo = keys.hash_pairs(spread(0), spread(1), jnp.zeros_like(counters),
                           counters)
  flat = _fastai(_normal_from_bits(hi ^ lo))
  ends = np.cumsum(sizes)
  return [flat[end - n:end].reshape(shape)
          for end, n, shape in zip(ends, sizes, shapes)]


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


def drawn_together(init):
  """`init` (e.g. a module's `init`) with every `fastai_normal` table it
  asks for drawn in one computation; same values."""

  def run(*args, **kwargs):
    draws, outer = _Draws(), getattr(_COLLECTING, "draws", None)
    _COLLECTING.draws = draws
    try:
      out = init(*args, **kwargs)
      if not draws.requests:
        return out
      draws.draw()
      out = init(*args, **kwargs)
    finally:
      _COLLECTING.draws = outer
    if draws.tables:
      raise RuntimeError("the initialisation asked for fewer tables on its "
                         "second pass")
    return out

  return run
