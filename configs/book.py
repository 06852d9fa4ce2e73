"""The book's model: dot_bias, 50 factors, y_range 0..5.5, fit_one_cycle(5,
5e-3, wd=0.1), bs 64, items keyed by title, fastai's random 20% split.

  python train.py --config=configs/book.py --data_dir=../shared/data

prints final valid MSE 0.8118 on MovieLens 100k (the same as `python
train.py`, whose defaults these are). Flags given with --config override
its fields, e.g. --epochs=3 --workdir=runs/book.
"""

from jaxcf import config


def get_config() -> config.RunConfig:
  # epochs 5, lr 5e-3, wd 0.1: the defaults of minibatch models (left out,
  # so --model=autorec over this file takes AutoRec's own).
  return config.RunConfig(
      model=config.Model(model=("dot_bias",), n_factors=(50,),
                         y_range=((0.0, 5.5),)),
      train=config.Train(bs=64, seed=(42,)))
