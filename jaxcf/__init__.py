"""jaxcf: collaborative filtering the JAX way (fastai's chapter 8, exact).

Modules, in the order data flows: io, movielens, synthetic -> data,
datasets, features -> models (one file per family) -> optim, sparse ->
steps -> loop, hooks <- training, sweep, fullbatch -> config, experiment ->
artifact, trained, foldin -> inspect, plots. See README.md's Architecture.
"""

__version__ = "0.1.0"


def load(path: str, device=None):
  """The model `train.py --workdir=path` saved, as a `trained.TrainedModel`."""
  from jaxcf import trained  # pylint: disable=g-import-not-at-top
  return trained.load(path, device)
