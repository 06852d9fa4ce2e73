"""Reading a trained model: the book's interpretation of its factors.

Biases (the least and most liked items), the factor matrices, the PCA of
the item factors and items whose factors point the same way. A mixin of
`trained.TrainedModel`; an ensemble is read through its first member, the
best on validation.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from jaxcf.errors import UserError


def positive(value, name: str) -> int:
  """value as an int, or a UserError unless it is a positive integer."""
  if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
      or value < 1):
    raise UserError(f"{name}={value!r} must be a positive integer")
  return int(value)


class Interpretation:
  """What `TrainedModel` reads its factors with (it provides items, users,
  item_counts, train, specs, state, item_index and _item_frame)."""

  def factors(self, kind: str = "item") -> pd.DataFrame:
    """The factor (embedding) matrix of items or users, a row per id."""
    table = self._table(kind, "factors")
    vocab = self.items if kind == "item" else self.users
    return pd.DataFrame(table[1:], index=vocab.classes)

  def biases(self, kind: str = "item") -> pd.DataFrame:
    """Learnt biases of trained items (or users), from the lowest up."""
    bias = self._table(kind, "bias")[:, 0]
    counts = (self.item_counts if kind == "item" else
              np.bincount(np.asarray(self.train.users),
                          minlength=len(self.users)))
    keep = np.nonzero(counts > 0)[0]
    keep = keep[keep > 0]
    if kind == "item":
      frame = self._item_frame(keep, bias=bias[keep], n_ratings=counts[keep])
    else:
      frame = pd.DataFrame({"user": self.users.decode(keep),
                            "bias": bias[keep], "n_ratings": counts[keep]})
    return frame.sort_values("bias", kind="stable").reset_index(drop=True)

  def similar_items(self, item, k: int = 10, min_ratings: int = 10
                    ) -> pd.DataFrame:
    """Items whose factors point the same way (cosine), among items rated at
    least `min_ratings` times in training: cosine alone ranks barely-rated
    items, whose factors hardly moved from their random start, first."""
    index = self.item_index(item)
    positive(k, "k")
    table = self._table("item", "factors")
    unit = table / np.maximum(np.linalg.norm(table, axis=1, keepdims=True),
                              1e-12)
    cosine = unit @ unit[index]
    eligible = self.item_counts >= max(1, min_ratings)
    eligible[[0, index]] = False
    order = np.argsort(-np.where(eligible, cosine, -np.inf), kind="stable")
    top = order[:min(k, int(eligible.sum()))]
    return self._item_frame(top, similarity=cosine[top],
                            n_ratings=self.item_counts[top])

  def pca(self, n: int = 3, top: int = 1000) -> pd.DataFrame:
    """The book's PCA of item factors over the `top` most-rated items: the
    centred factors projected on their first n principal directions."""
    table = self._table("item", "factors")
    positive(top, "top")
    if not 1 <= positive(n, "n") <= table.shape[1]:
      raise UserError(f"pca(n={n}): the item factors have {table.shape[1]} "
                      f"dimensions; n must lie in [1, {table.shape[1]}]")
    order = np.argsort(-self.item_counts, kind="stable")
    chosen = order[:min(top, int((self.item_counts > 0).sum()))]
    x = table[chosen] - table[chosen].mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    proj = x @ vt[:n].T
    return self._item_frame(chosen, n_ratings=self.item_counts[chosen],
                            **{f"pc{j + 1}": proj[:, j] for j in range(n)})

  def _table(self, kind: str, what: str) -> np.ndarray:
    if kind not in ("item", "user"):
      raise UserError(f"kind must be 'item' or 'user', not {kind!r}")
    name = f"{kind}_{what}"
    spec = self.specs[0]
    if spec.family.tables.get(name) != f"{kind}s":
      raise UserError(f"model {spec.model} has no {kind} {what}")
    # float32 whatever the stored dtype: numpy and pandas know no bfloat16.
    return np.asarray(self.state.params[name]["embedding"], np.float32)
