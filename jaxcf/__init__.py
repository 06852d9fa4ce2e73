"""jaxcf: collaborative filtering the JAX way (fastai's chapter 8, exact).

Modules, in the order data flows: io, movielens -> data, datasets -> models
-> optim, training. See README.md.
"""

__version__ = "0.1.0"
