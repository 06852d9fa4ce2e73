"""jaxcf.models.tableinit draws all of a model's fastai tables at once: the
values must be jax.random.normal's, table by table, bit for bit; every
family's initialisation is checked in tests/test_families.py."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxcf import keys
from jaxcf.models import layers, tableinit

SHAPES = [(94, 5), (166, 5), (94, 1), (166, 1), (1,), (3, 0, 2)]


def by_table(key, shapes, dtype=jnp.float32):
  """The reference: one jax.random.normal per table, table i's key the
  i-th of split(key)."""
  return [jnp.fmod(jax.random.normal(k, s, dtype), 2.0) * 0.01
          for k, s in zip(split(key, shapes), shapes)]


def split(key, shapes):
  return list(jax.random.split(key, len(shapes)))


def together(key, shapes, dtype=jnp.float32):
  def init(table_keys):
    return [tableinit.fastai_normal(k, s, dtype)
            for k, s in zip(table_keys, shapes)]
  return tableinit.drawn_together(init)(split(key, shapes))


def assert_same(got, want):
  assert len(got) == len(want)
  for g, w in zip(got, want):
    assert g.dtype == w.dtype and g.shape == w.shape
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 2**31 - 1),
       st.lists(st.tuples(st.integers(0, 300), st.integers(1, 9)),
                min_size=1, max_size=3))
def test_tables_drawn_together_are_jax_random_bit_for_bit(seed, shapes):
  key = jax.random.key(seed)
  assert_same(jax.jit(lambda k: together(k, shapes))(key),
              jax.jit(lambda k: by_table(k, shapes))(key))


def test_compiled_vmapped_and_eager_draws_agree():
  key = jax.random.key(11)
  want = by_table(key, SHAPES)
  assert_same(jax.jit(lambda k: together(k, SHAPES))(key), want)
  assert_same(together(key, SHAPES), want)
  stacked = jax.random.split(key, 3)  # a sweep's replicas
  got = jax.jit(jax.vmap(lambda k: together(k, SHAPES)))(stacked)
  for r in range(3):
    assert_same([g[r] for g in got], by_table(stacked[r], SHAPES))


def test_one_pass_draws_in_one_hash():
  """The point of it: the program holds no threefry2x32 primitive (the
  hash jax.random.normal compiles once per table), and one hash of its
  own: 5 x 4 rotations, each one shift left."""
  table_keys = split(jax.random.key(0), SHAPES)
  init = lambda ks: [tableinit.fastai_normal(k, s)
                     for k, s in zip(ks, SHAPES)]
  by_jax = jax.jit(init).lower(table_keys).as_text()
  assert by_jax.count("threefry2x32") >= len(SHAPES)
  ours = jax.jit(tableinit.drawn_together(init)).lower(table_keys).as_text()
  assert "threefry2x32" not in ours
  assert ours.count("stablehlo.shift_left") == 20


@pytest.mark.parametrize("case", ["bfloat16", "rbg", "raw key",
                                  "not partitionable"])
def test_other_draws_go_through_jax_random(case):
  key, dtype = jax.random.key(5), jnp.float32
  if case == "bfloat16":
    dtype = jnp.bfloat16
  if case == "rbg":
    key = jax.random.key(5, impl="rbg")
  if case == "raw key":
    key = jax.random.PRNGKey(5)
  if case == "not partitionable":
    with jax.threefry_partitionable(False):
      assert_same(together(key, SHAPES), by_table(key, SHAPES))
    return
  assert_same(together(key, SHAPES, dtype), by_table(key, SHAPES, dtype))


def test_an_init_that_changes_between_passes_is_refused():
  calls = []

  def init(key):
    calls.append(1)
    shapes = [(4, 2)] if len(calls) == 1 else [(4, 3)]
    return [tableinit.fastai_normal(key, s) for s in shapes]

  with pytest.raises(RuntimeError, match="different tables"):
    tableinit.drawn_together(init)(jax.random.key(0))
  assert getattr(tableinit._COLLECTING, "draws", None) is None  # pylint: disable=protected-access


def test_tables_under_an_inner_transformation_are_drawn_on_their_own():
  """Keys of another trace (nn.remat, an inner jit) cannot wait for the
  outer draw: those tables come from jax.random.normal, same values, and
  an inner jit's cache keeps no zeros."""
  embed = lambda n, f: nn.Embed(n, f,
                                embedding_init=layers.fastai_embedding_init)

  class Inner(nn.Module):
    @nn.compact
    def __call__(self, x):
      return embed(7, 3)(x)

  class Outer(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.remat(Inner)()(x).sum() + embed(5, 2)(x).sum()

  x, key = jnp.zeros((1,), jnp.int32), jax.random.key(4)
  module = Outer()
  assert_same(jax.tree.leaves(jax.jit(tableinit.drawn_together(
      module.init))(key, x)), jax.tree.leaves(jax.jit(module.init)(key, x)))
  inner = jax.jit(lambda k: tableinit.fastai_normal(k, (3, 2)))
  want = by_table(key, [(3, 2)])
  table_key = split(key, [(3, 2)])
  assert_same(tableinit.drawn_together(lambda ks: [inner(ks[0])])(table_key),
              want)
  assert_same([inner(table_key[0])], want)


def test_collecting_ends_with_the_init_whatever_happens():
  def fewer(table_keys, calls=[]):  # pylint: disable=dangerous-default-value
    calls.append(1)
    return [tableinit.fastai_normal(k, (2, 2))
            for k in table_keys[:3 - len(calls)]]

  with pytest.raises(RuntimeError, match="fewer tables"):
    tableinit.drawn_together(fewer)(split(jax.random.key(0), [0, 0]))

  def broken(table_keys):
    tableinit.fastai_normal(table_keys[0], (2, 2))
    raise ValueError("bad init")

  with pytest.raises(ValueError, match="bad init"):
    tableinit.drawn_together(broken)(split(jax.random.key(0), [0]))
  assert getattr(tableinit._COLLECTING, "draws", None) is None  # pylint: disable=protected-access


def test_hash_pairs_in_jax_equal_numpy():
  rng = np.random.default_rng(0)
  k1, k2, x1, x2 = (rng.integers(0, 2**32, 64, dtype=np.uint32)
                    for _ in range(4))
  want = keys.hash_pairs(k1, k2, x1, x2)
  got = jax.jit(keys.hash_pairs)(k1, k2, x1, x2)
  for g, w in zip(got, want):
    np.testing.assert_array_equal(np.asarray(g), w)


class TwoTables(nn.Module):
  """Two fastai tables; `derive` maps the key Flax hands the second
  initialiser to the key it draws with."""
  derive: object = None

  @nn.compact
  def __call__(self, users, items):
    second = layers.fastai_embedding_init
    if self.derive is not None:
      second = lambda k, s, d=jnp.float32: layers.fastai_embedding_init(
          self.derive(k), s, d)
    return (nn.Embed(9, 3, embedding_init=layers.fastai_embedding_init)(
        users).sum() + nn.Embed(7, 2, embedding_init=second)(items).sum())


class NoTables(nn.Module):
  @nn.compact
  def __call__(self, users, items):
    return nn.Dense(3)((users + items)[:, None].astype(jnp.float32))


def table_keys_traced(module, key):
  """The data of the keys the module's init gives its tables, in JAX."""
  got = []
  real = tableinit.fastai_normal

  def record(k, shape, dtype=jnp.float32):
    got.append(jax.random.key_data(k))
    return real(k, shape, dtype)

  ids = jnp.zeros((1,), jnp.int32)
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(layers, "fastai_embedding_init", record)
    module.init(key, ids, ids)
  return np.stack(got)


@pytest.mark.parametrize("seed", [0, 7, 2**31 - 1])
def test_host_keys_are_the_keys_flax_derives(seed):
  """host_keys replays the trace's fold_ins on the host: the same keys,
  and tables drawn with them equal those the init draws itself."""
  module, key = TwoTables(), jax.random.key(seed)
  host = tableinit.host_keys(module, key)
  np.testing.assert_array_equal(host, table_keys_traced(module, key))
  ids = jnp.zeros((1,), jnp.int32)
  # host passed in, not closed over: XLA would fold the draw of a constant
  # at compile time, with its own erfinv (1 ulp off for seed 7)
  drawn = jax.jit(lambda k, h: tableinit.drawn_together(module.init, h)(
      k, ids, ids))(key, host)
  assert_same(jax.tree.leaves(drawn),
              jax.tree.leaves(jax.jit(module.init)(key, ids, ids)))
  shapes = tableinit.traced_init(module).params
  assert [x.shape for x in jax.tree.leaves(shapes)] == [(9, 3), (7, 2)]


def test_host_keys_leave_what_they_cannot_replay_to_the_init():
  """A derivation that is not fold_ins of constants (here a split), or a
  key that is not threefry, gives None; wrong table_keys are refused."""
  split_second = TwoTables(derive=lambda k: jax.random.split(k)[1])
  assert tableinit.host_keys(split_second, jax.random.key(1)) is None
  assert tableinit.host_keys(TwoTables(), jax.random.key(1, impl="rbg")) is None
  assert tableinit.host_keys(NoTables(), jax.random.key(1)) is None
  ids = jnp.zeros((1,), jnp.int32)
  wrong = np.zeros((3, 2), np.uint32)
  with pytest.raises(RuntimeError, match="for 2 tables"):
    tableinit.drawn_together(TwoTables().init, wrong)(jax.random.key(1), ids,
                                                      ids)
