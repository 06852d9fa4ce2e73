"""`side_nn`: fastai's EmbeddingNN with side information, the chapter's
closing point (users and items come with more than ids).

Besides the user and item id embeddings it embeds each categorical user
and item feature (gender, occupation, ...) and takes continuous ones (age,
genre flags, release year, rating time) through a BatchNorm, as fastai's
TabularModel does with its continuous inputs; all of it is concatenated
and fed to EmbeddingNN's layers.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcf.models import registry
from jaxcf.models.layers import (BatchNorm, YRange, embed, embedding_size,
                                 linear, squash)


class SideNN(nn.Module):
  """EmbeddingNN with side information.

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
    inputs = [embed(self, self.n_users, embedding_size(self.n_users),
                    "user_factors")(ids),
              embed(self, self.n_items, embedding_size(self.n_items),
                    "item_factors")(items)]
    conts = []
    for side, rows, n, cats, n_conts in (
        ("user", users, self.n_users, self.user_cats, self.user_conts),
        ("item", items, self.n_items, self.item_cats, self.item_conts)):
      if cats:
        codes = table(f"{side}_cat", (n, len(cats)), jnp.int32)[rows]
        inputs += [embed(self, c, embedding_size(c),
                         f"{side}_cat{k}")(codes[:, k])
                   for k, c in enumerate(cats)]
      if n_conts:
        conts.append(table(f"{side}_cont", (n, n_conts), jnp.float32)[rows])
    if self.use_time:
      if times is None:
        times = jnp.full(users.shape, self.default_time, jnp.float32)
      conts.append(times[:, None])
    if conts:
      inputs.append(BatchNorm(name="bn_cont")(jnp.concatenate(conts, -1),
                                              train))
    x = jnp.concatenate(inputs, axis=-1)
    for width in self.layers:
      x = BatchNorm()(nn.relu(linear(self, width, use_bias=False)(x)), train)
    return squash(self, linear(self, 1)(x)[..., 0].astype(jnp.float32))


def _create(spec, n_users, n_items, side):
  side = dict(side)
  for name in ("user_cats", "item_cats"):
    side[name] = tuple(side.get(name, ()))
  side.pop("id_dropout", None)  # older saved specs kept it with the features
  return SideNN(n_users, n_items, layers=tuple(spec.layers),
                y_range=spec.y_range, id_dropout=spec.id_dropout,
                **registry.dtypes(spec), **side)


def _fold_in_start(spec, params) -> dict | None:
  """Trained with id dropout, row 0 ('#na#') is the unknown user: start
  there (else the mean trained user)."""
  if spec.id_dropout:
    return {"user_factors": np.asarray(params["user_factors"]["embedding"])[0]}
  return None


registry.register(registry.Family(
    name="side_nn", module=SideNN, create=_create,
    settings=frozenset({"layers", "y_range", "id_dropout", "param_dtype",
                        "compute_dtype"}),
    defaults={"layers": (100, 50)},
    tables={"user_factors": "users", "item_factors": "items"},
    fold_in="gradient", user_rows=("user_factors",), needs_side=True,
    fold_in_start=_fold_in_start))
