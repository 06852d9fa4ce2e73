"""Collaborative-filtering models: one file per family, found by name.

Every family is a Flax Linen module mapping int32 user and item indices
[batch] to float32 predicted ratings [batch], as `model.apply(variables,
users, items, train=..., times=...)` (only side_nn reads the rating times),
plus one `registry.Family` record, registered by its own file, that answers
every question the rest of jaxcf asks about it:

| field | who asks | what for |
|---|---|---|
| `create` | training, sweeps, saved models | the module for a `Spec` and table sizes |
| `settings`, `in_state`, `defaults` | sweeps, the CLI | which settings apply (others are refused or collapsed), which are compiled in (one program per distinct value) |
| `tables` | sharding, fold-in, similar items, PCA | which embedding tables index users or items |
| `resize` | row-wise optimisers | the module with one table row per batch position |
| `fold_in`, `design`, `user_rows` | `jaxcf.foldin` | ridge in closed form, gradient steps, or not supported |
| `needs_side` | data loading | the side-feature tables it needs |
| `trainer`, `scores` | runs, ranking | minibatches or full batch; a cheap all-items score |

Families: `dot`, `dot_bias` (`dot.py`), `collab_nn`, `embedding_nn`
(`mlp.py`), `side_nn` (`side.py`), `gmf` (`gmf.py`), `autorec`
(`autorec.py`), `bpmf` (`bpmf.py`). Shared layers and fastai's initialisation: `layers.py`.

Adding a family (`gmf.py` is the worked example, ~60 lines):
1. Write `jaxcf/models/<name>.py`: the module (use `layers.embed` for
   tables, `layers.squash` for `sigmoid_range`), then
   `registry.register(registry.Family(name=..., create=..., settings=...,
   tables=..., ...))` with the answers above.
2. Add `<name>` to the import line at the bottom of this file.
Nothing else changes: `train.py --model=<name>` trains it, sweeps group it
by its compiled settings, `jaxcf.load` reads it back, fold-in, similar
items, PCA and row-wise optimisers work where its record says so, and
`tests/test_families.py` runs its table over it.
"""

from jaxcf.models.layers import (BatchNorm, Linear, YRange, embedding_size,
                                 fastai_embedding_init, sigmoid_range)
from jaxcf.models.registry import (DTYPES, FAMILIES, Family, Spec, build,
                                   count_params, create, family_of, get,
                                   param_bytes, register)

# The families register themselves when imported, in the order --help lists.
from jaxcf.models import dot, mlp, side, gmf, autorec, bpmf  # pylint: disable=g-bad-import-order
