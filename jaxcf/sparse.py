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

The interface is explicit: `train_step` gathers the rows and differentiates;
a rule in `RULES` (`slots` per table row, `apply` to the touched rows)
updates them. Which tables are row tables, and how to size the module to
one row per batch position, the model's family says (`Family.tables`,
`Family.resize`). A new row-wise optimiser is one more rule.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxcf import optim, rowkernels


class SparseOptState(NamedTuple):
  count: jax.Array
  peak_lr: jax.Array
  weight_decay: jax.Array
  lr: jax.Array
  b1: jax.Array
  dense: Any  # optim.one_cycle_adamw state of the non-table parameters
  rows: dict  # table name -> its rule's slots (e.g. Adam's moments)
  claims: dict  # 'users'/'items' -> int32 [n] scratch of `_claim`


class Hyper(NamedTuple):
  """One step's scalars, from the schedule and the optimiser's settings."""
  lr: jax.Array  # this step's learning rate
  decay: jax.Array  # 1 - lr * weight decay
  b1: jax.Array  # this step's beta1
  t: jax.Array  # float32 step count, from 1
  b2: float
  eps: float


class LazyAdamW:
  """Adam on the rows a batch uses, with the global step's bias correction
  and fastai's eps (like TensorFlow's LazyAdam); slots [n, 2, f]: m and v
  side by side (one gather and one scatter per step)."""

  @staticmethod
  def slots(table):
    return jnp.zeros((table.shape[0], 2, *table.shape[1:]), table.dtype)

  @staticmethod
  def apply(p, slots, g, h: Hyper):
    """(rows, their slots) after one step; p is already decayed."""
    m = h.b1 * slots[:, 0] + (1 - h.b1) * g
    v = h.b2 * slots[:, 1] + (1 - h.b2) * g * g
    p = p - h.lr / (1 - h.b1**h.t) * m / (jnp.sqrt(v / (1 - h.b2**h.t))
                                          + h.eps)
    return p, jnp.stack([m, v], axis=1)

  @staticmethod
  def kernel_scalars(h: Hyper):
    """The scalars `rowkernels.update_rows` takes."""
    return [h.lr / (1 - h.b1**h.t), h.decay, h.b1, h.b2, h.eps,
            1 - h.b2**h.t]


class RowwiseAdagrad:
  """TorchRec's exact row-wise Adagrad: one accumulator per row [n], the
  row's mean squared gradient added at each use."""

  @staticmethod
  def slots(table):
    return jnp.zeros(table.shape[0], table.dtype)

  @staticmethod
  def apply(p, slots, g, h: Hyper):
    a = slots + jnp.mean(g * g, axis=1)
    return p - h.lr * g / (jnp.sqrt(a)[:, None] + h.eps), a

  @staticmethod
  def kernel_scalars(h: Hyper):
    return [h.lr, h.decay, h.eps]


RULES = {"lazy_adamw": LazyAdamW, "rowwise_adagrad": RowwiseAdagrad}
KINDS = tuple(RULES)


class SparseOptimizer(NamedTuple):
  """A row-wise optimiser; static (hashable), its numbers live in the state.

  `training.train_step` hands states that hold one to `train_step` here.
  """
  kind: str
  total_steps: int
  tables: tuple[tuple[str, str], ...]  # (table, 'users' or 'items')
  resize: Callable[[nn.Module, int], nn.Module]  # `Family.resize`
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

  @property
  def rule(self):
    return RULES[self.kind]

  def split(self, params):
    """(row tables by name, the other parameters)."""
    names = dict(self.tables)
    rows = {k: v["embedding"] for k, v in params.items() if k in names}
    dense = {k: v for k, v in params.items() if k not in names}
    return rows, dense

  def _dense(self):
    return optim.one_cycle_adamw(1.0, 0.0, self.total_steps,
                                 pct_start=self.pct_start, div=self.div,
                                 div_final=self.div_final, moms=self.moms)

  def init(self, params) -> SparseOptState:
    rows, dense = self.split(params)
    # Every leaf its own buffer: the state is donated to the compiled epoch.
    peak_lr = lambda: jnp.asarray(self.peak_lr, jnp.float32)
    weight_decay = lambda: jnp.asarray(self.weight_decay, jnp.float32)
    claims = {side: jnp.zeros(rows[k].shape[0], jnp.int32)
              for k, side in self.tables if k in rows}
    dense_state = self._dense().init(dense)._replace(
        peak_lr=peak_lr(), weight_decay=weight_decay())
    return SparseOptState(
        count=jnp.zeros([], jnp.int32), peak_lr=peak_lr(),
        weight_decay=weight_decay(), lr=jnp.zeros([], jnp.float32),
        b1=jnp.zeros([], jnp.float32), dense=dense_state,
        rows={k: self.rule.slots(t) for k, t in rows.items()}, claims=claims)

  def hyper(self, opt: SparseOptState) -> Hyper:
    lr = optim.one_cycle(opt.count, self.total_steps,
                         opt.peak_lr / self.div, opt.peak_lr,
                         opt.peak_lr / self.div_final, self.pct_start)
    b1 = optim.one_cycle(opt.count, self.total_steps, *self.moms,
                         self.pct_start)
    eps = self.eps if self.kind == "lazy_adamw" else self.adagrad_eps
    return Hyper(lr=lr, decay=1 - lr * opt.weight_decay, b1=b1,
                 t=(opt.count + 1).astype(jnp.float32), b2=self.b2, eps=eps)

  def update_table(self, table, slots, ids, rows, grads, h, first):
    """(table, slots) with the rows `ids` updated by the rule; rows =
    table[ids] and grads [batch, f] per position, first = `_claim`'s
    positions (XLA path)."""
    positions = jnp.arange(ids.shape[0], dtype=jnp.int32)
    # Each id is updated once, at the position that claimed it, from the
    # gradient summed over its positions; the other positions write nowhere
    # (distinct indices past the table's end, dropped).
    where = jnp.where(first == positions, ids, table.shape[0] + positions)
    put = lambda x, v: x.at[where].set(v.astype(x.dtype), mode="drop",
                                        unique_indices=True)
    g = jnp.zeros_like(grads).at[first].add(grads)
    p, s = self.rule.apply(rows * h.decay,
                           slots.at[ids].get(mode="promise_in_bounds"), g, h)
    return put(table, p), put(slots, s)


def train_step(state, batch) -> tuple[Any, dict[str, jax.Array]]:
  """(state, batch) -> (state, metrics) for a state whose `tx` is a
  SparseOptimizer: only the rows the batch uses move."""
  tx, opt = state.tx, state.opt_state
  size = batch.users.shape[0]
  ids = {"users": batch.users, "items": batch.items}
  side_of = dict(tx.tables)
  rows, dense = tx.split(state.params)
  # One row per batch position (duplicates included), so the model's
  # lookups are the identity (`_lookups_given`) and its gradient with
  # respect to `small` is per position.
  gather = (rowkernels.gather_rows if tx.kernel == "cpp" else
            lambda t, i: t.at[i].get(mode="promise_in_bounds"))
  small = {k: gather(t, ids[side_of[k]]) for k, t in rows.items()}
  small_module = tx.resize(state.model, size)
  positions = jnp.arange(size, dtype=jnp.int32)
  given = _lookups_given(frozenset(side_of))

  def loss_fn(small_rows, dense_params):
    params = {**dense_params,
              **{k: {"embedding": v} for k, v in small_rows.items()}}
    with nn.intercept_methods(given):
      preds, updates = small_module.apply(
          {"params": params, **state.model_state}, positions, positions,
          train=True, mutable=["batch_stats"],
          **({} if batch.times is None else {"times": batch.times}),
          rngs={"dropout": jax.random.fold_in(state.rng, state.step)})
    loss = jnp.mean((preds - batch.ratings)**2)
    return loss, {**state.model_state, **updates}

  (loss, model_state), (g_rows, g_dense) = jax.value_and_grad(
      loss_fn, argnums=(0, 1), has_aux=True)(small, dense)
  h = tx.hyper(opt)
  new_rows, new_slots, claims = {}, {}, dict(opt.claims)
  for side in ("users", "items"):
    names = [k for k in rows if side_of[k] == side]
    if not names:
      continue
    if tx.kernel == "cpp":
      updated = rowkernels.update_rows(
          tx.kind, ids[side], tx.rule.kernel_scalars(h),
          [(rows[k], opt.rows[k], g_rows[k]) for k in names])
    else:
      claims[side], first = _claim(claims[side], ids[side])
      updated = [tx.update_table(rows[k], opt.rows[k], ids[side], small[k],
                                 g_rows[k], h, first) for k in names]
    for k, (table, slots) in zip(names, updated):
      new_rows[k], new_slots[k] = {"embedding": table}, slots
  dense_state = opt.dense
  if dense:
    dense_state = dense_state._replace(peak_lr=opt.peak_lr,
                                       weight_decay=opt.weight_decay)
    updates, dense_state = tx._dense().update(g_dense, dense_state, dense)
    dense = optax.apply_updates(dense, updates)
  new_opt = opt._replace(count=opt.count + 1, lr=h.lr, b1=h.b1,
                         dense=dense_state, rows=new_slots, claims=claims)
  return state.replace(step=state.step + 1, params={**dense, **new_rows},
                       model_state=model_state,
                       opt_state=new_opt), {"loss": loss}


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


def _lookups_given(names: frozenset[str]):
  """A Flax interceptor: the lookup of a row table in `names` returns the
  table itself (its rows are already the batch's)."""

  def intercept(next_fun, args, kwargs, context):
    module = context.module
    if (isinstance(module, nn.Embed) and context.method_name == "__call__"
        and module.name in names):
      return jnp.asarray(module.embedding, module.dtype or module.param_dtype)
    return next_fun(*args, **kwargs)

  return intercept
