r"""Where a bs-64 training step's time goes (dot_bias, ML-100k-sized tables).

The same scanned epoch with the optimiser swapped, one pinned core, best of
5 epochs of 1250 steps:

  fastai AdamW   jaxcf's one-cycle AdamW (the default)
  optax.adamw    plain optax.adamw, constant hyperparameters
  optax.sgd      one pass over the parameters instead of Adam's
  lazy_adamw     the row-wise optimiser (touched rows only)
  no update      dense gradients computed (and reduced), parameters left alone

  python benchmarks/step_profile.py --out=benchmarks/results/step_profile.md
"""

from __future__ import annotations

import os
import time

from absl import app, flags

import report  # beside this file

flags.DEFINE_string("out", None, "Also write the markdown table here.")
flags.DEFINE_integer("repeats", 5, "Epochs timed (the best counts).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from jaxcf import models, optim, training  # pylint: disable=g-import-not-at-top
  from jaxcf.data import Ratings  # pylint: disable=g-import-not-at-top

  n_users, n_items, n, bs = 944, 1665, 80_000, 64
  model = models.create("dot_bias", n_users, n_items)
  rng = np.random.default_rng(0)
  data = Ratings(jnp.asarray(rng.integers(1, n_users, n), jnp.int32),
                 jnp.asarray(rng.integers(1, n_items, n), jnp.int32),
                 jnp.asarray(rng.integers(1, 6, n), jnp.float32))
  steps = n // bs
  batches = jnp.asarray(rng.permutation(n)[:steps * bs].reshape(steps, bs),
                        jnp.int32)
  # Keeps the gradient alive (its norm is the state) but moves nothing.
  no_update = optax.GradientTransformation(
      lambda p: jnp.zeros(()),
      lambda g, s, p=None: (jax.tree.map(jnp.zeros_like, g),
                            s + optax.global_norm(g)))
  contenders = {
      "fastai AdamW (jaxcf default)": optim.one_cycle_adamw(5e-3, 0.1,
                                                            100 * steps),
      "optax.adamw, constant lr": optax.adamw(1e-3, 0.9, 0.99, 1e-5,
                                              weight_decay=0.1),
      "optax.sgd": optax.sgd(1e-3),
      "lazy_adamw (touched rows)": training.make_optimizer(
          model, training.TrainConfig(optimizer="lazy_adamw"), 100 * steps),
      "gradients only, no update": no_update,
  }
  rows = []
  for name, tx in contenders.items():
    state = training.create_train_state(model, tx, jax.random.key(0))
    run = jax.jit(training.train_epoch, donate_argnums=0)
    state, losses = run(state, data, batches)
    jax.block_until_ready(losses)
    best = float("inf")
    for _ in range(FLAGS.repeats):
      start = time.perf_counter()
      state, losses = run(state, data, batches)
      jax.block_until_ready(losses)
      best = min(best, time.perf_counter() - start)
    rows.append((name, best / steps * 1e6, steps * bs / best))
    print(f"{name}: {rows[-1][1]:.0f} us/step", flush=True)
  lines = ["| bs 64 step, one core | us per step | samples/s |",
           "|---|---|---|"]
  lines += [f"| {name} | {us:.0f} | {sps:,.0f} |" for name, us, sps in rows]
  report.emit(lines, FLAGS.out)


if __name__ == "__main__":
  app.run(main)
