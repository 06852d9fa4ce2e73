"""jaxcf.keys draws a run's keys and epoch seeds on the host: they must be
jax.random's values bit for bit, under any PRNG configuration."""

import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxcf import keys

data = lambda key: np.asarray(jax.random.key_data(key))


@settings(max_examples=40, deadline=None)
@given(st.integers(-2**31, 2**31 - 1), st.integers(0, 2**32 - 1))
def test_run_keys_and_folds_are_jax_random_bit_for_bit(seed, n):
  got, want = keys.run_keys(seed), jax.random.split(jax.random.key(seed))
  for g, w in zip(got, want):
    np.testing.assert_array_equal(data(g), data(w))
  np.testing.assert_array_equal(data(keys.fold_key(got[1], n)),
                                data(jax.random.fold_in(want[1], n)))


def test_epoch_seeds_are_jax_folds():
  key = jax.random.key(7)
  want = np.stack([data(jax.random.fold_in(key, e)) for e in range(12)])
  np.testing.assert_array_equal(keys.fold_seeds(key, 12), want)


@pytest.mark.parametrize("seed", [0, 5, -1, -2**31, 2**40 + 5, -2**40,
                                  np.int32(7), np.int64(-5)])
def test_x64_seeds_are_their_int64_words(seed):
  with jax.enable_x64(True):
    for g, w in zip(keys.run_keys(seed),
                    jax.random.split(jax.random.key(seed))):
      np.testing.assert_array_equal(data(g), data(w))


@pytest.mark.parametrize("seed", [2**31, -2**31 - 1, 2**40, np.int32(7)])
def test_numpy_and_wide_seeds(seed):
  for g, w in zip(keys.run_keys(seed),
                  jax.random.split(jax.random.key(seed))):
    np.testing.assert_array_equal(data(g), data(w))


def test_other_prng_configurations_go_through_jax():
  with jax.threefry_partitionable(False):
    assert not keys.threefry_is_default()
    for g, w in zip(keys.run_keys(3), jax.random.split(jax.random.key(3))):
      np.testing.assert_array_equal(data(g), data(w))
    key = jax.random.key(3)
    np.testing.assert_array_equal(
        keys.fold_seeds(key, 3),
        np.stack([data(jax.random.fold_in(key, e)) for e in range(3)]))
  rbg = jax.random.key(3, impl="rbg")
  np.testing.assert_array_equal(
      keys.fold_seeds(rbg, 2),
      np.stack([data(jax.random.fold_in(rbg, e)) for e in range(2)]))
  np.testing.assert_array_equal(data(keys.fold_key(rbg, 1)),
                                data(jax.random.fold_in(rbg, 1)))


def test_a_batch_of_keys_is_refused():
  with pytest.raises(ValueError, match="one key expected"):
    keys.fold_seeds(jax.random.split(jax.random.key(0)), 3)
