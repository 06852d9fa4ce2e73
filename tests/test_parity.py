"""Parity with fastai on its own validation splits (the acceptance bar).

Trains the book's recipes on ML-100k with fastai's seed-42/1/2 validation
rows; about a minute on 2 CPU cores. Skipped, with the reason shown, when
MovieLens 100k or the fastai split files are not available.
"""

import numpy as np
import pytest

from benchmarks import parity

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def splits(ml100k, fastai_splits):
  del fastai_splits
  return parity.load_splits(str(ml100k))


def _finals(curves):
  return [c[-1] for c in curves]


@pytest.mark.parametrize("model, wd, bound", [
    ("dot_bias", 0.1, 0.8626),      # fastai 0.8586
    ("embedding_nn", 0.1, 0.8841),  # fastai 0.8781
    ("collab_nn", 0.01, 0.8864),    # fastai 0.8804
])
def test_mean_valid_mse_within_bound(splits, model, wd, bound):
  finals = _finals(parity.run_case(parity.Case(model, wd), splits))
  assert np.mean(finals) <= bound, finals


def test_no_weight_decay_overfits_like_fastai(splits):
  for curve in parity.run_case(parity.Case("dot_bias", 0.0), splits):
    assert curve[-1] > min(curve) + 0.02, curve


@pytest.mark.parametrize("wd", [0.1, 0.0])
def test_fastai_sampling_reproduces_fastai_numbers(splits, wd):
  """Drawing rows with replacement, as fastai 2.8's loader does, lands on
  fastai's own scores (different random streams: within 0.01)."""
  finals = _finals(parity.run_case(parity.Case("dot_bias", wd,
                                               "replacement"), splits))
  assert np.mean(finals) == pytest.approx(
      np.mean(parity.FASTAI[("dot_bias", wd)]), abs=0.01), finals
