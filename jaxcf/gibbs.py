"""Gibbs sampling for `bpmf` (`jaxcf.models.bpmf`): chains vmapped, sweeps
under `lax.scan`.

One sweep draws, in turn, from each conditional given the rest (Salakhutdinov
& Mnih 2008, with biases and a sampled noise precision):

  users' hyperparameters  (mu_U, Lam_U) ~ Normal-Wishart(mu0=0, beta0=2,
                          W0=I, nu0=k) updated by the N user rows
  each user's factors     U_u ~ N(P_u^-1 h_u, P_u^-1),
                          P_u = Lam_U + alpha sum_i V_i V_i^T,
                          h_u = Lam_U mu_U + alpha sum_i V_i e_ui,
                          e_ui = r_ui - m - b_u - c_i   (i rated by u)
  (the same for items, with U and V swapped)
  each user's bias        b_u ~ N(alpha sum_i d_ui / p_u, 1 / p_u),
                          p_u = lam_b + alpha n_u, d_ui = r_ui - m - c_i -
                          U_u . V_i   (items alike), lam_b ~ Gamma(1 + n/2,
                          1 + sum b^2 / 2)
  the noise precision     alpha ~ Gamma(1 + N/2, 1 + SSE/2)

With `implicit` (`jaxcf.featureprior`), each user's prior mean is also
regressed on the items they rated and each item's on its raters (Bayesian
SVD++, flipped): two more draws per side, the regression weights and
their precision.

All rows at once: the per-row sums over each row's ratings come from
`jaxcf.observed` (a dense rating matrix, one matmul per sum, for data like
ML-100k; sorted rating lists and segment sums for larger, sparser data),
then batched Cholesky factors, solves and draws. m is the training mean.
After `burn_in` sweeps every sweep's validation predictions enter a
running mean (the posterior mean, no samples stored: what the metrics rows
report), and S draws spread evenly over those sweeps are kept for the
saved model (which predicts their mean).
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxcf import featureprior, loop, observed, steps
from jaxcf.conjugate import (after, gamma_precision, gaussian_rows,
                             normal_wishart)
from jaxcf.data import CollabData
from jaxcf.errors import UserError

# What a Gibbs run uses: epochs are sweeps; lr and wd mean nothing.
DEFAULTS = {"epochs": 200, "lr": 1.0, "wd": 0.0}
IGNORED = ("bs", "pct_start", "div", "div_final", "sampling", "optimizer",
           "row_kernel", "param_dtype", "compute_dtype", "mesh",
           "shard_data", "checkpoint_steps", "checkpoint_every",
           "checkpoint_seconds", "eval_bs",
           "tensorboard", "lr", "wd", "input_dropout")
# The dense layout while its two matrices stay this small and at least this
# share of the cells is rated (its matmuls touch every cell), else sorted
# lists. Both build Gram matrices from `observed.RowLists`, so only the
# cheaper sums differ: at 49% rated the matrix was 1.1-1.7x faster, at 10%
# even; at ML-100k's 5% the lists are 1.5x faster at 10 factors and even at
# 50-100 (`benchmarks/bpmf.py` times both on ML-100k, 2026-12-02).
DENSE_MAX_BYTES = 1 << 30
DENSE_MIN_DENSITY = 0.15


def dense_layout(users: np.ndarray, items: np.ndarray, n_users: int,
                 n_items: int) -> bool:
  """Whether `observed.Dense` (else `observed.Sparse`) holds the ratings
  (user and item rows [N]): small and dense enough, and no (user, item)
  pair twice (a matrix holds one rating per cell; the lists hold every
  rating, each a separate observation)."""
  n = len(users)
  if (8 * n_users * n_items > DENSE_MAX_BYTES
      or n < DENSE_MIN_DENSITY * n_users * n_items):
    return False
  cells = users.astype(np.int64) * n_items + items
  return len(np.unique(cells)) == n


@flax.struct.dataclass
class Side:
  """One side's draw: factors [n, k], biases [n], their hyperparameters;
  with features (`jaxcf.featureprior`) their factors beta [d, k] and
  precision beta_lam [] (else None)."""
  factors: jax.Array
  bias: jax.Array
  mu: jax.Array       # [k]
  lam: jax.Array      # [k, k]
  bias_lam: jax.Array  # []
  beta: jax.Array | None = None
  beta_lam: jax.Array | None = None


@flax.struct.dataclass
class Chain:
  users: Side
  items: Side
  alpha: jax.Array
  key: jax.Array
  sweep: jax.Array        # sweeps done
  valid_sum: jax.Array    # [n_valid]: sum of post-burn-in predictions
  averaged: jax.Array     # how many entered valid_sum
  kept: dict              # the last S sweeps' draws (a ring buffer)


def row_posterior(obs, side: int, other, residual, alpha, mu, lam):
  """(P [n, k, k], h [n, k]) of every row's factors on `side` (0 users, 1
  items) given the other side's factors [m, k], the per-rating residual e
  (`observed`: Dense or Sparse) and the prior N(mu, Lam^-1), mu [k] or
  each row's [n, k]."""
  return (lam + alpha * obs.gram(other, side),
          mu @ lam + alpha * obs.weighted(residual, other, side))


def factor_rows(key, obs, side, other, residual, alpha, mu, lam):
  """Every row's factors drawn from `row_posterior`."""
  return gaussian_rows(key, *row_posterior(obs, side, other, residual, alpha,
                                           mu, lam))


def bias_rows(key, obs, side, residual, alpha, lam_b):
  """Every row's bias given the per-rating residual d."""
  precision = lam_b + alpha * obs.counts(side)
  mean = alpha * obs.row_sums(residual, side) / precision
  return mean + jax.random.normal(key, mean.shape) / jnp.sqrt(precision)


def hyperparameters(key, side: Side, weight, feats):
  """(each row's prior mean [k] or [n, k], Lam, the Side's new mu, lam,
  beta, beta_lam) given its factors; feats: `featureprior.Features` or
  None. Each LAPACK call waits for the one before (see `sweep`)."""
  if feats is None:
    mu, lam = normal_wishart(key, side.factors, weight)
    return mu, after(lam, mu), (mu, lam, None, None)
  kw, kb, kl = jax.random.split(key, 3)
  d = side.beta.shape[0]
  mu, lam = normal_wishart(
      kw, side.factors - featureprior.prior_means(feats, side.beta), weight,
      extra_scatter=side.beta_lam * side.beta.T @ side.beta, extra_df=d)
  lam_chol = jnp.linalg.cholesky(after(lam, mu))
  beta = featureprior.draw_beta(kb, feats, side.factors, mu, lam_chol,
                                side.beta_lam)
  beta_lam = featureprior.draw_lam_beta(kl, beta, lam)
  means = mu + featureprior.prior_means(feats, beta)
  return means, after(lam, beta), (mu, lam, beta, beta_lam)


def sweep(chain: Chain, obs, row_weight, mean, feats=(None, None)):
  """One Gibbs sweep over both sides. obs: the training ratings
  (`observed.Dense` or `observed.Sparse`); row_weight: (users [n_users],
  items [n_items]) 1 for rows that exist (not '#na#'); feats: each side's
  `featureprior.Features`, or None."""
  keys = jax.random.split(jax.random.fold_in(chain.key, chain.sweep), 9)
  u, v, alpha = chain.users, chain.items, chain.alpha
  # Users, then items, each given the other's latest draw. Every LAPACK
  # call here runs after the previous one: on the CPU each splits a batch
  # big enough over XLA's thread pool and waits for the pieces from inside
  # a pool thread, so two at once on two cores can leave both threads
  # waiting forever (jaxlib 0.10.2: 4 chains at 50 or 100 factors). `after`
  # makes the rows' draw (on the CPU a C++ kernel, `rowkernels`, which uses
  # no pool thread; elsewhere a Cholesky and two solves) wait for the
  # hyperparameters' last solve, and the items' hyperparameters for the
  # users' draw (they need only the old items otherwise).
  prior, lam, hyper = hyperparameters(keys[0], u, row_weight[0], feats[0])
  e = obs.residual(mean, u.bias, v.bias)
  uf = factor_rows(keys[1], obs, 0, v.factors, e, alpha, prior, lam)
  d = obs.minus_dots(obs.residual(mean, None, v.bias), uf, v.factors)
  lam_bu = gamma_precision(keys[2], jnp.sum(row_weight[0] * u.bias**2),
                           jnp.sum(row_weight[0]))
  ub = bias_rows(keys[3], obs, 0, d, alpha, lam_bu) * row_weight[0]
  u = Side(uf * row_weight[0][:, None], ub, hyper[0], hyper[1], lam_bu,
           *hyper[2:])
  prior, lam, hyper = hyperparameters(
      keys[4], v.replace(factors=after(v.factors, u.factors)), row_weight[1],
      feats[1])
  e = obs.residual(mean, u.bias, v.bias)
  vf = factor_rows(keys[5], obs, 1, u.factors, e, alpha, prior, lam)
  d = obs.minus_dots(obs.residual(mean, u.bias, None), u.factors, vf)
  lam_bi = gamma_precision(keys[6], jnp.sum(row_weight[1] * v.bias**2),
                           jnp.sum(row_weight[1]))
  vb = bias_rows(keys[7], obs, 1, d, alpha, lam_bi) * row_weight[1]
  v = Side(vf * row_weight[1][:, None], vb, hyper[0], hyper[1], lam_bi,
           *hyper[2:])
  err = obs.minus_dots(obs.residual(mean, u.bias, v.bias), u.factors,
                       v.factors)
  sse = obs.total(err**2)
  alpha = gamma_precision(keys[8], sse, obs.size())
  return chain.replace(users=u, items=v, alpha=alpha,
                       sweep=chain.sweep + 1), sse / obs.size()


def _check_scheduler() -> None:
  """On the CPU the sweep needs XLA's concurrency-optimised scheduler off
  (it deadlocks there); jaxcf turns it off when imported before JAX starts
  (`jaxcf.CPU_SCHEDULER_FLAG`)."""
  import jaxcf  # pylint: disable=g-import-not-at-top
  if jax.default_backend() == "cpu" and not jaxcf.CPU_SCHEDULER_OFF:
    raise UserError("bpmf on the CPU needs XLA_FLAGS="
                    f"{jaxcf.CPU_SCHEDULER_FLAG} before JAX starts: import "
                    "jaxcf before running anything in JAX, or set it")


def _side(key, n, k, weight, feats):
  beta = None if feats is None else jnp.zeros((feats.x.shape[1], k))
  return Side(factors=0.1 * jax.random.normal(key, (n, k)) * weight[:, None],
              bias=jnp.zeros(n), mu=jnp.zeros(k), lam=jnp.eye(k),
              bias_lam=jnp.ones(()), beta=beta,
              beta_lam=None if feats is None else jnp.ones(()))


def check(spec, config) -> int:
  """The burn-in of a run of `spec` (normalised) under `config` (a
  `training.TrainConfig`), or a UserError for settings it cannot run."""
  _check_scheduler()
  sweeps, kept = config.epochs, spec.samples
  burn = sweeps // 4 if config.burn_in is None else config.burn_in
  if not 0 <= burn < sweeps:
    raise UserError(f"--burn_in={burn} must lie in [0, --epochs={sweeps}): "
                    "the sweeps after it make the posterior mean")
  if sweeps - burn < kept:
    raise UserError(f"--epochs={sweeps} with --burn_in={burn} leaves "
                    f"{sweeps - burn} sweeps, fewer than the {kept} the "
                    "model keeps (--samples); raise --epochs or lower "
                    "--samples or --burn_in")
  return burn


def train_group(replicas: Sequence, data: CollabData, config,
                run_hooks: Sequence[loop.Hook],
                log: Callable[[str], None] | None):
  """Runs one Gibbs chain per replica (its seed), vmapped. Returns (loop
  outcome, posterior mean validation predictions [R, n_valid], shared
  variables (none), compile seconds); the outcome's state holds each
  chain's model parameters (`models.bpmf.BPMF`)."""
  first = replicas[0].normalised()
  k, kept = first.n_factors, first.samples
  n_u, n_i = data.n_users, data.n_items
  sweeps = config.epochs
  burn = check(first, config)
  tu, ti, tr = (np.asarray(x) for x in data.train[:3])
  obs = (observed.dense if dense_layout(tu, ti, n_u, n_i) else
         observed.sparse)(tu, ti, tr, n_u, n_i)
  weight = (jnp.ones(n_u).at[0].set(0.0), jnp.ones(n_i).at[0].set(0.0))
  mean = float(np.mean(tr))
  feats = (None, None)
  if first.side_prior and data.side is None:
    raise UserError("--side_prior regresses on a MovieLens release's side "
                    "information (--dataset=ml-100k, ml-1m, ...); a "
                    "--ratings_file has none: drop --side_prior")
  if first.implicit or first.side_prior:
    feats = featureprior.feature_pair(
        tu, ti, n_u, n_i, first.implicit,
        featureprior.side_columns(data.side.constants)
        if first.side_prior else None)
  clip = jnp.asarray([tr.min(), tr.max()], jnp.float32)
  vu, vi = data.valid.users, data.valid.items
  thin = max(1, (sweeps - burn) // kept)

  # The matrices go in as arguments: as constants baked into the program,
  # XLA's constant folding takes minutes on them.
  matrices = {"obs": obs, "weight": weight, "feats": feats, "vu": vu, "vi": vi,
              "valid": data.valid.ratings}

  def draw_valid(c: Chain, m):
    return (mean + c.users.bias[m["vu"]] + c.items.bias[m["vi"]]
            + jnp.sum(c.users.factors[m["vu"]] * c.items.factors[m["vi"]], -1))

  def init(seed):
    key = jax.random.key(seed)
    ku, ki = jax.random.split(jax.random.fold_in(key, 1))
    buffer = {"uf": jnp.zeros((kept, n_u, k)), "vf": jnp.zeros((kept, n_i, k)),
              "ub": jnp.zeros((kept, n_u)), "vb": jnp.zeros((kept, n_i)),
              "noise": jnp.ones(kept)}
    return Chain(_side(ku, n_u, k, weight[0], feats[0]),
                 _side(ki, n_i, k, weight[1], feats[1]),
                 jnp.asarray(2.0), key, jnp.zeros((), jnp.int32),
                 jnp.zeros(vu.shape), jnp.zeros(()), buffer)

  def step(c: Chain, m):
    c, mse = sweep(c, m["obs"], m["weight"], mean, m["feats"])
    after = c.sweep > burn
    # Keep S draws spread evenly over the sweeps after the burn-in.
    j = c.sweep - burn
    keep = after & (j % thin == 0) & (j // thin <= kept)
    slot = jnp.clip(j // thin - 1, 0, kept - 1)
    draws = {"uf": c.users.factors, "vf": c.items.factors,
             "ub": c.users.bias, "vb": c.items.bias, "noise": 1.0 / c.alpha}
    kept_now = jax.tree.map(
        lambda buf, x: jnp.where(keep, buf.at[slot].set(x), buf),
        c.kept, draws)
    c = c.replace(valid_sum=c.valid_sum + jnp.where(after, draw_valid(c, m),
                                                    0),
                  averaged=c.averaged + after, kept=kept_now)
    return c, mse

  def train(state, sweep_ids, m):
    one = lambda c: jax.lax.scan(lambda c, _: step(c, m), c, sweep_ids)
    return jax.vmap(one)(state)

  def predictions(c: Chain, m):
    running = jnp.where(c.averaged > 0, c.valid_sum / jnp.maximum(
        c.averaged, 1), draw_valid(c, m))
    return jnp.clip(running, clip[0], clip[1])

  def evaluate(state, m):
    return jax.vmap(lambda c: steps.error_metrics(
        predictions(c, m), m["valid"]))(state)

  state = jax.vmap(init)(jnp.asarray([x.seed for x in replicas], jnp.uint32))
  program, compile_seconds = loop.epoch_step_program(
      train, evaluate, state, sweeps, loop.even_calls(sweeps,
                                                      config.eval_every),
      lr=lambda s: jnp.zeros(len(replicas)), replicas=len(replicas),
      args=(matrices,))
  if log:
    log(f"compiled {len(replicas)} Gibbs chain(s) of bpmf ({k} factors, "
        f"burn-in {burn} of {sweeps} sweeps) in {compile_seconds:.2f}s")
  outcome = loop.train_program(program, state, run_hooks,
                               show_progress=log is not None)
  final = outcome.state
  module = replicas[0].create_model(data)
  params = jax.vmap(lambda c: model_params(c.kept, mean, clip))(final)
  outcome.state = steps.TrainState(
      step=jnp.zeros([len(replicas)], jnp.int32), params=params,
      model_state={}, opt_state=None, rng=final.key, model=module, tx=None)
  # What the saved model predicts (its S kept draws), for ensembles; the
  # rows' valid loss is the running mean over every sweep after burn-in.
  preds = jax.vmap(lambda p: module.apply({"params": p}, vu, vi))(params)
  return outcome, preds, {}, compile_seconds


def model_params(kept: dict, mean, clip) -> dict:
  """The BPMF module's parameters from S kept draws (see its docstring)."""
  s = kept["uf"].shape[0]
  stack = lambda f: jnp.swapaxes(f, 0, 1).reshape(f.shape[1], -1) / jnp.sqrt(s)
  ub, vb = kept["ub"].T, kept["vb"].T  # [n, S]
  return {"user_factors": {"embedding": stack(kept["uf"])},
          "item_factors": {"embedding": stack(kept["vf"])},
          "user_bias": {"embedding": ub.mean(1, keepdims=True)},
          "item_bias": {"embedding": vb.mean(1, keepdims=True)},
          "user_spread": {"embedding": ub - ub.mean(1, keepdims=True)},
          "item_spread": {"embedding": vb - vb.mean(1, keepdims=True)},
          "noise": kept["noise"], "mean": jnp.asarray(mean, jnp.float32),
          "clip": clip}
