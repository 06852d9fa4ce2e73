"""The book's neural model as fastai builds it: EmbeddingNN, layers
[100, 50] (Linear -> ReLU -> BatchNorm), embeddings sized by fastai's rule,
fit_one_cycle(5, 5e-3, wd=0.1).

  python train.py --config=configs/book_embedding_nn.py --data_dir=../shared/data
"""

from jaxcf import config


def get_config() -> config.RunConfig:
  return config.RunConfig(
      model=config.Model(model=("embedding_nn",), layers=((100, 50),)),
      train=config.Train(epochs=5, lr=(5e-3,), wd=(0.1,)))
