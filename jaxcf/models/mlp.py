"""The chapter's neural models: `collab_nn` (the book's CollabNN) and
`embedding_nn` (fastai's EmbeddingNN, a TabularModel of two categories).

Both concatenate a user and an item embedding, sized by fastai's rule
`embedding_size` (74 and 102 on the book's data), and feed an MLP:

    collab_nn:    x -> [Linear -> ReLU] per layer -> Linear(1) -> sigmoid_range
    embedding_nn: x -> [Linear (no bias) -> ReLU -> BatchNorm] per layer
                    -> Linear(1) -> sigmoid_range

The prediction is not linear in the user's embedding, so a new user is
folded in by gradient steps.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxcf.models import registry
from jaxcf.models.layers import (BatchNorm, YRange, concat_embeddings,
                                 embedding_size, linear, squash)


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
    x = concat_embeddings(self, users, items)
    for width in self.layers:
      x = nn.relu(linear(self, width)(x))
    return squash(self, linear(self, 1)(x)[..., 0].astype(jnp.float32))


class EmbeddingNN(CollabNN):
  """fastai's EmbeddingNN (a TabularModel of two categorical inputs).

  Each hidden layer is Linear (no bias) -> ReLU -> BatchNorm; no dropout.
  Call with train=True, mutable=['batch_stats'] when training.
  """
  layers: Sequence[int] = (100, 50)

  @nn.compact
  def __call__(self, users, items, train: bool = False, times=None):
    x = concat_embeddings(self, users, items)
    for width in self.layers:
      x = BatchNorm()(nn.relu(linear(self, width, use_bias=False)(x)), train)
    return squash(self, linear(self, 1)(x)[..., 0].astype(jnp.float32))


def _create(cls):
  def create(spec, n_users, n_items, side):
    del side
    return cls(n_users, n_items, layers=tuple(spec.layers),
               y_range=spec.y_range, **registry.dtypes(spec))
  return create


def _resize(module, rows: int):
  """Tables of `rows` rows, embedding widths fixed at the full tables'."""
  return module.clone(
      n_users=rows, n_items=rows,
      user_size=module.user_size or embedding_size(module.n_users),
      item_size=module.item_size or embedding_size(module.n_items))


SETTINGS = frozenset({"layers", "y_range", "param_dtype", "compute_dtype"})
TABLES = {"user_factors": "users", "item_factors": "items"}

registry.register(registry.Family(
    name="collab_nn", module=CollabNN, create=_create(CollabNN), settings=SETTINGS,
    defaults={"layers": (100,)}, tables=TABLES, resize=_resize,
    fold_in="gradient", user_rows=("user_factors",)))

registry.register(registry.Family(
    name="embedding_nn", module=EmbeddingNN, create=_create(EmbeddingNN), settings=SETTINGS,
    defaults={"layers": (100, 50)}, tables=TABLES, resize=_resize,
    fold_in="gradient", user_rows=("user_factors",)))
