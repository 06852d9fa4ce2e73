"""Optimisers that touch only the embedding rows a batch uses.

Dense AdamW (`optim.one_cycle_adamw`, fastai's semantics) reads and writes
every parameter at every step: at bs 64 that update dominates the step, and
with Netflix-sized tables (480k x 18k rows) it costs tens of milliseconds.
Here the user and item tables are updated row-wise instead:

* `lazy_adamw`: Adam's moments and the decoupled decay apply to the rows in
  the batch only (like TensorFlow's LazyAdam), with the global step's bias
  correction; the one-cycle schedule of lr and beta1 as fastai's.
* `rowwise_adagrad`: one accumulator per row, the mean squared gradient of
  the row added at each use, as TorchRec's exact row-wise Adagrad; the same
  lr schedule and decoupled decay of the rows used.

Other parameters (Linear layers, BatchNorm) keep dense AdamW. The step
gathers one row per batch position, runs the model on those rows (a clone
of the module sized to the batch, whose lookups are then the identity),
differentiates with respect to them, sums the gradient of each id over its
positions and writes each touched row back once. No sort: the positions
of an id agree on one of them through a scratch table (`_claim`).

`kernel="cpp"` hands the row traffic (the gathers, the sums and the row
updates) to the C++ kernels of `jaxcf.rowkernels`: the same arithmetic,
faster on XLA:CPU, one device, no vmap.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxcf import models, optim, rowkernels

KINDS = ("lazy_adamw", "rowwise_adagrad")
ROW_TABLES = {"user_factors": "users", "user_bias": "users",
              "item_factors": "items", "item_bias": "items"}


class SparseOptState(NamedTuple):
  count: jax.Array
  peak_lr: jax.Array
  weight_decay: jax.Array
  lr: jax.Array
  b1: jax.Array
  dense: Any  # optim.one_cycle_adamw state of the non-table parameters
  rows: dict  # table name -> moments [n, 2, f] (lazy_adamw: m and v side by
  # side, one gather and one scatter per step) or accumulator [n]
  claims: dict  # 'users'/'items' -> int32 [n] scratch of `_claim`


def _split(params):
  rows = {k: v["embedding"] for k, v in params.items() if k in ROW_TABLES}
  dense = {k: v for k, v in params.items() if k not in ROW_TABLES}
  return rows, dense


class _Hyper(NamedTuple):
  lr: jax.Array  # this step's learning rate
  decay: jax.Array  # 1 - lr * weight decay
  b1: jax.Array  # this step's beta1
  t: jax.Array  # float32 step count, from 1


class SparseOptimizer(NamedTuple):
  """A row-wise optimiser; static (hashable), its numbers live in the state.

  `step_fn` replaces `training.train_step` for states that use it.
  """
  kind: str
  total_steps: int
  peak_lr: float = 5e-3  # initial values: they live in the state
  weight_decay: float = 0.1
  pct_start: float = 0.25
  div: float = 25.0
  div_final: float = 1e5
  moms: tuple = (0.95, 0.85, 0.95)
  b2: float = 0.99
  eps: float = 1e-5
  adagrad_eps: float = 1e-8
  kernel: str = "xla"  # or "cpp": `jaxcf.rowkernels` moves the rows

  def _dense(self):
    return optim.one_cycle_adamw(1.0, 0.0, self.total_steps,
                                 pct_start=self.pct_start, div=self.div,
                                 div_final=self.div_final, moms=self.moms,
                                 b2=self.b2, eps=self.eps)

  def init(self, params) -> SparseOptState:
    peak_lr, weight_decay = self.peak_lr, self.weight_decay
    rows, dense = _split(params)
    if self.kind == "lazy_adamw":
      slots = {k: jnp.zeros((t.shape[0], 2, *t.shape[1:]), t.dtype)
               for k, t in rows.items()}
    else:
      slots = {k: jnp.zeros(t.shape[0], t.dtype) for k, t in rows.items()}
    claims = {side: jnp.zeros(rows[k].shape[0], jnp.int32)
              for k, side in ROW_TABLES.items() if k in rows}
    dense_state = self._dense().init(dense)
    dense_state = dense_state._replace(
        peak_lr=jnp.asarray(peak_lr, jnp.float32),
        weight_decay=jnp.asarray(weight_decay, jnp.float32))
    return SparseOptState(
        count=jnp.zeros([], jnp.int32),
        peak_lr=jnp.asarray(peak_lr, jnp.float32),
        weight_decay=jnp.asarray(weight_decay, jnp.float32),
        lr=jnp.zeros([], jnp.float32), b1=jnp.zeros([], jnp.float32),
        dense=dense_state, rows=slots, claims=claims)

  def _update_xla(self, table, slots, ids, rows, grads, h, first):
    """(table, slots) with the rows `ids` updated; rows = table[ids] and
    grads [batch, f] per position, first = `_claim`'s positions."""
    positions = jnp.arange(ids.shape[0], dtype=jnp.int32)
    # Each id is updated once, at the position that claimed it, from the
    # gradient summed over its positions; the other positions write nowhere
    # (distinct indices past the table's end, dropped).
    where = jnp.where(first == positions, ids, table.shape[0] + positions)
    put = lambda x, v: x.at[where].set(v.astype(x.dtype), mode="drop",
                                        unique_indices=True)
    g = jnp.zeros_like(grads).at[first].add(grads)
    p = rows * h.decay
    if self.kind == "lazy_adamw":
      mv = slots.at[ids].get(mode="promise_in_bounds")
      m = h.b1 * mv[:, 0] + (1 - h.b1) * g
      v = self.b2 * mv[:, 1] + (1 - self.b2) * g * g
      p = p - h.lr / (1 - h.b1**h.t) * m / (
          jnp.sqrt(v / (1 - self.b2**h.t)) + self.eps)
      return put(table, p), put(slots, jnp.stack([m, v], axis=1))
    a = slots.at[ids].get(mode="promise_in_bounds") + jnp.mean(g * g, axis=1)
    p = p - h.lr * g / (jnp.sqrt(a)[:, None] + self.adagrad_eps)
    return put(table, p), put(slots, a)

  def _kernel_hyper(self, h):
    """The scalars `rowkernels.update_rows` takes for this kind."""
    if self.kind == "lazy_adamw":
      return [h.lr / (1 - h.b1**h.t), h.decay, h.b1, self.b2, self.eps,
              1 - self.b2**h.t]
    return [h.lr, h.decay, self.adagrad_eps]

  def step_fn(self, state, batch):
    """(state, batch) -> (state, metrics), updating touched rows only."""
    module = state.apply_fn.__self__
    opt = state.opt_state
    size = batch.users.shape[0]
    ids = {"users": batch.users, "items": batch.items}
    rows, dense = _split(state.params)
    # One row per batch position (duplicates included), so the model's
    # lookups are the identity (`_lookups_given`) and its gradient with
    # respect to `small` is per position.
    gather = (rowkernels.gather_rows if self.kernel == "cpp" else
              lambda t, i: t.at[i].get(mode="promise_in_bounds"))
    small = {k: gather(t, ids[ROW_TABLES[k]]) for k, t in rows.items()}
    small_module = _resized(module, size)
    positions = jnp.arange(size, dtype=jnp.int32)

    def loss_fn(small_rows, dense_params):
      params = {**dense_params,
                **{k: {"embedding": v} for k, v in small_rows.items()}}
      with nn.intercept_methods(_lookups_given):
        preds, updates = small_module.apply(
            {"params": params, **state.model_state}, positions, positions,
            train=True, mutable=["batch_stats"],
            **({} if batch.times is None else {"times": batch.times}),
            rngs={"dropout": jax.random.fold_in(state.rng, state.step)})
      loss = jnp.mean((preds - batch.ratings)**2)
      return loss, {**state.model_state, **updates}

    (loss, model_state), (g_rows, g_dense) = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True)(small, dense)
    lr = optim.one_cycle(opt.count, self.total_steps,
                         opt.peak_lr / self.div, opt.peak_lr,
                         opt.peak_lr / self.div_final, self.pct_start)
    b1 = optim.one_cycle(opt.count, self.total_steps, *self.moms,
                         self.pct_start)
    hyper = _Hyper(lr=lr, decay=1 - lr * opt.weight_decay, b1=b1,
                   t=(opt.count + 1).astype(jnp.float32))
    new_rows, new_slots, claims = {}, {}, dict(opt.claims)
    for side in ("users", "items"):
      names = [k for k in rows if ROW_TABLES[k] == side]
      if self.kernel == "cpp":
        updated = rowkernels.update_rows(
            self.kind, ids[side], self._kernel_hyper(hyper),
            [(rows[k], opt.rows[k], g_rows[k]) for k in names])
      else:
        claims[side], first = _claim(claims[side], ids[side])
        updated = [self._update_xla(rows[k], opt.rows[k], ids[side],
                                    small[k], g_rows[k], hyper, first)
                   for k in names]
      for k, (table, slots) in zip(names, updated):
        new_rows[k], new_slots[k] = {"embedding": table}, slots
    dense_state = opt.dense
    if dense:
      dense_state = dense_state._replace(peak_lr=opt.peak_lr,
                                         weight_decay=opt.weight_decay)
      updates, dense_state = self._dense().update(g_dense, dense_state, dense)
      dense = optax.apply_updates(dense, updates)
    new_opt = opt._replace(count=opt.count + 1, lr=lr, b1=b1,
                           dense=dense_state, rows=new_slots, claims=claims)
    new_state = state.replace(step=state.step + 1,
                              params={**dense, **new_rows},
                              model_state=model_state, opt_state=new_opt)
    return new_state, {"loss": loss}


def _claim(scratch: jax.Array, ids: jax.Array
           ) -> tuple[jax.Array, jax.Array]:
  """(scratch, owner): for each position of `ids` [batch], one position
  holding the same id, the same for all of that id's positions.

  Each position writes itself at its id in `scratch` (int32 [n]; of
  repeated ids one write wins) and reads back what won: no sort, and no
  O(n) pass, since only the entries just written are read (the scratch is
  kept in the optimiser state, stale elsewhere).
  """
  positions = jnp.arange(ids.shape[0], dtype=jnp.int32)
  scratch = scratch.at[ids].set(positions, mode="promise_in_bounds")
  return scratch, scratch.at[ids].get(mode="promise_in_bounds")


def _lookups_given(next_fun, args, kwargs, context):
  """Flax interceptor: a row table's lookup returns the table itself."""
  module = context.module
  if (isinstance(module, nn.Embed) and context.method_name == "__call__"
      and module.name in ROW_TABLES):
    return jnp.asarray(module.embedding, module.dtype or module.param_dtype)
  return next_fun(*args, **kwargs)


def _resized(module, rows: int):
  """The module with tables of `rows` rows and the same widths."""
  if isinstance(module, (models.DotProduct, models.DotProductBias)):
    return module.clone(n_users=rows, n_items=rows)
  if isinstance(module, (models.CollabNN, models.EmbeddingNN)):
    return module.clone(
        n_users=rows, n_items=rows,
        user_size=module.user_size or models.embedding_size(module.n_users),
        item_size=module.item_size or models.embedding_size(module.n_items))
  raise ValueError(f"row-wise optimisers do not support "
                   f"{type(module).__name__}")


def supports(module) -> bool:
  return isinstance(module, (models.DotProduct, models.DotProductBias,
                             models.CollabNN, models.EmbeddingNN))
