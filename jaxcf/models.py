"""Collaborative-filtering models as Flax Linen modules.

Every model maps int32 user and item indices [batch] to predicted ratings
[batch] (float32), as `model.apply(variables, users, items, train=...,
times=...)`; only SideNN uses the rating times, the others ignore them. Initialisation follows fastai/PyTorch so that parameter
counts and starting points match the reference:

* embeddings: N(0, 1) wrapped into (-2, 2) by fmod, times 0.01;
* linear layers: PyTorch's default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for
  weights and biases;
* batch norm: scale 1, bias 1e-3, PyTorch's running statistics.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

YRange = tuple[float, float] | None


def sigmoid_range(x: jax.Array, low: float, high: float) -> jax.Array:
  """Squashes x into (low, high): sigmoid(x) * (high - low) + low."""
  return jax.nn.sigmoid(x) * (high - low) + low


def _squash(module: nn.Module, x: jax.Array) -> jax.Array:
  """sigmoid_range into module.y_range, unless it is None.

  The range is kept as a variable (collection 'constants', float32 [2]), not
  baked into the program, so that replicas stacked under `jax.vmap` can each
  have their own; `y_range` gives its value at initialisation.
  """
  if module.y_range is None:
    return x
  y_range = module.variable("constants", "y_range", jnp.asarray,
                            module.y_range, jnp.float32).value
  return sigmoid_range(x, y_range[0], y_range[1])


def embedding_size(n: int) -> int:
  """fastai's rule of thumb for a table of n rows: min(600, 1.6 n^0.56)."""
  return min(600, round(1.6 * n**0.56))


def fastai_embedding_init(key, shape, dtype=jnp.float32) -> jax.Array:
  """fastai's `trunc_normal_(std=0.01)`: N(0,1), fmod 2, times 0.01."""
  return jnp.fmod(jax.random.normal(key, shape, dtype), 2.0) * 0.01


# PyTorch's nn.Linear init: kaiming_uniform(a=sqrt(5)) is U(+-1/sqrt(fan_in)).
torch_kernel_init = nn.initializers.variance_scaling(1 / 3, "fan_in",
                                                     "uniform")


def _torch_bias_init(fan_in: int):
  bound = 1.0 / fan_in**0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _embed(module: nn.Module, n: int, features: int, name: str) -> nn.Embed:
  """A table stored in module.param_dtype, looked up in compute_dtype."""
  return nn.Embed(n, features, embedding_init=fastai_embedding_init,
                  param_dtype=module.param_dtype, dtype=module.compute_dtype,
                  name=name)


class Linear(nn.Module):
  """A dense layer initialised like PyTorch's nn.Linear."""
  features: int
  use_bias: bool = True
  param_dtype: Any = jnp.float32
  compute_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    bias_init = _torch_bias_init(x.shape[-1])
    return nn.Dense(self.features, use_bias=self.use_bias,
                    kernel_init=torch_kernel_init, bias_init=bias_init,
                    param_dtype=self.param_dtype, dtype=self.compute_dtype,
                    name="dense")(x)


class BatchNorm(nn.Module):
  """PyTorch's BatchNorm1d over the batch axis, as fastai initialises it.

  Training normalises with the batch mean and biased variance and moves the
  running statistics by `momentum` towards the batch mean and the unbiased
  variance; evaluation normalises with the running statistics.
  """
  momentum: float = 0.1
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = x.astype(jnp.float32)  # statistics in float32 whatever the inputs
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,))
    bias = self.param("bias", nn.initializers.constant(1e-3), (features,))
    mean_ = self.variable("batch_stats", "mean", jnp.zeros, (features,))
    var_ = self.variable("batch_stats", "var", jnp.ones, (features,))
    if train:
      mean, var = x.mean(axis=0), x.var(axis=0)
      if not self.is_initializing():
        n = x.shape[0]
        m = self.momentum
        mean_.value = (1 - m) * mean_.value + m * mean
        var_.value = (1 - m) * var_.value + m * var * (n / max(n - 1, 1))
    else:
      mean, var = mean_.value, var_.value
    return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias


class DotProduct(nn.Module):
  """The chapter's first model: the dot product of user and item factors."""
  n_users: int
  n_items: int
  n_factors: int = 50
  y_range: YRange = None

  param_dtype: Any = jnp.float32
  compute_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, users, items, train: bool = False, times=None):
    u = _embed(self, self.n_users, self.n_factors, "user_factors")(users)
    i = _embed(self, self.n_items, self.n_factors, "item_factors")(items)
    return _squash(self, jnp.sum(u * i, axis=-1, dtype=jnp.float32))


class DotProductBias(nn.Module):
  """The book's DotProductBias, which is fastai's EmbeddingDotBias.

  sigmoid_range(u . i + b_u + b_i, *y_range), with bias tables of width 1.
  """
  n_users: int
  n_items: int
  n_factors: int = 50
  y_range: YRange = (0.0, 5.5)

  param_dtype: Any = jnp.float32
  compute_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, users, items, train: bool = False, times=None):
    u = _embed(self, self.n_users, self.n_factors, "user_factors")(users)
    i = _embed(self, self.n_items, self.n_factors, "item_factors")(items)
    bu = _embed(self, self.n_users, 1, "user_bias")(users)[..., 0]
    bi = _embed(self, self.n_items, 1, "item_bias")(items)[..., 0]
    return _squash(self, jnp.sum(u * i, axis=-1, dtype=jnp.float32)
                   + bu.astype(jnp.float32) + bi.astype(jnp.float32))


class CollabNN(nn.Module):
  """The book's CollabNN: concatenated embeddings through an MLP.

  Embedding widths follow `embedding_size` unless given; hidden layers are
  Linear -> ReLU; the output is one Linear unit squashed into y_range.
  """
  n_users: int
  n_items: int
  layers: Sequence[int] = (100,)
  y_range: YRange = (0.0, 5.5)
  user_size: int | None = None
  item_size: int | None = None

  param_dtype: Any = jnp.float32
  compute_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, users, items, train: bool = False, times=None):
    x = _concat_embeddings(self, users, items)
    for width in self.layers:
      x = nn.relu(_linear(self, width)(x))
    return _squash(self, _linear(self, 1)(x)[..., 0].astype(jnp.float32))


class EmbeddingNN(nn.Module):
  """fastai's EmbeddingNN (a TabularModel of two categorical inputs).

  Each hidden layer is Linear (no bias) -> ReLU -> BatchNorm; no dropout.
  Call with train=True, mutable=['batch_stats'] when training.
  """
  n_users: int
  n_items: int
  layers: Sequence[int] = (100, 50)
  y_range: YRange = (0.0, 5.5)
  user_size: int | None = None
  item_size: int | None = None

  param_dtype: Any = jnp.float32
  compute_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, users, items, train: bool = False, times=None):
    x = _concat_embeddings(self, users, items)
    for width in self.layers:
      x = BatchNorm()(nn.relu(_linear(self, width, use_bias=False)(x)), train)
    return _squash(self, _linear(self, 1)(x)[..., 0].astype(jnp.float32))


class SideNN(nn.Module):
  """EmbeddingNN with side information: the chapter's closing point.

  Besides the user and item id embeddings, it embeds each categorical user
  and item feature (gender, occupation, ...) and takes continuous ones (age,
  genre flags, release year, rating time) through a BatchNorm, as fastai's
  TabularModel does with its continuous inputs; all of it is concatenated
  and fed to EmbeddingNN's layers.

  The feature tables are indexed by the same user/item rows as the id
  embeddings and live in the 'constants' collection ([n_users, k] int32
  'user_cat', [n_users, m] float32 'user_cont', the same for items): fill
  them with `jaxcf.features`. With `id_dropout` > 0, training replaces that
  share of user ids by 0 ('#na#'), so that row learns the unknown user and
  the model learns to predict a new user from features alone.

  Attributes:
    user_cats, item_cats: the cardinality of each categorical feature.
    user_conts, item_conts: how many continuous features.
    use_time: whether the rating time (float32 [batch], `times`) is an
      input; without `times`, `default_time` stands in.
  """
  n_users: int
  n_items: int
  layers: Sequence[int] = (100, 50)
  y_range: YRange = (0.0, 5.5)
  user_cats: tuple[int, ...] = ()
  user_conts: int = 0
  item_cats: tuple[int, ...] = ()
  item_conts: int = 0
  use_time: bool = False
  default_time: float = 1.0
  id_dropout: float = 0.0

  param_dtype: Any = jnp.float32
  compute_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, users, items, train: bool = False, times=None):
    table = lambda name, shape, dtype: self.variable(
        "constants", name, jnp.zeros, shape, dtype).value
    ids = users
    if train and self.id_dropout > 0:
      drop = jax.random.bernoulli(self.make_rng("dropout"), self.id_dropout,
                                  users.shape)
      ids = jnp.where(drop, 0, users)
    parts = [_embed(self, self.n_users, embedding_size(self.n_users),
                    "user_factors")(ids),
             _embed(self, self.n_items, embedding_size(self.n_items),
                    "item_factors")(items)]
    conts = []
    for side, rows, n, cats, n_conts in (
        ("user", users, self.n_users, self.user_cats, self.user_conts),
        ("item", items, self.n_items, self.item_cats, self.item_conts)):
      if cats:
        codes = table(f"{side}_cat", (n, len(cats)), jnp.int32)[rows]
        parts += [_embed(self, c, embedding_size(c),
                         f"{side}_cat{k}")(codes[:, k])
                  for k, c in enumerate(cats)]
      if n_conts:
        conts.append(table(f"{side}_cont", (n, n_conts), jnp.float32)[rows])
    if self.use_time:
      if times is None:
        times = jnp.full(users.shape, self.default_time, jnp.float32)
      conts.append(times[:, None])
    if conts:
      parts.append(BatchNorm(name="bn_cont")(jnp.concatenate(conts, -1),
                                             train))
    x = jnp.concatenate(parts, axis=-1)
    for width in self.layers:
      x = BatchNorm()(nn.relu(_linear(self, width, use_bias=False)(x)), train)
    return _squash(self, _linear(self, 1)(x)[..., 0].astype(jnp.float32))


def _linear(module: nn.Module, features: int, use_bias: bool = True):
  return Linear(features, use_bias, module.param_dtype, module.compute_dtype)


def _concat_embeddings(module, users, items) -> jax.Array:
  user_size = module.user_size or embedding_size(module.n_users)
  item_size = module.item_size or embedding_size(module.n_items)
  u = _embed(module, module.n_users, user_size, "user_factors")(users)
  i = _embed(module, module.n_items, item_size, "item_factors")(items)
  return jnp.concatenate([u, i], axis=-1)


MODELS = {
    "dot": DotProduct,
    "dot_bias": DotProductBias,
    "collab_nn": CollabNN,
    "embedding_nn": EmbeddingNN,
    "side_nn": SideNN,
}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def create(name: str, n_users: int, n_items: int, *, n_factors: int = 50,
           y_range: YRange = (0.0, 5.5),
           layers: Sequence[int] | None = None,
           param_dtype: str = "float32", compute_dtype: str = "float32",
           **side) -> nn.Module:
  """Builds a model by name.

  Args:
    name: one of MODELS.
    n_users, n_items: table rows, counting the `#na#` row.
    n_factors: factor width of the dot models (the NN models size their
      embeddings by `embedding_size`).
    y_range: (low, high) for `sigmoid_range`, or None for a raw output.
    layers: hidden widths of the NN models; None keeps each model's default
      ([100] for collab_nn, [100, 50] for embedding_nn and side_nn).
    param_dtype: what the weights (and so the optimiser's moments) are
      stored in: "float32", or "bfloat16" to halve a large table's memory.
    compute_dtype: what lookups and layers compute in; outputs, the loss
      and BatchNorm statistics stay float32.
    **side: SideNN's feature attributes (user_cats, item_conts, ...).
  """
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; choose one of "
                     f"{', '.join(MODELS)}")
  for dtype in (param_dtype, compute_dtype):
    if dtype not in DTYPES:
      raise ValueError(f"unknown dtype {dtype!r}; choose one of "
                       f"{', '.join(DTYPES)}")
  cls = MODELS[name]
  dtypes = {"param_dtype": DTYPES[param_dtype],
            "compute_dtype": DTYPES[compute_dtype]}
  if cls in (DotProduct, DotProductBias):
    return cls(n_users, n_items, n_factors=n_factors, y_range=y_range,
               **dtypes)
  kwargs = {} if layers is None else {"layers": tuple(layers)}
  if side and cls is not SideNN:
    raise ValueError(f"model {name} takes no side information")
  return cls(n_users, n_items, y_range=y_range, **kwargs, **dtypes, **side)


def _param_shapes(model: nn.Module) -> list[jax.ShapeDtypeStruct]:
  dummy = jnp.zeros((1,), jnp.int32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), dummy, dummy)
  return jax.tree.leaves(shapes["params"])


def count_params(model: nn.Module) -> int:
  """Number of trainable parameters (BatchNorm statistics excluded)."""
  return sum(x.size for x in _param_shapes(model))


def param_bytes(model: nn.Module) -> int:
  """Bytes of the trainable parameters, in their storage dtype."""
  return sum(x.size * x.dtype.itemsize for x in _param_shapes(model))
