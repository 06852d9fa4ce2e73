"""Predictive uncertainty of models that have it (`bpmf`): the mean and
standard deviation of the predictive distribution, intervals, and rankings
by a credible bound.

A model of several members (chains) predicts their mixture: the mean of the
members' means, and the variance mean_m(std_m^2 + mean_m^2) - mean^2.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxcf.errors import UserError

RANK_BY = ("mean", "lower", "upper")
Z90 = 1.6448536269514722  # the central 90% interval: mean +- Z90 * std


def predictive(states, users, items) -> tuple[np.ndarray, np.ndarray]:
  """(mean, std) [n] of the predictive distribution at pairs of user and
  item rows (int32 [n]); a UserError for models without one."""
  means, second = [], []
  for state in states:
    if not hasattr(state.model, "predictive"):
      raise UserError(f"{type(state.model).__name__} gives no predictive "
                      "distribution; return_std and rank_by need bpmf")
    variables = {"params": state.params, **(state.model_state or {})}
    mean, std = state.model.apply(variables, users, items,
                                  method="predictive")
    means.append(np.asarray(mean, np.float64))
    second.append(np.asarray(std, np.float64)**2 + means[-1]**2)
  mean = np.mean(means, axis=0)
  var = np.maximum(np.mean(second, axis=0) - mean**2, 0.0)
  return mean.astype(np.float32), np.sqrt(var).astype(np.float32)


def bound_scores(states, row: int, n_items: int, rank_by: str
                 ) -> np.ndarray:
  """[1, n_items] scores of every item for one user row: the predictive
  mean, or the lower/upper end of its central 90% interval."""
  if rank_by not in RANK_BY:
    raise UserError(f"rank_by={rank_by!r} must be one of "
                    f"{', '.join(RANK_BY)}")
  items = jnp.arange(n_items, dtype=jnp.int32)
  users = jnp.full(n_items, row, jnp.int32)
  mean, std = predictive(states, users, items)
  sign = {"mean": 0.0, "lower": -1.0, "upper": 1.0}[rank_by]
  return (mean + sign * Z90 * std)[None, :]
