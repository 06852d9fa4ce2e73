r"""Where a row-wise step's time goes at scale (bs 8192, 480k x 18k tables).

Times, each as a scanned loop over the same batches of 2M synthetic
ratings: the whole `rowwise_adagrad` and `lazy_adamw` epochs of dot_bias
with the XLA row updates and with the C++ kernels (`--row_kernel=cpp`),
on huge pages as `training.fit` asks for them (`jaxcf.hugepages`) and the
row-wise one also without, and the pieces every such step does — agreeing on one position per id
(a scatter and a gather in a scratch table), gathering the
rows and scattering them back into a 480k x 50 table (XLA, and the C++
kernels), the scatter-add that sums a [8192, 50] gradient, a scatter alone
into tables of width 1 and 50, and gathering a batch's three columns from 2M
and from 100M rows of data (what grows with the data; on 4 KiB pages and on
huge pages). Then profiles of the
whole rowwise_adagrad step (`jax.profiler`), XLA and C++: the costliest
ops, summed over the runtime's threads, each with the JAX operation it
comes from.

  python benchmarks/sparse_profile.py --out=benchmarks/results/sparse_profile.md
"""

from __future__ import annotations

import time

from absl import app, flags

import report  # beside this file

flags.DEFINE_string("out", None, "Also write the markdown table here.")
FLAGS = flags.FLAGS

N_USERS, N_ITEMS, N, BS, F = 480_000, 18_000, 2_000_000, 8192, 50
BIG = 100_000_000  # rows of the data a batch is gathered from, at scale


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxcf import models, rowkernels, sparse, training  # pylint: disable=g-import-not-at-top
  from jaxcf.data import Ratings  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  data = Ratings(jnp.asarray(rng.integers(1, N_USERS, N), jnp.int32),
                 jnp.asarray(rng.integers(1, N_ITEMS, N), jnp.int32),
                 jnp.asarray(rng.integers(1, 6, N), jnp.float32))
  steps = N // BS
  batches = jnp.asarray(rng.permutation(N)[:steps * BS].reshape(steps, BS),
                        jnp.int32)
  rows = []
  epoch = jax.jit(training.train_epoch, donate_argnums=0)

  def timed(name, fn, *args, huge=True):
    jax.block_until_ready(fn(*fresh(args, huge)))  # compile and warm up
    args = fresh(args, huge)
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    ms = (time.perf_counter() - start) / steps * 1e3
    rows.append((name, ms))
    print(f"{name}: {ms:.2f} ms/step", flush=True)

  model = models.create("dot_bias", N_USERS, N_ITEMS)
  states = {(kind, kernel): training.create_train_state(
      model, training.make_optimizer(model, training.TrainConfig(
          optimizer=kind, row_kernel=kernel), 10**6),
      jax.random.key(0))
            for kind in sparse.KINDS for kernel in ("xla", "cpp")}
  for kernel in ("xla", "cpp"):  # first, before any memory was advised
    timed(f"whole rowwise_adagrad step, {kernel} row updates, 4 KiB pages",
          epoch, states["rowwise_adagrad", kernel], data, batches, huge=False)
  for (kind, kernel), state in states.items():
    timed(f"whole {kind} step, {kernel} row updates",
          epoch, state, data, batches)

  def scan(body, init, n_args=1):  # the tables are donated: updated in place
    return jax.jit(lambda *a: jax.lax.scan(body, init(*a), batches)[0],
                   donate_argnums=tuple(range(n_args)))

  def claim(scratch, b):
    return sparse._claim(scratch, data.users[b])[0], None  # pylint: disable=protected-access

  timed("one position per id (scatter and gather in a scratch table)",
        scan(claim, lambda s: s), jnp.zeros(N_USERS, jnp.int32))

  def move_rows(carry, b):
    table, scratch = carry
    ids = data.users[b]
    scratch, owner = sparse._claim(scratch, ids)  # pylint: disable=protected-access
    where = jnp.where(owner == jnp.arange(BS), ids, N_USERS + jnp.arange(BS))
    small = table.at[ids].get(mode="promise_in_bounds")
    return (table.at[where].set(small + 1, mode="drop",
                                unique_indices=True), scratch), None

  timed("... + gather 8192 rows of 480k x 50 and scatter them back",
        scan(move_rows, lambda t, s: (t, s), 2), jnp.zeros((N_USERS, F)),
        jnp.zeros(N_USERS, jnp.int32))

  def kernel_rows(carry, b):
    table, acc = carry
    ids = data.users[b]
    small = rowkernels.gather_rows(table, ids)
    [new] = rowkernels.update_rows("rowwise_adagrad", ids, [0.1, 1.0, 1e-8],
                                   [(table, acc, small)])
    return new, None

  timed("C++: gather them, sum repeats, row-wise Adagrad them in place",
        scan(kernel_rows, lambda t, a: (t, a), 2), jnp.zeros((N_USERS, F)),
        jnp.zeros(N_USERS))

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

  @jax.jit
  def take_batches(columns, batch_rows):
    def body(c, b):
      batch = columns.take(b)
      return c + jnp.sum(batch.users + batch.items + batch.ratings), None
    return jax.lax.scan(body, 0.0, batch_rows)[0]

  for n in (N, BIG):
    columns = data if n == N else Ratings(
        *(jnp.asarray(rng.integers(1, hi, n), dt) for hi, dt in (
            (N_USERS, jnp.int32), (N_ITEMS, jnp.int32), (6, jnp.float32))))
    rows_n = jnp.asarray(rng.integers(0, n, batches.shape), jnp.int32)
    for huge in (False, True) if n == BIG else (True,):
      timed(f"gather a batch's user, item, rating from {n:,} rows"
            + ("" if huge else ", 4 KiB pages"), take_batches, columns, rows_n,
            huge=huge)
    del columns
  lines = ["| bs 8192, 480k x 18k tables, 50 factors | ms per step |",
           "|---|---|"]
  lines += [f"| {name} | {ms:.2f} |" for name, ms in rows]
  for kernel in ("xla", "cpp"):
    lines += ["", f"| ops of the rowwise_adagrad step, {kernel} row updates "
              "(thread time) | ms per step |", "|---|---|"]
    lines += [f"| {op} | {ms:.2f} |" for op, ms in op_times(
        epoch, (states["rowwise_adagrad", kernel], data, batches), steps,
        top=12 if kernel == "xla" else 8)]
  report.emit(lines, FLAGS.out)


def fresh(args, huge: bool = True):
  """New copies of `args` (for functions that donate, i.e. update in place,
  some of them), on huge pages as `training.fit` puts its state and data
  (or left on the 4 KiB pages they get by default)."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxcf import hugepages  # pylint: disable=g-import-not-at-top
  args = jax.tree.map(jax.numpy.copy, args)
  if huge:
    hugepages.advise(args)
  return args


def op_times(fn, args, steps: int, top: int = 12) -> list[tuple[str, float]]:
  """The `top` XLA ops by time summed over the runtime's threads, per step,
  each named by what it does in the JAX program (its op_name metadata)."""
  import collections  # pylint: disable=g-import-not-at-top
  import glob  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  hlo = fn.lower(*args).compile().as_text()
  jax.block_until_ready(fn(*fresh(args)))
  args = fresh(args)
  with tempfile.TemporaryDirectory() as folder:
    jax.profiler.start_trace(folder)
    jax.block_until_ready(fn(*args))
    jax.profiler.stop_trace()
    [path] = glob.glob(f"{folder}/**/*.xplane.pb", recursive=True)
    profile = jax.profiler.ProfileData.from_file(path)
  total = collections.Counter()
  for plane in profile.planes:
    for line in plane.lines:
      if "XLAEigen" in line.name:  # the threads that run the program's ops
        for event in line.events:
          total[event.name] += event.duration_ns
  total.pop("ThunkExecutor::Execute", None)
  out = []
  for op, ns in total.most_common(top):
    found = re.search(rf"%{re.escape(op)} = (\S+) .*?op_name=\"([^\"]*)\"",
                      hlo)
    what = (f"{found.group(2).split('/')[-1]} -> {found.group(1)}"
            if found else "")
    out.append((f"`{op}` {what}".strip(), ns / 1e6 / steps))
  return out


if __name__ == "__main__":
  app.run(main)
