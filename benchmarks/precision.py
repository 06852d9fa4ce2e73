r"""What bfloat16 costs in accuracy: the book's recipe on fastai's splits.

dot_bias (and embedding_nn) trained with weights stored in float32 or
bfloat16 (--param_dtype) and computed in float32 or bfloat16
(--compute_dtype), with the dense and the lazy AdamW; mean final valid MSE
over fastai's seed-42/1/2 splits, and the seconds per epoch on this device
(a CPU has no bfloat16 arithmetic, so there it is slower, not faster).

  python benchmarks/precision.py --data_dir=../shared/data \
      --out=benchmarks/results/precision.md
"""

from __future__ import annotations

import itertools

from absl import app, flags
import numpy as np

import parity  # the fastai splits loader, beside this file
import report  # beside this file
from jaxcf import models, training

DTYPES = (("float32", "float32"), ("float32", "bfloat16"),
          ("bfloat16", "float32"), ("bfloat16", "bfloat16"))
CASES = (("dot_bias", "adamw"), ("dot_bias", "lazy_adamw"),
         ("embedding_nn", "adamw"))


def main(argv):
  del argv
  splits = parity.load_splits(FLAGS.data_dir)
  lines = ["| model | optimiser | param dtype | compute dtype | seed 42 | "
           "seed 1 | seed 2 | mean valid MSE | s / epoch |",
           "|---|---|---|---|---|---|---|---|---|"]
  for (model_name, optimizer), (param_dtype, compute_dtype) in (
      itertools.product(CASES, DTYPES)):
    finals, seconds = [], []
    for seed, d in splits.items():
      model = models.create(model_name, d.n_users, d.n_items,
                            param_dtype=param_dtype,
                            compute_dtype=compute_dtype)
      config = training.TrainConfig(seed=seed, optimizer=optimizer)
      result = training.fit(model, d, config, log=None)
      finals.append(result.history[-1]["valid_loss"])
      seconds.append(result.train_seconds / config.epochs)
    lines.append(f"| {model_name} | {optimizer} | {param_dtype} | "
                 f"{compute_dtype} | " + " | ".join(f"{f:.4f}" for f in finals)
                 + f" | **{np.mean(finals):.4f}** | {np.median(seconds):.2f} |")
    print(lines[-1], flush=True)
  report.emit(lines, FLAGS.out)


if __name__ == "__main__":
  flags.DEFINE_string("data_dir", None, "Folder that is or holds ml-100k/, "
                      "with fastai-splits/ beside it.")
  flags.DEFINE_string("out", None, "Write the markdown table here too.")
  FLAGS = flags.FLAGS
  app.run(main)
