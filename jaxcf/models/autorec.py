"""`autorec`: AutoRec (Sedhain et al., 2015), an autoencoder of each item's
(or user's) column of the training rating matrix.

I-AutoRec (by='item') reads item i's column r_i (float32 [n_users], 0 where
unrated), encodes it through sigmoid layers and decodes it back to
[n_users]; the prediction for (u, i) is the decoded r_i at u, clipped to the
training ratings' range. by='user' swaps the roles (U-AutoRec). A
prediction reads a whole column, so AutoRec trains full-batch over the
columns (`jaxcf.fullbatch`), not on minibatches of ratings. The training
rating matrix is part of the model (its 'constants'), so a saved AutoRec
predicts and recommends like any other model.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcf.data import Ratings
from jaxcf.errors import UserError
from jaxcf.models import registry

MAX_MATRIX_BYTES = 2 << 30


class AutoRec(nn.Module):
  """(users, items) [batch] -> predictions [batch]; `reconstruct` maps rating
  columns [batch, n] to their reconstructions [batch, n] (float32).

  Constants: 'ratings', the training rating matrix [n_items, n_users]
  (by='item') or its transpose, and 'clip' [2], the range predictions are
  clipped to.
  """
  n_users: int
  n_items: int
  layers: Sequence[int] = (500,)
  by: str = "item"

  def setup(self):
    shape = ((self.n_items, self.n_users) if self.by == "item" else
             (self.n_users, self.n_items))
    self.hidden = [nn.Dense(w, name=f"Dense_{k}")
                   for k, w in enumerate(self.layers)]
    self.output = nn.Dense(shape[1], name=f"Dense_{len(self.layers)}")
    self.ratings = self.variable("constants", "ratings", jnp.zeros, shape,
                                 jnp.float32)
    self.clip = self.variable("constants", "clip", jnp.asarray, (1.0, 5.0),
                              jnp.float32)

  def reconstruct(self, x: jax.Array) -> jax.Array:
    for layer in self.hidden:
      x = nn.sigmoid(layer(x))
    return self.output(x)

  def __call__(self, users, items, train: bool = False, times=None):
    columns, positions = (items, users) if self.by == "item" else (users,
                                                                   items)
    out = self.reconstruct(jnp.asarray(self.ratings.value)[columns])
    pred = jnp.take_along_axis(out, positions[:, None], axis=1)[:, 0]
    return jnp.clip(pred, self.clip.value[0], self.clip.value[1])

  def score_all(self, users: jax.Array) -> jax.Array:
    """[len(users), n_items]: every item's prediction, each column decoded
    once."""
    clip, ratings = self.clip.value, jnp.asarray(self.ratings.value)
    if self.by == "item":
      scores = self.reconstruct(ratings)[:, users].T
    else:
      scores = self.reconstruct(ratings[users])
    return jnp.clip(scores, clip[0], clip[1])


def matrix_shape(n_users: int, n_items: int, by: str = "item"
                 ) -> tuple[int, int]:
  """The rating matrix's shape, or a UserError if it is too big to hold."""
  if by not in registry.BY:
    raise UserError(f"AutoRec by={by!r}: choose one of "
                    f"{', '.join(registry.BY)}")
  shape = (n_items, n_users) if by == "item" else (n_users, n_items)
  nbytes = 2 * 4 * shape[0] * shape[1]
  if nbytes > MAX_MATRIX_BYTES:
    raise UserError(
        f"AutoRec needs the dense {shape[0]:,} x {shape[1]:,} rating matrix "
        f"({nbytes / 2**30:.1f} GiB with its mask); use a factor model "
        f"(dot_bias with a row-wise optimiser) for data this large")
  return shape


def rating_matrix(ratings: Ratings, n_users: int, n_items: int,
                  by: str = "item") -> tuple[jax.Array, jax.Array]:
  """(ratings, observed): float32 [n_items, n_users] (by='item') or the
  transpose (by='user'); 0 where unrated. Pairs are unique (loading
  resolves repeated pairs, see `data.resolve_duplicates`)."""
  shape = matrix_shape(n_users, n_items, by)
  rows, cols = ((ratings.items, ratings.users) if by == "item"
                else (ratings.users, ratings.items))
  r = jnp.zeros(shape, jnp.float32).at[rows, cols].set(ratings.ratings)
  m = jnp.zeros(shape, jnp.float32).at[rows, cols].set(1.0)
  return r, m


def _scores(variables, module, users):
  return module.apply(variables, users, method=AutoRec.score_all)


registry.register(registry.Family(
    name="autorec", module=AutoRec,
    create=lambda spec, n_users, n_items, side: AutoRec(
        n_users, n_items, layers=tuple(spec.layers), by=spec.by),
    settings=frozenset({"layers", "input_dropout", "by"}),
    in_state=frozenset({"input_dropout"}), defaults={"layers": (500,)},
    trainer="full_batch", scores=_scores))
