"""Model shapes, parameter counts, initialisation and BatchNorm semantics."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcf import models
from jaxcf.errors import UserError

# The book's vocabulary: 943 users and 1664 titles, plus '#na#' each.
N_USERS, N_ITEMS = 944, 1665


@pytest.mark.parametrize("name, count", [
    ("dot", 944 * 50 + 1665 * 50),
    ("dot_bias", 133_059),  # fastai's EmbeddingDotBias
    ("collab_nn", 257_487),  # the book's CollabNN
    ("embedding_nn", 262_637),  # fastai's EmbeddingNN, layers [100, 50]
])
def test_parameter_counts_equal_fastai(name, count):
  model = models.create(name, N_USERS, N_ITEMS)
  assert models.count_params(model) == count


def test_embedding_size_rule():
  assert models.embedding_size(N_USERS) == 74
  assert models.embedding_size(N_ITEMS) == 102
  assert models.embedding_size(10**7) == 600


def test_sigmoid_range():
  x = jnp.array([-100.0, 0.0, 100.0])
  np.testing.assert_allclose(models.sigmoid_range(x, 0, 5.5),
                             [0.0, 2.75, 5.5], atol=1e-6)


@pytest.mark.parametrize("name", [n for n, f in models.FAMILIES.items()
                                  if "y_range" in f.settings])
def test_outputs_are_batch_shaped_and_in_range(name):
  side = {} if models.get(name).needs_side else None
  model = models.create(name, 30, 20, y_range=(1.0, 5.0), side=side)
  users = jnp.arange(16, dtype=jnp.int32) % 30
  items = jnp.arange(16, dtype=jnp.int32) % 20
  variables = model.init(jax.random.key(0), users, items)
  out = model.apply(variables, users, items)
  chex.assert_shape(out, (16,))
  assert out.dtype == jnp.float32
  assert bool(jnp.all((out > 1.0) & (out < 5.0)))


def test_dot_without_y_range_is_the_dot_product():
  model = models.create("dot", 5, 4, y_range=None)
  variables = model.init(jax.random.key(0), jnp.zeros(1, jnp.int32),
                         jnp.zeros(1, jnp.int32))
  p = variables["params"]
  u, i = jnp.array([1, 4]), jnp.array([3, 0])
  want = jnp.sum(p["user_factors"]["embedding"][u] *
                 p["item_factors"]["embedding"][i], axis=-1)
  np.testing.assert_allclose(model.apply(variables, u, i), want, rtol=1e-6)


def test_fastai_embedding_init():
  w = models.fastai_embedding_init(jax.random.key(0), (2000, 50))
  assert float(jnp.abs(w).max()) < 0.02  # fmod(2) wraps into (-2, 2) * 0.01
  # N(0,1) folded into (-2, 2) has std 0.87.
  assert float(jnp.std(w)) == pytest.approx(0.0087, rel=0.03)


def test_linear_init_is_pytorchs():
  layer = models.Linear(100)
  params = layer.init(jax.random.key(0), jnp.zeros((1, 400)))["params"]
  bound = 1 / 400**0.5
  for w in (params["dense"]["kernel"], params["dense"]["bias"]):
    assert float(jnp.abs(w).max()) <= bound
    assert float(jnp.abs(w).max()) > 0.9 * bound


def test_batchnorm_matches_torch_semantics():
  """Train: batch stats (biased var), running var moves by the unbiased."""
  x = jax.random.normal(jax.random.key(1), (8, 3)) * 2 + 1
  bn = models.BatchNorm()
  variables = bn.init(jax.random.key(0), x, train=False)
  y, updates = bn.apply(variables, x, train=True, mutable=["batch_stats"])
  xn = np.asarray(x, np.float64)
  mean, var = xn.mean(0), xn.var(0)
  np.testing.assert_allclose(y, (xn - mean) / np.sqrt(var + 1e-5) + 1e-3,
                             rtol=1e-5, atol=1e-5)
  stats = updates["batch_stats"]
  np.testing.assert_allclose(stats["mean"], 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * xn.var(0, ddof=1),
                             rtol=1e-5)
  # Evaluation normalises with the running statistics, not the batch's.
  y_eval = bn.apply({"params": variables["params"], **updates}, x,
                    train=False)
  want = (xn - 0.1 * mean) / np.sqrt(np.asarray(stats["var"]) + 1e-5) + 1e-3
  np.testing.assert_allclose(y_eval, want, rtol=1e-5, atol=1e-5)


def test_batchnorm_gradient_is_the_closed_form_of_its_forward():
  """batch_normalise's hand-written backward equals autodiff of the plain
  formula (float64, so only the algebra can differ), also under vmap."""
  def plain(x, scale, bias):
    mean, var = x.mean(0), x.var(0)
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * scale + bias

  keys = jax.random.split(jax.random.key(2), 4)
  with jax.enable_x64(True):
    x = jax.random.normal(keys[0], (3, 40, 5), jnp.float64) * 3 + 1
    scale = jax.random.normal(keys[1], (3, 5), jnp.float64)
    bias = jax.random.normal(keys[2], (3, 5), jnp.float64)
    weights = jax.random.normal(keys[3], (40, 5), jnp.float64)
    loss = lambda f: lambda *a: (jnp.sin(f(*a)) * weights).sum()
    grads = jax.vmap(jax.grad(loss(models.layers.batch_normalise),
                              argnums=(0, 1, 2)))(x, scale, bias)
    want = jax.vmap(jax.grad(loss(plain), argnums=(0, 1, 2)))(x, scale,
                                                             bias)
    for got, ref in zip(grads, want):
      np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
      assert float(jnp.abs(ref).max()) > 1e-3  # not trivially zero


def test_embedding_nn_layer_structure():
  model = models.create("embedding_nn", N_USERS, N_ITEMS, layers=[100, 50])
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros(1, jnp.int32), jnp.zeros(1, jnp.int32))
  params = shapes["params"]
  hidden = [v for k, v in sorted(params.items()) if k.startswith("Linear")]
  # Hidden Linears have no bias (BatchNorm follows); the output Linear has one.
  assert [sorted(h["dense"]) for h in hidden] == [["kernel"], ["kernel"],
                                                  ["bias", "kernel"]]
  assert set(shapes["batch_stats"]) == {"BatchNorm_0", "BatchNorm_1"}


def test_unknown_model():
  with pytest.raises(UserError, match="--model=svd is unknown; choose one of "
                     "dot, dot_bias"):
    models.create("svd", 3, 3)


@pytest.mark.parametrize("name", ["dot_bias", "embedding_nn"])
def test_bfloat16_weights_halve_the_bytes_and_keep_float32_outputs(name):
  full = models.create(name, N_USERS, N_ITEMS)
  half = models.create(name, N_USERS, N_ITEMS, param_dtype="bfloat16",
                       compute_dtype="bfloat16")
  assert models.count_params(half) == models.count_params(full)
  # BatchNorm's few parameters stay float32; every table and kernel halves.
  assert models.param_bytes(half) < 0.51 * models.param_bytes(full)
  users = jnp.arange(1, 9, dtype=jnp.int32)
  variables = half.init(jax.random.key(0), users, users)
  tables = [v for k, v in variables["params"].items()
            if k.endswith("factors")]
  assert tables and all(t["embedding"].dtype == jnp.bfloat16 for t in tables)
  out = half.apply(variables, users, users)
  assert out.dtype == jnp.float32
  # The same initial weights in float32 predict nearly the same.
  as_full = jax.tree.map(lambda x: x.astype(jnp.float32), variables)
  np.testing.assert_allclose(out, full.apply(as_full, users, users),
                             atol=2e-2)


def test_unknown_dtype():
  with pytest.raises(UserError, match="--param_dtype=float16 must be one of"):
    models.create("dot_bias", 5, 5, param_dtype="float16")
