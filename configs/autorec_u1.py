"""Deep I-AutoRec on MovieLens' u1 split, the family benchmarks/tune.py
chose on u1's inner carve-out: two sigmoid layers of 500, L2 weight 50, 500
full-batch Adam epochs at lr 1e-3, 4 seeds averaged.

  python train.py --config=configs/autorec_u1.py --data_dir=../shared/data

(u1.test RMSE 0.8947-0.8965 for the seeds, 0.8946 for the ensemble; 2.3
minutes on 2 cores).
"""

from jaxcf import config


def get_config() -> config.RunConfig:
  return config.RunConfig(
      data=config.Data(split="u1", item_name="movie"),
      model=config.Model(model=("autorec",), layers=((500, 500),)),
      train=config.Train(epochs=500, lr=(1e-3,), wd=(50.0,),
                         seed=(0, 1, 2, 3)),
      output=config.Output(ensemble=True))
