r"""Trains collaborative-filtering models; the defaults are the book's.

  python train.py                                   # dot_bias on MovieLens 100k
  python train.py --model=embedding_nn --layers=100,50
  python train.py --valid_file=../shared/data/fastai-splits/fastai_seed42_valid.tsv
  python train.py --split=u1 --item_name=movie --workdir=runs/u1
  python train.py --ratings_file=ratings.csv --items_file=movies.csv \
      --item_columns=movieId,title
  python train.py --config=configs/book.py --epochs=3   # a config file, a field overridden

Sweeps: --model, --n_factors, --lr, --wd, --seed, --id_dropout and
--input_dropout take comma-separated lists, --layers and --y_range
semicolon-separated ones. Their cartesian product is trained as vmapped
replicas, one compiled program per shape:

  python train.py --lr=3e-3,5e-3,1e-2 --wd=0.05,0.1,0.2 --seed=0,1 \
      --ensemble --workdir=runs/sweep

Every flag is a field of `jaxcf.config.RunConfig` (`jaxcf/cliconfig.py`
defines them); `jaxcf.experiment.train_and_evaluate(config)` is the run. A
mistake in a flag or an input file ends with one line on stderr and exit
status 2.
"""

import os
import sys

from absl import flags
import jax

from jaxcf import cli, cliconfig, experiment


def main(flag_values: flags.FlagValues) -> None:
  experiment.train_and_evaluate(cliconfig.build(flag_values), command=True)


if __name__ == "__main__":
  cliconfig.define(flags.FLAGS)
  code = cli.flush_output(cli.main(sys.argv, main, flags.FLAGS))
  if not jax.distributed.is_initialized():
    # Every file is written and closed: skip the interpreter's teardown of
    # JAX and its threads (~0.4 s). Several processes shut down together.
    os._exit(code)
  sys.exit(code)
