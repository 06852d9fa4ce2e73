"""The registry of model families: what every other module asks about a model.

A `Spec` names a family and holds its settings (n_factors, layers, ...); a
`Family`, registered by the family's own file, answers every question the
rest of jaxcf has about it: how to build its Flax module, which settings it
reads and which of those are compiled into the program, which embedding
tables index users or items, how a new user is folded in, whether it needs
side features, and how it trains.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcf.errors import UserError
from jaxcf.models import tableinit
from jaxcf.models.layers import YRange

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
BY = ("item", "user")


def _positive_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _y_range(v) -> bool:
  return v is None or (len(v) == 2 and all(math.isfinite(x) for x in v)
                       and v[0] < v[1])


# Each setting's check and what it must be (the message names it as a flag).
CHECKS = {
    "n_factors": (_positive_int, "a positive integer"),
    "layers": (lambda v: v is None or (len(v) > 0 and all(
        _positive_int(w) for w in v)), "positive integer widths"),
    "y_range": (_y_range, "LOW,HIGH with finite LOW < HIGH, or none"),
    "id_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "input_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "by": (lambda v: v in BY, f"one of {', '.join(BY)}"),
    "samples": (_positive_int, "a positive integer"),
    "implicit": (lambda v: isinstance(v, bool), "true or false"),
    "side_prior": (lambda v: isinstance(v, bool), "true or false"),
    "param_dtype": (lambda v: v in DTYPES, f"one of {', '.join(DTYPES)}"),
    "compute_dtype": (lambda v: v in DTYPES, f"one of {', '.join(DTYPES)}"),
}


@dataclasses.dataclass(frozen=True)
class Spec:
  """A model: its family's name and settings. A family reads only some of
  the settings (`Family.settings`); `normalised` blanks the others to None.

  Attributes:
    model: the family's registered name.
    n_factors: factor width of the factor-dot families.
    layers: hidden widths of the MLP families (None: the family's default).
    y_range: (low, high) of `sigmoid_range`, or None for a raw output.
    id_dropout: side_nn: the share of user ids hidden in training.
    input_dropout: autorec: the share of input ratings hidden in training.
    by: autorec: 'item' (I-AutoRec) or 'user' (U-AutoRec).
    samples: bpmf: posterior samples kept in the model.
    implicit: bpmf: prior means regressed on implicit feedback (see
      `jaxcf.featureprior`).
    side_prior: bpmf: prior means regressed on side features too.
    param_dtype, compute_dtype: 'float32' or 'bfloat16' (see `create`).
  """
  model: str = "dot_bias"
  n_factors: int | None = 50
  layers: tuple[int, ...] | None = None
  y_range: YRange = (0.0, 5.5)
  id_dropout: float | None = 0.0
  input_dropout: float | None = 0.0
  by: str | None = "item"
  samples: int | None = None
  implicit: bool | None = None
  side_prior: bool | None = None
  param_dtype: str = "float32"
  compute_dtype: str = "float32"

  def __post_init__(self):
    for name, (ok, rule) in CHECKS.items():
      value = getattr(self, name)
      if value is not None and not _safe(ok, value):
        raise UserError(f"--{name}={_show(value)} must be {rule}")

  @property
  def family(self) -> "Family":
    return get(self.model)

  def normalised(self) -> "Spec":
    """This spec as its family reads it: the family's defaults filled in,
    settings it ignores set to None (so two specs that build the same model
    compare equal)."""
    family = self.family
    values = {}
    for f in dataclasses.fields(Spec):
      if f.name == "model":
        continue
      value = getattr(self, f.name)
      if f.name not in family.settings:
        value = None
      elif value is None and f.name in family.defaults:
        value = family.defaults[f.name]
      values[f.name] = value
    return dataclasses.replace(self, **values)

  def group_key(self) -> tuple:
    """Specs with equal keys compile to one program (see `Family.in_state`)."""
    spec = self.normalised()
    family = spec.family
    return (spec.model, *(getattr(spec, s) for s in sorted(family.settings)
                          if s not in family.in_state),
            spec.y_range is None)

  def to_json(self) -> dict:
    out = dataclasses.asdict(self)
    for name in ("layers", "y_range"):
      out[name] = None if out[name] is None else list(out[name])
    return out

  @classmethod
  def from_json(cls, values: Mapping[str, Any]) -> "Spec":
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in values.items() if k in names}
    for name in ("layers", "y_range"):
      if values.get(name) is not None:
        values[name] = tuple(values[name])
    return cls(**values)


def _safe(ok, value) -> bool:
  try:
    return bool(ok(value))
  except (TypeError, ValueError):
    return False


def _show(value) -> str:
  if isinstance(value, (tuple, list)):
    return ",".join(str(v) for v in value)
  return str(value)


@dataclasses.dataclass(frozen=True, eq=False)  # compared by identity
class Family:
  """Everything jaxcf needs to know about a model family.

  Attributes:
    name: what --model calls it.
    module: the Flax module class (its own: `family_of` finds the family
      of a module by its class).
    create: (spec, n_users, n_items, side) -> the Flax module, which maps
      int32 user and item indices [batch] to float32 predictions [batch] as
      `apply(variables, users, items, train=..., times=...)`. side: the
      data's side-feature spec (`features.SideFeatures.spec`) or None.
    settings: the `Spec` fields the family reads; the others do not apply
      (a sweep over them is refused, or collapsed when another family in
      the sweep reads them).
    in_state: those settings whose values live in the model's variables
      (y_range, a dropout rate), so replicas differing in them still share
      one compiled program; every other setting is compiled in.
    defaults: values for settings left None (e.g. layers).
    tables: embedding tables ('params' names) indexed by user or item rows:
      name -> 'users' or 'items' (for sharding, fold-in, similar items, PCA).
    resize: (module, rows) -> the module with `rows`-row tables and the same
      widths, for row-wise optimisers (each step looks up one row per batch
      position); None: row-wise optimisers are not supported.
    fold_in: how a new user is fitted: 'ridge' (closed form, the prediction
      is linear in the user's rows before `sigmoid_range`: give `design`),
      'gradient' (Adam steps on the user's rows), 'sampled' (the family's
      own `fold_in_rows`, e.g. draws from a posterior), or None (not
      supported).
    fold_in_rows: for 'sampled': (params, items int [n], ratings [n],
      user_trained bool [n_users]) -> {user table: row}.
    design: for 'ridge': (params, items int [n]) -> (X float64 [n, d],
      offset float64 [n]): the pre-squash score of a user whose rows, in
      the order of `user_rows`, concatenate to w [d] is X @ w + offset.
    user_rows: the user tables a fold-in fits, in `design`'s order.
    needs_side: whether the module needs the data's side features.
    trainer: 'batches' (minibatches of ratings, `jaxcf.training`),
      'full_batch' (whole rating columns, `jaxcf.fullbatch`) or 'gibbs'
      (a sampler, `jaxcf.gibbs`).
    scores: optional (variables, module, users int [U]) -> [U, n_items]
      scores of every item, where that is much cheaper than predicting
      each pair (AutoRec decodes each item's column once).
    fold_in_start: optional (spec, params) -> {user table: row} or None,
      the user a fold-in starts from; None: the mean trained user.
  """
  name: str
  module: type[nn.Module]
  create: Callable[[Spec, int, int, Any], nn.Module]
  settings: frozenset[str]
  in_state: frozenset[str] = frozenset({"y_range"})
  defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  tables: Mapping[str, str] = dataclasses.field(default_factory=dict)
  resize: Callable[[nn.Module, int], nn.Module] | None = None
  fold_in: str | None = None
  design: Callable[[Any, Any], tuple[Any, Any]] | None = None
  user_rows: tuple[str, ...] = ()
  needs_side: bool = False
  trainer: str = "batches"
  scores: Callable[..., jax.Array] | None = None
  fold_in_start: Callable[[Spec, Any], dict] | None = None
  fold_in_rows: Callable[..., dict] | None = None

  def __post_init__(self):
    unknown = set(self.settings) - set(CHECKS)
    if unknown:
      raise ValueError(f"family {self.name}: unknown settings {unknown}")
    if self.fold_in == "ridge" and self.design is None:
      raise ValueError(f"family {self.name}: fold_in='ridge' needs design")
    if self.fold_in == "sampled" and self.fold_in_rows is None:
      raise ValueError(f"family {self.name}: fold_in='sampled' needs "
                       "fold_in_rows")
    if self.fold_in not in (None, "ridge", "gradient", "sampled"):
      raise ValueError(f"family {self.name}: fold_in={self.fold_in!r}")


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
  """Adds a family (called by the family's own file, at import)."""
  if family.name in FAMILIES:
    raise ValueError(f"model family {family.name!r} is registered twice")
  if any(f.module is family.module for f in FAMILIES.values()):
    raise ValueError(f"family {family.name}: {family.module.__name__} is "
                     "another family's module; subclass it")
  FAMILIES[family.name] = family
  return family


def get(name: str) -> Family:
  """The family called `name`, or a UserError listing the known ones."""
  if name not in FAMILIES:
    raise UserError(f"--model={name} is unknown; choose one of "
                    f"{', '.join(FAMILIES)}")
  return FAMILIES[name]


def family_of(model: nn.Module) -> Family:
  """The family whose module `model` is."""
  for family in FAMILIES.values():
    if type(model) is family.module:  # pylint: disable=unidiomatic-typecheck
      return family
  raise ValueError(f"{type(model).__name__} is no registered family's module")


def create(name: str, n_users: int, n_items: int, *, side=None,
           **settings) -> nn.Module:
  """Builds a model by name, e.g. create('dot_bias', 944, 1665, n_factors=50).

  Args:
    name: a registered family.
    n_users, n_items: table rows, counting the `#na#` row.
    side: side-feature spec for families that need it (side_nn).
    **settings: `Spec` fields; param_dtype is what the weights (and so the
      optimiser's moments) are stored in, compute_dtype what lookups and
      layers compute in (outputs, the loss and BatchNorm statistics stay
      float32).
  """
  return build(Spec(model=name, **settings), n_users, n_items, side)


def build(spec: Spec, n_users: int, n_items: int, side=None) -> nn.Module:
  """The Flax module of a spec for tables of n_users and n_items rows."""
  spec = spec.normalised()
  family = spec.family
  if family.needs_side and side is None:
    raise UserError(f"model {spec.model} needs side features: attach them "
                    "with jaxcf.features (train.py does, for MovieLens)")
  if side is not None and not family.needs_side:
    raise UserError(f"model {spec.model} takes no side information")
  return family.create(spec, n_users, n_items, side)


def dtypes(spec: Spec) -> dict:
  """The module attributes param_dtype and compute_dtype of a spec."""
  return {"param_dtype": DTYPES[spec.param_dtype or "float32"],
          "compute_dtype": DTYPES[spec.compute_dtype or "float32"]}


def _param_shapes(model: nn.Module) -> list[jax.ShapeDtypeStruct]:
  # One trace per module, shared with the initialisation's table keys.
  return jax.tree.leaves(tableinit.traced_init(model).params)


def count_params(model: nn.Module) -> int:
  """Number of trainable parameters (BatchNorm statistics excluded)."""
  return sum(x.size for x in _param_shapes(model))


def param_bytes(model: nn.Module) -> int:
  """Bytes of the trainable parameters, in their storage dtype."""
  return sum(x.size * x.dtype.itemsize for x in _param_shapes(model))
