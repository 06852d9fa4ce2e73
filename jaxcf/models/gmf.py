"""`gmf`: generalized matrix factorisation (He et al. 2017, the GMF half of
NCF) with biases — the worked example of adding a model family.

    y = sigmoid_range(h . (u * i) + c + b_u + b_i)

with user and item factors u, i [n_factors], a learnt weighting h
[n_factors] and bias c (one Linear unit on the element-wise product), and
user/item biases. With h = 1 and c = 0 it is `dot_bias`. The score before
`sigmoid_range` is linear in the user's rows (u, b_u), so new users are
folded in by ridge regression in closed form: `_design` says how.

This file is all it took: the module, and one `register` call declaring
what the rest of jaxcf asks about it.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxcf.models import registry
from jaxcf.models.dot import (SETTINGS, DotProductBias, _resize, _table,
                              all_item_scores, factors_and_biases)
from jaxcf.models.layers import linear, squash


class GMF(DotProductBias):  # its attributes: n_users, n_items, n_factors...
  """sigmoid_range(Linear(u * i) + b_u + b_i): [batch] -> [batch]."""

  @nn.compact
  def __call__(self, users, items, train: bool = False, times=None):
    u, i, bu, bi = factors_and_biases(self, users, items)
    score = linear(self, 1)(u * i)[..., 0].astype(jnp.float32)
    return squash(self, score + bu + bi)


def _design(params, items):
  """X = [h * item factors, 1] [n, f + 1], offset c + b_i."""
  dense = params["Linear_0"]["dense"]
  h = np.asarray(dense["kernel"], np.float64)[:, 0]
  c = float(np.asarray(dense["bias"], np.float64)[0])
  q = _table(params, "item_factors")[items] * h
  return (np.concatenate([q, np.ones((len(items), 1))], axis=1),
          c + _table(params, "item_bias")[items, 0])


registry.register(registry.Family(
    name="gmf", module=GMF,
    create=lambda spec, n_users, n_items, side: GMF(
        n_users, n_items, n_factors=spec.n_factors, y_range=spec.y_range,
        **registry.dtypes(spec)),
    settings=SETTINGS,  # n_factors, y_range and the dtypes, as dot_bias
    tables={"user_factors": "users", "user_bias": "users",
            "item_factors": "items", "item_bias": "items"},
    resize=_resize,  # row-wise optimisers: tables of one row per position
    fold_in="ridge", design=_design, user_rows=("user_factors", "user_bias"),
    scores=lambda variables, module, users: all_item_scores(  # one matmul
        variables, module, users,
        variables["params"]["Linear_0"]["dense"]["kernel"][:, 0],
        variables["params"]["Linear_0"]["dense"]["bias"][0])))
