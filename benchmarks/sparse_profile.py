r"""Where a row-wise step's time goes at scale (bs 8192, 480k x 18k tables).

Times, each as a scanned loop over the same batches of 2M synthetic
ratings: the whole `rowwise_adagrad` and `lazy_adamw` epochs of dot_bias,
and the pieces every such step does — finding the distinct ids of a batch
(one packed sort per table), gathering the rows and scattering them back
into a 480k x 50 table, and the scatter-add that builds a [8192, 50]
gradient, and a scatter alone into tables of width 1 and 50. Row scatters
into a table far larger than the caches cost in proportion to the bytes
moved (memory traffic to random rows), and with the gathers they bound the
step.

  python benchmarks/sparse_profile.py --out=benchmarks/results/sparse_profile.md
"""

from __future__ import annotations

import time

from absl import app, flags

import report  # beside this file

flags.DEFINE_string("out", None, "Also write the markdown table here.")
FLAGS = flags.FLAGS

N_USERS, N_ITEMS, N, BS, F = 480_000, 18_000, 2_000_000, 8192, 50


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxcf import models, sparse, training  # pylint: disable=g-import-not-at-top
  from jaxcf.data import Ratings  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  data = Ratings(jnp.asarray(rng.integers(1, N_USERS, N), jnp.int32),
                 jnp.asarray(rng.integers(1, N_ITEMS, N), jnp.int32),
                 jnp.asarray(rng.integers(1, 6, N), jnp.float32))
  steps = N // BS
  batches = jnp.asarray(rng.permutation(N)[:steps * BS].reshape(steps, BS),
                        jnp.int32)
  rows = []

  def timed(name, fn, *args):
    jax.block_until_ready(fn(*args))  # compile and warm up
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    ms = (time.perf_counter() - start) / steps * 1e3
    rows.append((name, ms))
    print(f"{name}: {ms:.2f} ms/step", flush=True)

  model = models.create("dot_bias", N_USERS, N_ITEMS)
  for kind in sparse.KINDS:
    state = training.create_train_state(
        model, sparse.SparseOptimizer(kind, 10**6), jax.random.key(0))
    timed(f"whole {kind} step", jax.jit(training.train_epoch), state, data,
          batches)

  def scan(body, init):
    return jax.jit(lambda *a: jax.lax.scan(body, init(*a), batches)[0])

  def distinct(c, b):
    ids, inv = sparse._distinct(data.users[b], N_USERS)  # pylint: disable=protected-access
    return c + ids[0] + inv[0], None

  timed("distinct ids of one table (packed sort)", scan(distinct, lambda: 0))

  def move_rows(table, b):
    ids, _ = sparse._distinct(data.users[b], N_USERS)  # pylint: disable=protected-access
    small = table.at[ids].get(mode="fill", fill_value=0)
    return table.at[ids].set(small + 1, mode="drop"), None

  timed("... + gather 8192 rows of 480k x 50 and scatter them back",
        scan(move_rows, lambda t: t), jnp.zeros((N_USERS, F)))

  for width in (1, F):
    def set_rows(table, b):
      return table.at[data.users[b]].set(jnp.ones((BS, table.shape[1])),
                                         mode="drop"), None

    timed(f"scatter alone: 8192 rows of width {width} into 480k rows",
          scan(set_rows, lambda t: t), jnp.zeros((N_USERS, width)))

  def grad_rows(c, b):
    slots = data.users[b] % BS
    g = jax.ops.segment_sum(jnp.ones((BS, F)), slots, BS)
    return c + g[0, 0], None

  timed("scatter-add of a [8192, 50] row gradient", scan(grad_rows,
                                                         lambda: 0.0))
  lines = ["| bs 8192, 480k x 18k tables, 50 factors | ms per step |",
           "|---|---|"]
  lines += [f"| {name} | {ms:.2f} |" for name, ms in rows]
  report.emit(lines, FLAGS.out)


if __name__ == "__main__":
  app.run(main)
