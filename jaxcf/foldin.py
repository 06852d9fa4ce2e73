"""Folding in a new user: their rows fitted to a few ratings, items frozen.

How depends on the model's family (`Family.fold_in`):

* 'ridge': the score before `sigmoid_range` is linear in the user's rows w
  (`Family.design` gives X and the offset), so w solves the ridge problem
  min |X w + offset - logit(r)|^2 + l2 |w - w0|^2 in closed form, with the
  ratings r mapped to the scores `sigmoid_range` turns into them;
* 'gradient': `steps` Adam steps on the squared error plus the same pull
  towards w0;

w0, the prior, is the mean trained user (the book's "representative user"),
or what the family says (side_nn trained with id dropout: its unknown-user
row). With no rating the folded user is w0 itself.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcf import steps
from jaxcf.errors import UserError


@dataclasses.dataclass(frozen=True)
class FoldedUser:
  """A user who was not trained, folded in from a few ratings.

  rows: per member of the model, the user's rows by table name
  ('user_factors' [f], 'user_bias' [1]); seen: item indices the user
  rated; constants: the user's side features, as table rows.
  """
  rows: tuple[Mapping[str, np.ndarray], ...]
  seen: np.ndarray
  constants: Mapping[str, np.ndarray] = dataclasses.field(
      default_factory=dict)

  def __repr__(self) -> str:
    return f"FoldedUser({len(self.seen)} ratings)"


def with_rows(tree, rows: Mapping[str, Any], key: str | None = "embedding"):
  """tree with row 0 of tree[name][key] (or tree[name]) set to rows[name]."""
  tree = dict(tree)
  for name, value in rows.items():
    table = tree[name] if key is None else tree[name][key]
    table = table.at[0].set(jnp.asarray(value, table.dtype))
    tree[name] = table if key is None else {key: table}
  return tree


def folded_state(state: steps.TrainState, rows, constants
                 ) -> steps.TrainState:
  """The state with a folded user's rows (and features) in row 0, the
  '#na#' row, so that every model predicts for it unchanged."""
  model_state = state.model_state
  own = model_state.get("constants", {})
  constants = {k: v for k, v in constants.items() if k in own}
  if constants:  # side features, for the models that read them
    model_state = {**model_state, "constants": with_rows(own, constants,
                                                         key=None)}
  return state.replace(params=with_rows(state.params, rows),
                       model_state=model_state)


def prior(spec, params, user_trained: np.ndarray) -> dict[str, np.ndarray]:
  """w0: where the family says a fold-in starts, else the mean trained
  user's rows."""
  family = spec.family
  start = family.fold_in_start(spec, params) if family.fold_in_start else None
  if start is not None:
    return start
  return {name: np.asarray(params[name]["embedding"])[user_trained].mean(0)
          for name in family.user_rows}


def fold_member(state: steps.TrainState, spec, items: np.ndarray,
                values: np.ndarray, user_trained: np.ndarray,
                constants: Mapping, l2: float, n_steps: int
                ) -> dict[str, np.ndarray]:
  """One member's rows for a user who rated `items` (indices) `values`."""
  family = spec.family
  if family.fold_in is None:
    raise UserError(f"model {spec.model} cannot fold in a new user (its "
                    "predictions read the whole training matrix); retrain "
                    "with the user's ratings")
  if family.fold_in == "sampled":  # the family's own, ratings or not
    rows = family.fold_in_rows(jax.device_get(state.params), items, values,
                               user_trained)
    return {k: np.asarray(v, np.float32) for k, v in rows.items()}
  rows = prior(spec, state.params, user_trained)
  if len(items):
    if family.fold_in == "ridge":
      rows = _ridge(state.params, spec, items, values, rows, l2)
    else:
      start = {k: jnp.asarray(v, jnp.float32) for k, v in rows.items()}
      fitted = _fit_rows(folded_state(state, start, constants), start,
                         jnp.asarray(items), jnp.asarray(values, jnp.float32),
                         l2, n_steps)
      rows = {k: np.asarray(v) for k, v in fitted.items()}
  return {k: np.asarray(v, np.float32) for k, v in rows.items()}


def _targets(values: np.ndarray, y_range) -> np.ndarray:
  """The scores `sigmoid_range` maps to the ratings (the ratings
  themselves without a range)."""
  if not y_range:
    return values
  low, high = y_range
  p = np.clip((values - low) / (high - low), 1e-3, 1 - 1e-3)
  return np.log(p / (1 - p))


def _ridge(params, spec, items, values, prior_rows, l2):
  family = spec.family
  x, offset = family.design(params, items)
  target = _targets(values, spec.y_range) - offset
  mean = np.concatenate([np.asarray(prior_rows[name], np.float64).reshape(-1)
                         for name in family.user_rows])
  a = x.T @ x + l2 * np.eye(x.shape[1])
  w = np.linalg.solve(a, x.T @ target + l2 * mean)
  widths = [np.asarray(prior_rows[name]).size for name in family.user_rows]
  parts = np.split(w, np.cumsum(widths)[:-1])
  return dict(zip(family.user_rows, parts))


@functools.partial(jax.jit, static_argnames="n_steps")
def _fit_rows(state, start, items, values, l2, n_steps):
  """Adam on a folded user's rows (in row 0), everything else frozen."""
  tx = optax.adam(1e-2)

  def loss(rows):
    s = state.replace(params=with_rows(state.params, rows))
    preds = steps.predict(s, jnp.zeros_like(items), items)
    pull = sum(jnp.sum((rows[k] - start[k])**2) for k in rows)
    return jnp.mean((preds - values)**2) + l2 * pull / items.shape[0]

  def step(carry, _):
    rows, opt = carry
    grads = jax.grad(loss)(rows)
    updates, opt = tx.update(grads, opt)
    return (optax.apply_updates(rows, updates), opt), None

  (rows, _), _ = jax.lax.scan(step, (start, tx.init(start)), None,
                              length=n_steps)
  return rows


def checked_rating(value, item, y_range) -> float:
  """A rating given to fold_in: a finite number within the model's range."""
  try:
    rating = float(value)
  except (TypeError, ValueError):
    raise UserError(f"the rating of {item!r} is {value!r}, not a number"
                    ) from None
  if not np.isfinite(rating):
    raise UserError(f"the rating of {item!r} is {value!r}; give a finite "
                    "number")
  if y_range and not y_range[0] <= rating <= y_range[1]:
    raise UserError(f"the rating of {item!r} is {rating:g}, outside the "
                    f"model's range [{y_range[0]:g}, {y_range[1]:g}]")
  return rating
