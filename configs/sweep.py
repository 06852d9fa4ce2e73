"""A sweep: lr x wd x seed around the book's recipe, 18 dot_bias replicas
trained as one vmapped program, ranked, and the mean of all of them saved
as the model (an ensemble).

  python train.py --config=configs/sweep.py --data_dir=../shared/data \
      --workdir=runs/sweep
"""

from jaxcf import config


def get_config() -> config.RunConfig:
  return config.RunConfig(
      train=config.Train(lr=(3e-3, 5e-3, 1e-2), wd=(0.05, 0.1, 0.2),
                         seed=(0, 1)),
      output=config.Output(ensemble=True))
