"""A run as a value: one frozen config tree, checked when it is built.

    RunConfig(data=Data(...), model=Model(...), train=Train(...),
              output=Output(...), hosts=Hosts(...))

Every field is named as train.py's flag that sets it (`jaxcf.cliconfig`
defines the flags from these fields, with the help texts in
`jaxcf.sections`), so a config file (`configs/*.py`, a `get_config()`
returning a RunConfig) and the command line speak one language, and flags
override a file field by field.
`Model` and the list fields of `Train` (lr, wd, seed) are sweep axes: their
cartesian product is the run's replicas. A bad value is a UserError naming
the flag, before any work.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from jaxcf.errors import UserError
from jaxcf.sections import Data, Hosts, Model, Output, Train  # pylint: disable=unused-import


SECTIONS = ("data", "model", "train", "output", "hosts")


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """A whole run: `jaxcf.experiment.train_and_evaluate(config)` runs it."""
  data: Data = Data()
  model: Model = Model()
  train: Train = Train()
  output: Output = Output()
  hosts: Hosts = Hosts()

  def resolved(self) -> "RunConfig":
    """The config with epochs, lr and wd left None filled in by the models'
    trainer (`training.DEFAULTS` or `fullbatch.DEFAULTS`), and item_name
    by the data (titles where there are any)."""
    from jaxcf import fullbatch, gibbs, training  # pylint: disable=g-import-not-at-top
    trainer = self.model.families[0].trainer
    defaults = {"full_batch": fullbatch.DEFAULTS, "gibbs": gibbs.DEFAULTS,
                "batches": training.DEFAULTS}[trainer]
    values = {}
    for name, value in defaults.items():
      if getattr(self.train, name) is None:
        values[name] = value if name == "epochs" else (value,)
    d = self.data
    # Titles key items where the book does (ml-100k); the larger releases
    # and a ratings file without titles are keyed by id.
    by_id = ((d.ratings_file and not d.items_file) or
             (not d.ratings_file and d.dataset not in ("movielens",
                                                       "ml-100k",
                                                       "synthetic")))
    item_name = d.item_name or ("movie" if by_id else "title")
    return dataclasses.replace(
        self, train=dataclasses.replace(self.train, **values),
        data=dataclasses.replace(d, item_name=item_name))

  def replicas(self):
    """The cartesian product of the sweep axes, normalised and without
    duplicates (`sweep.grid`)."""
    from jaxcf import sweep  # pylint: disable=g-import-not-at-top
    m, t = self.model, self.resolved().train
    return sweep.grid(model=list(m.model), n_factors=list(m.n_factors),
                      layers=list(m.layers), y_range=list(m.y_range),
                      id_dropout=list(m.id_dropout),
                      input_dropout=list(m.input_dropout),
                      param_dtype=[m.param_dtype],
                      compute_dtype=[m.compute_dtype],
                      samples=[m.samples], implicit=[m.implicit],
                      side_prior=[m.side_prior],
                      lr=list(t.lr), wd=list(t.wd), seed=list(t.seed))

  def train_config(self, replica=None):
    """The `training.TrainConfig` every replica shares (with `replica`'s
    lr, wd and seed when given)."""
    from jaxcf import training  # pylint: disable=g-import-not-at-top
    t = self.resolved().train
    values = dict(epochs=t.epochs, batch_size=t.bs, pct_start=t.pct_start,
                  div=t.div, div_final=t.div_final, sampling=t.sampling,
                  optimizer=t.optimizer, eval_batch_size=t.eval_bs,
                  row_kernel=t.row_kernel, eval_every=max(1, t.epochs // 10),
                  burn_in=t.burn_in)
    if replica is not None:
      values.update(lr=replica.lr, wd=replica.wd, seed=replica.seed)
    return training.TrainConfig(**values)

  def to_json(self) -> dict:
    """The resolved config as JSON (what config.json holds)."""
    return json.loads(json.dumps(dataclasses.asdict(self.resolved())))

  def fingerprint(self, data_hash: str | None = None) -> dict:
    """What a resumed run must share with the run it continues: every field
    that changes the result, and the data's content hash."""
    return {**fingerprint_of(self.to_json()), "data_hash": data_hash}


def fingerprint_of(config_json: dict) -> dict:
  """The fingerprint (without the data hash) of a config as config.json
  holds it (`RunConfig.to_json`)."""
  return {f.name: config_json.get(section, {}).get(f.name)
          for section in SECTIONS
          for f in dataclasses.fields(_SECTION_TYPES[section])
          if f.metadata["affects_result"]}


_SECTION_TYPES = {"data": Data, "model": Model, "train": Train,
                  "output": Output, "hosts": Hosts}


def fields() -> dict[str, tuple[str, dataclasses.Field]]:
  """Every config field by name (= its flag's name): (section, field)."""
  return {f.name: (section, f) for section in SECTIONS
          for f in dataclasses.fields(_SECTION_TYPES[section])}


def replace(config: RunConfig, **values) -> RunConfig:
  """config with fields replaced by name, e.g. replace(c, lr=(1e-2,))."""
  by_section: dict[str, dict[str, Any]] = {}
  known = fields()
  for name, value in values.items():
    if name not in known:
      raise UserError(f"no config field {name!r}")
    by_section.setdefault(known[name][0], {})[name] = value
  return dataclasses.replace(config, **{
      section: dataclasses.replace(getattr(config, section), **changes)
      for section, changes in by_section.items()})
