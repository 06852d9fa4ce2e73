"""The book's CollabNN: concatenated embeddings through Linear(100) -> ReLU
-> Linear(1), fit_one_cycle(5, 5e-3, wd=0.01).

  python train.py --config=configs/book_collab_nn.py --data_dir=../shared/data
"""

from jaxcf import config


def get_config() -> config.RunConfig:
  return config.RunConfig(
      model=config.Model(model=("collab_nn",), layers=((100,),)),
      train=config.Train(epochs=5, lr=(5e-3,), wd=(0.01,)))
