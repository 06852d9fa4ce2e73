"""The tuned dot_bias of benchmarks/tune.py on MovieLens' u1 split (chosen
on an inner carve-out of u1.base: 128 factors, lr 2e-3, wd 0.1, 5 epochs),
16 seeds averaged: u1.test RMSE 0.9089 in tune_u1_autorec.md's run ("ensemble:
tuned dot_bias x 16 seeds"). The five-family ensemble that reaches 0.8877
mixes this with bagging, side_nn and AutoRec by weights: `python
benchmarks/tune.py --splits=u1 --item_name=movie --autorec`.

  python train.py --config=configs/u1_ensemble.py --data_dir=../shared/data
"""

from jaxcf import config


def get_config() -> config.RunConfig:
  return config.RunConfig(
      data=config.Data(split="u1", item_name="movie"),
      model=config.Model(model=("dot_bias",), n_factors=(128,)),
      train=config.Train(epochs=5, lr=(2e-3,), wd=(0.1,),
                         seed=tuple(range(16))),
      output=config.Output(ensemble=True))
