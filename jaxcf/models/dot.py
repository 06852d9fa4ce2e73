"""The chapter's dot-product models: `dot` and `dot_bias` (fastai's
EmbeddingDotBias).

    dot:       y = sigmoid_range(u . i)                 (or u . i, no range)
    dot_bias:  y = sigmoid_range(u . i + b_u + b_i)

with user factors u and item factors i [n_factors], biases b [1]. The score
before `sigmoid_range` is linear in the user's rows, so a new user is folded
in by ridge regression in closed form.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcf.models import registry
from jaxcf.models.layers import YRange, embed, squash


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
    u = embed(self, self.n_users, self.n_factors, "user_factors")(users)
    i = embed(self, self.n_items, self.n_factors, "item_factors")(items)
    return squash(self, jnp.sum(u * i, axis=-1, dtype=jnp.float32))


class DotProductBias(DotProduct):
  """The book's DotProductBias, which is fastai's EmbeddingDotBias.

  sigmoid_range(u . i + b_u + b_i, *y_range), with bias tables of width 1.
  """
  y_range: YRange = (0.0, 5.5)

  @nn.compact
  def __call__(self, users, items, train: bool = False, times=None):
    u, i, bu, bi = factors_and_biases(self, users, items)
    return squash(self, jnp.sum(u * i, axis=-1, dtype=jnp.float32) + bu + bi)


def factors_and_biases(module: nn.Module, users, items):
  """(u [batch, f], i [batch, f], b_u [batch], b_i [batch]): the looked-up
  factors (compute dtype) and biases (float32) of tables user_factors,
  item_factors, user_bias and item_bias."""
  u = embed(module, module.n_users, module.n_factors, "user_factors")(users)
  i = embed(module, module.n_items, module.n_factors, "item_factors")(items)
  bu = embed(module, module.n_users, 1, "user_bias")(users)[..., 0]
  bi = embed(module, module.n_items, 1, "item_bias")(items)[..., 0]
  return u, i, bu.astype(jnp.float32), bi.astype(jnp.float32)


def _table(params, name: str) -> np.ndarray:
  return np.asarray(params[name]["embedding"], np.float64)


def _dot_design(params, items):
  """X = the items' factors [n, f]: the score is X @ u."""
  return _table(params, "item_factors")[items], np.zeros(len(items))


def _dot_bias_design(params, items):
  """X = [item factors, 1] [n, f + 1], offset b_i: the score is
  X @ [u, b_u] + b_i."""
  q = _table(params, "item_factors")[items]
  return (np.concatenate([q, np.ones((len(items), 1))], axis=1),
          _table(params, "item_bias")[items, 0])


def _table_of(variables, name):
  return variables["params"][name]["embedding"]


def _squash_scores(module, variables, x):
  """`layers.squash` outside the module: sigmoid_range into the y_range
  the variables hold (none: x)."""
  if module.y_range is None:
    return x
  low, high = variables["constants"]["y_range"]
  return jax.nn.sigmoid(x) * (high - low) + low


def all_item_scores(variables, module, users, weight=None, offset=0.0):
  """[len(users), n_items] scores of every item, one matmul: the users'
  factors (times `weight` [f], if given) against every item's, plus the
  biases where the model has them and `offset`, through sigmoid_range."""
  dtype = module.compute_dtype
  u = _table_of(variables, "user_factors")[users].astype(dtype)
  if weight is not None:
    u = u * weight.astype(dtype)
  items = _table_of(variables, "item_factors").astype(dtype)
  x = jnp.dot(u, items.T, preferred_element_type=jnp.float32) + offset
  if "user_bias" in variables["params"]:
    x = (x + _table_of(variables, "user_bias")[users].astype(jnp.float32)
         + _table_of(variables, "item_bias")[:, 0].astype(jnp.float32))
  return _squash_scores(module, variables, x)


def _create(cls):
  def create(spec, n_users, n_items, side):
    del side
    return cls(n_users, n_items, n_factors=spec.n_factors,
               y_range=spec.y_range, **registry.dtypes(spec))
  return create


def _resize(module, rows: int):
  return module.clone(n_users=rows, n_items=rows)


SETTINGS = frozenset({"n_factors", "y_range", "param_dtype",
                      "compute_dtype"})

registry.register(registry.Family(
    name="dot", module=DotProduct, create=_create(DotProduct), settings=SETTINGS,
    tables={"user_factors": "users", "item_factors": "items"},
    resize=_resize, fold_in="ridge", design=_dot_design,
    user_rows=("user_factors",), scores=all_item_scores))

registry.register(registry.Family(
    name="dot_bias", module=DotProductBias, create=_create(DotProductBias), settings=SETTINGS,
    tables={"user_factors": "users", "user_bias": "users",
            "item_factors": "items", "item_bias": "items"},
    resize=_resize, fold_in="ridge", design=_dot_bias_design,
    user_rows=("user_factors", "user_bias"), scores=all_item_scores))
