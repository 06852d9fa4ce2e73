"""jaxcf: collaborative filtering the JAX way (fastai's chapter 8, exact).

Modules, in the order data flows: io, movielens -> data, datasets -> models
-> optim, training, sweep -> ranking, checkpoint, trained -> inspect, plots.
See README.md.
"""

__version__ = "0.1.0"


def load(path: str, device=None):
  """The model `train.py --workdir=path` saved, as a `trained.TrainedModel`."""
  from jaxcf import trained  # pylint: disable=g-import-not-at-top
  return trained.load(path, device)
