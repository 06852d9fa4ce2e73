"""A run's PRNG keys drawn on the host: `jax.random`'s own values, no program.

A training run derives two keys from its integer seed,
`split(key(seed))`, and one data-order seed per epoch,
`key_data(fold_in(order_key, epoch))`. In JAX each of these is a small
compiled program; a cold process compiles them one after another before
the first epoch can start (~0.3 s of a 3 s run on 2 cores). They are a few
dozen rounds of the Threefry-2x32 hash (Salmon et al. 2011, "Parallel
random numbers: as easy as 1, 2, 3"), so numpy computes them here, bit for
bit what `jax.random` gives with its default implementation
(threefry2x32, `jax_threefry_partitionable`; tests/test_keys.py checks
against JAX). Under any other PRNG configuration, or for a seed outside
int32, the functions call `jax.random` instead.

The hash itself, `hash_pairs`, takes numpy or JAX arrays alike:
`models.tableinit` runs it inside a compiled initialisation.
"""

from __future__ import annotations

import jax
import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def threefry_is_default() -> bool:
  """Whether jax.random's keys are threefry2x32, partitionable (element i
  of a draw hashes the counter pair (i // 2**32, i % 2**32))."""
  return (jax.config.jax_default_prng_impl == "threefry2x32"
          and jax.config.jax_threefry_partitionable)


def hash_pairs(k1, k2, x1, x2):
  """The Threefry-2x32 hash (20 rounds) of counter pairs (x1, x2) under the
  key words (k1, k2): uint32 numpy or JAX arrays that broadcast together,
  hashed elementwise (uint32 arithmetic wraps). Returns the two output
  words."""
  ks = (k1, k2, k1 ^ k2 ^ _PARITY)
  x = [x1 + ks[0], x2 + ks[1]]
  for i in range(5):
    for r in _ROTATIONS[i % 2]:
      x[0] = x[0] + x[1]
      x[1] = ((x[1] << np.uint32(r)) | (x[1] >> np.uint32(32 - r))) ^ x[0]
    x[0] = x[0] + ks[(i + 1) % 3]
    x[1] = x[1] + ks[(i + 2) % 3] + np.uint32(i + 1)
  return x[0], x[1]


def threefry2x32(key: np.ndarray, x1: np.ndarray, x2: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
  """`hash_pairs` in numpy under one key, uint32 [2]."""
  return hash_pairs(np.uint32(key[0]), np.uint32(key[1]),
                    np.asarray(x1, np.uint32), np.asarray(x2, np.uint32))


def _x64() -> bool:
  return jax.dtypes.canonicalize_dtype(np.int64) == np.int64


def seed_key_data(seed: int) -> np.ndarray:
  """uint32 [2]: key_data(jax.random.key(seed)), the seed's two 32-bit
  words: with 64-bit types on, of the seed as an int64; else, of it as an
  int32 (the high word 0)."""
  seed = int(seed)
  return np.array([(seed >> 32) & 0xFFFFFFFF if _x64() else 0,
                   seed & 0xFFFFFFFF], np.uint32)


def split(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The key data of jax.random.split(key) (two keys)."""
  hi, lo = threefry2x32(key, np.zeros(2, np.uint32), np.arange(2,
                                                               dtype=np.uint32))
  return np.array([hi[0], lo[0]]), np.array([hi[1], lo[1]])


def fold_in(key: np.ndarray, data) -> np.ndarray:
  """uint32 [n, 2]: the key data of fold_in(key, d) for each d of `data`
  (non-negative ints below 2**32)."""
  d = np.asarray(data, np.uint32).reshape(-1)
  # fold_in hashes the counter pair key(d) = (0, d); the hash is elementwise,
  # so one call hashes every d.
  hi, lo = threefry2x32(key, np.zeros_like(d), d)
  return np.stack([hi, lo], axis=1)


def run_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """(initialisation key, data-order key): split(key(seed))."""
  bits = 63 if _x64() else 31
  if threefry_is_default() and -2**bits <= int(seed) < 2**bits:
    return tuple(jax.random.wrap_key_data(k) for k in split(
        seed_key_data(seed)))
  return tuple(jax.random.split(jax.random.key(seed)))


def threefry_key(key: jax.Array) -> bool:
  """Whether `key`, a typed key, is a threefry2x32 key under the default
  (partitionable) configuration: `hash_pairs` gives its draws."""
  return (threefry_is_default()
          and str(jax.random.key_impl(key)) == "threefry2x32")


def _threefry(key: jax.Array) -> bool:
  if key.shape:
    raise ValueError(f"one key expected, not an array of shape {key.shape}")
  return threefry_key(key)


def fold_seeds(key: jax.Array, count: int) -> np.ndarray:
  """uint32 [count, 2]: key_data(fold_in(key, i)) for i < count."""
  if _threefry(key):
    return fold_in(np.asarray(jax.random.key_data(key)), np.arange(count))
  fold = lambda e: jax.random.key_data(jax.random.fold_in(key, e))
  return np.asarray(jax.vmap(fold)(np.arange(count)))


def fold_key(key: jax.Array, n: int) -> jax.Array:
  """fold_in(key, n)."""
  if _threefry(key):
    return jax.random.wrap_key_data(
        fold_in(np.asarray(jax.random.key_data(key)), [n])[0])
  return jax.random.fold_in(key, n)
