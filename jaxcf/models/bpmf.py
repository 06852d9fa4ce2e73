"""`bpmf`: Bayesian probabilistic matrix factorisation (Salakhutdinov & Mnih
2008) with user and item biases (as in Rendle, Zhang & Koren 2019), trained
by Gibbs sampling (`jaxcf.gibbs`), not by an optimiser.

    r_ui ~ N(m + b_u + c_i + U_u . V_i, 1 / alpha)

The saved model is the posterior through S kept samples (s = 1..S). Their
factors are stored side by side, each scaled by 1/sqrt(S), so that one dot
product of the concatenated rows [S * k] is the posterior mean of U_u . V_i:

    sum_s (U_u^s / sqrt S) . (V_i^s / sqrt S) = mean_s U_u^s . V_i^s

and the model predicts, ranks and finds similar items like `dot_bias`. A
new user is folded in by drawing their rows, per kept sample, from the
posterior given their ratings (`fold_in_rows`): cold start with honest
uncertainty. The biases are stored as their posterior means plus each
sample's deviation ('spread'), with each sample's noise variance 1/alpha^s:
`predictive` gives the mean and standard deviation of the predictive
distribution (posterior and noise), for intervals.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxcf.models import registry


class BPMF(nn.Module):
  """(users, items) [batch] -> posterior mean ratings [batch] (float32),
  clipped to the training ratings' range."""
  n_users: int
  n_items: int
  n_factors: int = 10
  samples: int = 32

  def setup(self):
    width = self.samples * self.n_factors
    zeros = nn.initializers.zeros
    self.user_factors = nn.Embed(self.n_users, width, embedding_init=zeros)
    self.item_factors = nn.Embed(self.n_items, width, embedding_init=zeros)
    self.user_bias = nn.Embed(self.n_users, 1, embedding_init=zeros)
    self.item_bias = nn.Embed(self.n_items, 1, embedding_init=zeros)
    s = self.samples
    self.user_spread = nn.Embed(self.n_users, s, embedding_init=zeros)
    self.item_spread = nn.Embed(self.n_items, s, embedding_init=zeros)
    self.noise = self.param("noise", nn.initializers.ones, (s,))
    self.mean = self.param("mean", zeros, ())
    self.clip = self.param("clip", lambda *_: jnp.asarray([1.0, 5.0]), ())

  def _mean(self, users, items):
    x = jnp.sum(self.user_factors(users) * self.item_factors(items), -1)
    return (x + self.user_bias(users)[..., 0] + self.item_bias(items)[..., 0]
            + self.mean)

  def __call__(self, users, items, train: bool = False, times=None):
    if self.is_initializing():  # create the spread tables too
      self.per_sample(users, items)
    return jnp.clip(self._mean(users, items), self.clip[0], self.clip[1])

  def per_sample(self, users, items):
    """[batch, S]: each kept sample's prediction (unclipped)."""
    s, k = self.samples, self.n_factors
    u = self.user_factors(users).reshape(-1, s, k)
    i = self.item_factors(items).reshape(-1, s, k)
    return (jnp.sum(u * i, -1) * s + self.user_bias(users) +
            self.user_spread(users) + self.item_bias(items) +
            self.item_spread(items) + self.mean)

  def predictive(self, users, items):
    """(mean, std) [batch] of the predictive distribution: the samples'
    spread and the noise, sqrt(var_s(prediction) + mean_s(1/alpha))."""
    draws = self.per_sample(users, items)
    std = jnp.sqrt(jnp.var(draws, axis=-1) + jnp.mean(self.noise))
    return self(users, items), std


def scores(variables, module, users):
  """[len(users), n_items]: posterior mean scores of every item."""
  p = variables["params"]
  x = (p["user_factors"]["embedding"][users] @ p["item_factors"]["embedding"].T
       + p["user_bias"]["embedding"][users] + p["item_bias"]["embedding"][:, 0]
       + p["mean"])
  return jnp.clip(x, p["clip"][0], p["clip"][1])


def fold_in_rows(params, items, values, user_trained, seed: int = 0):
  """A new user's rows, sampled per kept draw s from the Gaussian
  posterior of [U_u, b_u] given their ratings `values` of `items` and draw
  s of the items (factors, biases, noise): the prior is draw s's users
  (their mean and covariance, the bias's mean and variance), so with no
  rating the user is a draw from that population, uncertainty included."""
  table = lambda name: np.asarray(params[name]["embedding"], np.float64)
  s_count = table("user_spread").shape[1]
  k = table("user_factors").shape[1] // s_count
  scale = np.sqrt(s_count)
  users = table("user_factors")[user_trained].reshape(-1, s_count, k) * scale
  user_b = (table("user_bias")[user_trained] +
            table("user_spread")[user_trained])  # [n, S]
  items_f = table("item_factors")[items].reshape(-1, s_count, k) * scale
  items_b = table("item_bias")[items] + table("item_spread")[items]
  noise = np.asarray(params["noise"], np.float64)
  rng = np.random.default_rng(seed)
  factors, biases = [], []
  for s in range(s_count):
    x = np.concatenate([items_f[:, s], np.ones((len(items), 1))], axis=1)
    mean0 = np.append(users[:, s].mean(0), user_b[:, s].mean())
    cov0 = np.zeros((k + 1, k + 1))
    cov0[:k, :k] = np.cov(users[:, s].T) + 1e-6 * np.eye(k)
    cov0[k, k] = user_b[:, s].var() + 1e-6
    prec0 = np.linalg.inv(cov0)
    target = np.asarray(values, np.float64) - float(params["mean"]) - (
        items_b[:, s] if len(items) else 0.0)
    prec = prec0 + x.T @ x / noise[s]
    mean = np.linalg.solve(prec, prec0 @ mean0 + x.T @ target / noise[s])
    chol = np.linalg.cholesky(prec)
    draw = mean + np.linalg.solve(chol.T, rng.standard_normal(k + 1))
    factors.append(draw[:k])
    biases.append(draw[k])
  biases = np.asarray(biases)
  return {"user_factors": np.concatenate(factors) / scale,
          "user_bias": np.asarray([biases.mean()]),
          "user_spread": biases - biases.mean()}


def _create(spec, n_users, n_items, side):
  del side
  return BPMF(n_users, n_items, n_factors=spec.n_factors,
              samples=spec.samples)


registry.register(registry.Family(
    name="bpmf", module=BPMF, create=_create,
    settings=frozenset({"n_factors", "samples", "implicit", "side_prior"}),
    in_state=frozenset(),
    defaults={"samples": 32, "implicit": False, "side_prior": False},
    tables={"user_factors": "users", "user_bias": "users",
            "user_spread": "users", "item_factors": "items",
            "item_bias": "items", "item_spread": "items"},
    fold_in="sampled", fold_in_rows=fold_in_rows,
    user_rows=("user_factors", "user_bias", "user_spread"), trainer="gibbs",
    scores=scores))
