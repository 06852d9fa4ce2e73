"""Optimisers under fastai's one-cycle schedule of lr and beta1 (momentum).

fastai's `fit_one_cycle(epochs, lr_max, wd=wd)` with its default `Adam` does,
at step i of N = epochs * steps_per_epoch (position p = i / N):

    lr    = combined_cos(pct_start, lr_max / div, lr_max, lr_max / div_final)
    beta1 = combined_cos(pct_start, 0.95, 0.85, 0.95)
    p    <- p * (1 - lr * wd)                          (decoupled decay first)
    m    <- beta1 m + (1 - beta1) g,   v <- beta2 v + (1 - beta2) g^2
    p    <- p - lr / (1 - beta1^t) * m / (sqrt(v / (1 - beta2^t)) + eps)

with beta2 = 0.99, eps = 1e-5 outside the square root, t = i + 1, and the
bias correction using the current beta1. `optax.adamw` computes exactly this
update (its decay term `-lr * wd * p` uses the parameters before the step), so
`one_cycle_optimizer` only has to feed it the scheduled lr and beta1 each
step. The same schedule drives every optimiser in `DENSE` (optax
transformations built from lr, beta1 and weight decay); the row-wise ones
are in `jaxcf.sparse`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax


def one_cycle(step, total_steps: int, start, middle, end,
              pct_start: float = 0.25) -> jax.Array:
  """fastai's `combined_cos`: cosine start -> middle, then middle -> end.

  The first phase covers positions step / total_steps < pct_start. Each phase
  is fastai's `SchedCos`, written as `a + (b - a) sin^2(pi x / 2)` so that
  the tiny values at the end of a cycle keep their float32 precision.

  Args:
    step: the step index i (int or int array), 0 <= i < total_steps.
    total_steps: N, the number of steps in the cycle.
    start, middle, end: values at positions 0, pct_start and 1.
    pct_start: the fraction of the cycle spent going from start to middle.

  Returns:
    The scheduled value, float32, shaped like `step`.
  """
  step = jnp.asarray(step, jnp.float32)
  total = jnp.float32(total_steps)
  warm = jnp.float32(pct_start * total_steps)
  rising = jnp.sin(0.5 * jnp.pi * step / warm)**2
  falling = jnp.sin(0.5 * jnp.pi * (total - step) / (total - warm))**2
  return jnp.where(step < warm,
                   start + (middle - start) * rising,
                   end + (middle - end) * falling)


class OneCycleState(NamedTuple):
  """State of a `one_cycle_optimizer`.

  peak_lr and weight_decay live here, not in a closure, so that stacked
  replicas under `jax.vmap` can each have their own.
  """
  count: jax.Array  # int32 [], steps taken
  peak_lr: jax.Array  # float32 []
  weight_decay: jax.Array  # float32 []
  lr: jax.Array  # float32 [], the learning rate of the last step
  b1: jax.Array  # float32 [], beta1 (momentum) of the last step
  inner: optax.OptState  # the inner transformation's state


def decay_mask(params) -> dict:
  """fastai's default (`wd_bn_bias=False`): decay weights, not norms/biases.

  Embedding tables (bias tables included) and Linear kernels decay; Linear
  biases and BatchNorm scales/biases do not.
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) in ("embedding",
                                                         "kernel"), params)


# An optimiser (lr, beta1, weight decay) -> optax transformation; the
# schedule calls it at every step with that step's values.
Factory = Callable[[jax.Array, jax.Array, jax.Array],
                   optax.GradientTransformation]


def one_cycle_optimizer(factory: Factory, peak_lr: float, weight_decay: float,
              total_steps: int, *, pct_start: float = 0.25, div: float = 25.0,
              div_final: float = 1e5,
              moms: tuple[float, float, float] = (0.95, 0.85, 0.95)
              ) -> optax.GradientTransformation:
  """Any optimiser under fastai's one cycle of lr and beta1 (momentum).

  Step i builds `factory(lr_i, beta1_i, weight_decay)` and applies it to the
  state it keeps (`OneCycleState.inner`), so the schedule drives every
  hyperparameter the optimiser takes as a number.

  Args:
    factory: (lr, b1, wd) -> an optax transformation whose state does not
      depend on those values (true of optax's optimisers).
    peak_lr: lr_max, the top of the cycle (initial value; lives in the state).
    weight_decay: decoupled decay per unit lr (initial value; in the state).
    total_steps: N, the steps of the whole run (epochs * steps per epoch).
    pct_start, div, div_final: the lr cycle rises from peak_lr / div to
      peak_lr over pct_start of the run, then falls to peak_lr / div_final.
    moms: beta1 at the start, the peak and the end of the cycle.
  """

  def init(params):
    return OneCycleState(
        count=jnp.zeros([], jnp.int32),
        peak_lr=jnp.asarray(peak_lr, jnp.float32),
        weight_decay=jnp.asarray(weight_decay, jnp.float32),
        lr=jnp.zeros([], jnp.float32), b1=jnp.zeros([], jnp.float32),
        inner=factory(0.0, 0.0, 0.0).init(params))

  def update(grads, state, params=None):
    peak = state.peak_lr
    lr = one_cycle(state.count, total_steps, peak / div, peak,
                         peak / div_final, pct_start)
    b1 = one_cycle(state.count, total_steps, *moms, pct_start)
    updates, inner = factory(lr, b1, state.weight_decay).update(
        grads, state.inner, params)
    # The float32 lr/b1 would promote bfloat16 moments; keep their dtype.
    inner = jax.tree.map(lambda new, old: new.astype(old.dtype), inner,
                         state.inner)
    return updates, state._replace(count=state.count + 1, lr=lr, b1=b1,
                                   inner=inner)

  return optax.GradientTransformation(init, update)


def fastai_adamw(lr, b1, wd, *, b2: float = 0.99, eps: float = 1e-5,
                 mask=decay_mask) -> optax.GradientTransformation:
  """fastai's Adam: `optax.adamw` with beta2 0.99, eps 1e-5 outside the
  square root, decoupled decay of the weights `mask` selects."""
  return optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=wd, mask=mask)


def sgd(lr, b1, wd) -> optax.GradientTransformation:
  """SGD with (scheduled) momentum b1 and decoupled weight decay:
  p <- p - lr (m + wd p), m <- b1 m + g."""
  return optax.chain(optax.trace(decay=b1),
                     optax.add_decayed_weights(wd, decay_mask),
                     optax.scale_by_learning_rate(lr))


def lion(lr, b1, wd) -> optax.GradientTransformation:
  """Lion (Chen et al. 2023): the sign of an interpolated momentum, beta2
  0.99, decoupled decay; take lr about 10x smaller than AdamW's."""
  return optax.lion(lr, b1=b1, b2=0.99, weight_decay=wd, mask=decay_mask)


# The dense optimisers by name: a new one is one entry (a Factory).
DENSE: dict[str, Factory] = {"adamw": fastai_adamw, "sgd": sgd,
                             "lion": lion}


def one_cycle_adamw(peak_lr: float, weight_decay: float, total_steps: int,
                    **schedule) -> optax.GradientTransformation:
  """fastai's Adam under `fit_one_cycle` (see the module docstring)."""
  return one_cycle_optimizer(fastai_adamw, peak_lr, weight_decay, total_steps,
                   **schedule)
