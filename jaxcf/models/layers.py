"""Layers and initialisers the model families share, as fastai/PyTorch has them.

* embeddings: N(0, 1) wrapped into (-2, 2) by fmod, times 0.01;
* linear layers: PyTorch's default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for
  weights and biases;
* batch norm: scale 1, bias 1e-3, PyTorch's running statistics;
* `sigmoid_range` into a y_range kept in the 'constants' collection, so that
  replicas stacked under `jax.vmap` can each have their own.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcf.models import tableinit

YRange = tuple[float, float] | None


def sigmoid_range(x: jax.Array, low: float, high: float) -> jax.Array:
  """Squashes x into (low, high): sigmoid(x) * (high - low) + low."""
  return jax.nn.sigmoid(x) * (high - low) + low


def squash(module: nn.Module, x: jax.Array) -> jax.Array:
  """sigmoid_range into module.y_range, unless it is None.

  The range is a variable (collection 'constants', float32 [2]), not baked
  into the program, so that replicas stacked under `jax.vmap` can each have
  their own; `y_range` gives its value at initialisation.
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
  """fastai's `trunc_normal_(std=0.01)`: N(0,1), fmod 2, times 0.01 (all
  of a model's tables in one draw inside `tableinit.drawn_together`)."""
  return tableinit.fastai_normal(key, shape, dtype)


# PyTorch's nn.Linear init: kaiming_uniform(a=sqrt(5)) is U(+-1/sqrt(fan_in)).
torch_kernel_init = nn.initializers.variance_scaling(1 / 3, "fan_in",
                                                     "uniform")


def torch_bias_init(fan_in: int):
  """PyTorch's nn.Linear bias init: U(+-1/sqrt(fan_in))."""
  bound = 1.0 / fan_in**0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def embed(module: nn.Module, n: int, features: int, name: str) -> nn.Embed:
  """A table [n, features] stored in module.param_dtype, looked up in
  module.compute_dtype, initialised as fastai does."""
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
    return nn.Dense(self.features, use_bias=self.use_bias,
                    kernel_init=torch_kernel_init,
                    bias_init=torch_bias_init(x.shape[-1]),
                    param_dtype=self.param_dtype, dtype=self.compute_dtype,
                    name="dense")(x)


def linear(module: nn.Module, features: int, use_bias: bool = True) -> Linear:
  """A Linear in the module's dtypes."""
  return Linear(features, use_bias, module.param_dtype, module.compute_dtype)


@jax.custom_vjp
def batch_normalise(x: jax.Array, scale: jax.Array,
                    bias: jax.Array) -> jax.Array:
  """[batch, features] -> (x - mean) / sqrt(var + 1e-5) * scale + bias, with
  the batch's mean and biased variance per feature (float32).

  Its gradient is the closed form PyTorch's batch-norm backward uses, with
  xhat = (x - mean) * rstd and N the batch size:
    dx = scale * rstd * (dy - mean(dy) - xhat * mean(dy * xhat)),
    dscale = sum(dy * xhat), dbias = sum(dy).
  Differentiating the forward op by op instead costs a quarter of an
  embedding_nn step at bs 8192 on a CPU (benchmarks/throughput.py).
  """
  return _normalise_forward(x, scale, bias)[0]


def _normalise_forward(x, scale, bias):
  mean = x.mean(axis=0)
  rstd = jax.lax.rsqrt(x.var(axis=0) + BatchNorm.epsilon)
  xhat = (x - mean) * rstd
  return xhat * scale + bias, (xhat, rstd, scale)


def _normalise_backward(saved, dy):
  xhat, rstd, scale = saved
  dbias = dy.sum(axis=0)
  dscale = (dy * xhat).sum(axis=0)
  n = dy.shape[0]
  dx = (scale * rstd) * (dy - dbias / n - xhat * (dscale / n))
  return dx, dscale, dbias


batch_normalise.defvjp(_normalise_forward, _normalise_backward)


class BatchNorm(nn.Module):
  """PyTorch's BatchNorm1d over the batch axis, as fastai initialises it.

  Training normalises with the batch mean and biased variance
  (`batch_normalise`) and moves the running statistics by `momentum`
  towards the batch mean and the unbiased variance; evaluation normalises
  with the running statistics.
  """
  momentum: float = 0.1
  epsilon = 1e-5  # PyTorch's; a class constant, batch_normalise's too

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = x.astype(jnp.float32)  # statistics in float32 whatever the inputs
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,))
    bias = self.param("bias", nn.initializers.constant(1e-3), (features,))
    mean_ = self.variable("batch_stats", "mean", jnp.zeros, (features,))
    var_ = self.variable("batch_stats", "var", jnp.ones, (features,))
    if not train:
      return ((x - mean_.value) * jax.lax.rsqrt(var_.value + self.epsilon)
              * scale + bias)
    if not self.is_initializing():
      # The same statistics batch_normalise computes (XLA computes them
      # once); no gradient flows through the running ones.
      stats = jax.lax.stop_gradient(x)
      n = x.shape[0]
      m = self.momentum
      mean_.value = (1 - m) * mean_.value + m * stats.mean(axis=0)
      var_.value = ((1 - m) * var_.value
                    + m * stats.var(axis=0) * (n / max(n - 1, 1)))
    return batch_normalise(x, scale, bias)


def concat_embeddings(module: nn.Module, users, items) -> jax.Array:
  """[batch, user_size + item_size]: the user and item embeddings side by
  side, sized by `embedding_size` unless the module gives user_size and
  item_size."""
  user_size = module.user_size or embedding_size(module.n_users)
  item_size = module.item_size or embedding_size(module.n_items)
  u = embed(module, module.n_users, user_size, "user_factors")(users)
  i = embed(module, module.n_items, item_size, "item_factors")(items)
  return jnp.concatenate([u, i], axis=-1)
