"""train.py's absl flags: one per `config.RunConfig` field, same name.

`define(flag_values)` defines them (help texts from the fields); `build(
flag_values)` makes the RunConfig: from `--config=FILE` (a Python file whose
`get_config()` returns a RunConfig) or the defaults, then every flag given
on the command line (or in a --flagfile) replaces its field. List fields
take comma-separated values (`--lr=1e-3,5e-3`), --layers and --y_range
semicolon-separated ones. Paths expand `~` and `$VARS` as a shell would,
flagfiles included. A flag that no model of the run reads is refused.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any, Callable

from absl import flags

from jaxcf import config as config_lib
from jaxcf import fullbatch, gibbs, models, optim, sparse
from jaxcf.errors import UserError

PATHS = ("data_dir", "ratings_file", "items_file", "valid_file", "workdir")
LIST_SEPARATORS = {"layers": ";", "y_range": ";"}


def _widths(text: str) -> tuple[int, ...] | None:
  try:
    widths = tuple(int(v) for v in text.split(",") if v.strip())
  except ValueError:
    raise UserError(f"--layers={text} must be comma-separated integers, "
                    "e.g. 100,50") from None
  return widths or None


def _y_range(text: str):
  if text.strip().lower() in ("none", ""):
    return None
  try:
    low, high = (float(v) for v in text.split(","))
  except ValueError:
    raise UserError(f"--y_range={text} must be LOW,HIGH (e.g. 0,5.5) or "
                    "'none'") from None
  return (low, high)


ITEM_PARSERS: dict[str, Callable[[str], Any]] = {
    "model": str, "n_factors": int, "layers": _widths, "y_range": _y_range,
    "id_dropout": float, "input_dropout": float, "lr": float, "wd": float,
    "seed": int}


def _parse_list(name: str, text: str) -> tuple:
  sep = LIST_SEPARATORS.get(name, ",")
  convert = ITEM_PARSERS[name]
  parts = [p.strip() for p in text.split(sep)]
  if name not in LIST_SEPARATORS:
    parts = [p for p in parts if p]
  if not parts:
    raise UserError(f"--{name} is empty")
  if convert in (int, float):
    try:
      return tuple(convert(p) for p in parts)
    except ValueError:
      raise UserError(f"--{name}={text}: cannot read the values (expected "
                      f"{convert.__name__}s separated by '{sep}')") from None
  return tuple(convert(p) for p in parts)


def _format(name: str, value) -> str | None:
  """A field's value as its flag's text (the flag's default)."""
  if name not in ITEM_PARSERS or value is None:
    return value
  sep = LIST_SEPARATORS.get(name, ",")
  show = lambda v: ("" if v is None and name == "layers" else
                    "none" if v is None else
                    ",".join(map(str, v)) if isinstance(v, tuple) else str(v))
  return sep.join(show(v) for v in value)


def _help(name: str, f: dataclasses.Field) -> str:
  if name == "model":
    return (" | ".join(models.FAMILIES) + ", or a list (one program per "
            "shape); autorec trains alone, full-batch: --epochs default "
            f"{fullbatch.DEFAULTS['epochs']}, --lr {fullbatch.DEFAULTS['lr']},"
            f" --wd is its L2 weight, default {fullbatch.DEFAULTS['wd']:g}.")
  if name in ("epochs", "lr", "wd", "item_name"):
    return f.metadata["doc"]
  if name == "optimizer":
    return (f"{' | '.join(optim.DENSE)} (dense, under the one cycle; adamw "
            f"is fastai's), or {' | '.join(sparse.KINDS)}: update only the "
            "embedding rows a batch uses (large tables).")
  return f.metadata["doc"]


def define(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines --config and one flag per config field."""
  flags.DEFINE_string("config", None, "A Python file whose get_config() "
                      "returns a jaxcf.config.RunConfig (e.g. configs/"
                      "book.py); flags given too override its fields.",
                      flag_values=flag_values)
  for name, (_, f) in config_lib.fields().items():
    default = _format(name, f.default)
    kind = f.type.split("|")[0].strip()  # the annotation, e.g. 'int | None'
    if name in ITEM_PARSERS or kind == "str":
      flags.DEFINE_string(name, default, _help(name, f),
                          flag_values=flag_values)
    elif kind == "bool":
      flags.DEFINE_bool(name, default, _help(name, f),
                        flag_values=flag_values)
    elif kind == "int":
      flags.DEFINE_integer(name, default, _help(name, f),
                           flag_values=flag_values)
    else:
      flags.DEFINE_float(name, default, _help(name, f),
                         flag_values=flag_values)


def _value(name: str, f: dataclasses.Field, raw):
  """The field value of a flag's raw value."""
  del f
  if raw is None:
    return None
  if name in ITEM_PARSERS:
    return _parse_list(name, raw)
  if name in PATHS:
    return os.path.expanduser(os.path.expandvars(raw))
  return raw


def load_file(path: str) -> config_lib.RunConfig:
  """get_config() of a config file."""
  path = os.path.expanduser(os.path.expandvars(path))
  if not os.path.isfile(path):
    raise UserError(f"--config={path}: no such file")
  spec = importlib.util.spec_from_file_location("jaxcf_user_config", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"--config={path} failed to load: {type(e).__name__}: "
                    f"{e}") from None
  if not hasattr(module, "get_config"):
    raise UserError(f"--config={path} defines no get_config()")
  try:
    result = module.get_config()
  except UserError as e:
    raise UserError(f"--config={path}: {e}") from None
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"--config={path}: get_config() failed: "
                    f"{type(e).__name__}: {e}") from None
  if not isinstance(result, config_lib.RunConfig):
    raise UserError(f"--config={path}: get_config() must return a "
                    "jaxcf.config.RunConfig")
  return result


def build(flag_values: flags.FlagValues = flags.FLAGS
          ) -> config_lib.RunConfig:
  """The run's config: the --config file (or defaults) and the flags given."""
  fv = flag_values
  base = load_file(fv.config) if fv.config else None
  given = {name for name in config_lib.fields() if fv[name].present}
  names = given if base else set(config_lib.fields())
  values = {name: _value(name, f, fv[name].value)
            for name, (_, f) in config_lib.fields().items() if name in names}
  config = config_lib.replace(base or config_lib.RunConfig(), **values)
  _refuse_inapplicable(given, config.model.families)
  return config


def _refuse_inapplicable(given: set[str], families) -> None:
  """A flag given on the command line that no model of the run reads."""
  names = ",".join(f.name for f in families)
  full_batch = all(f.trainer == "full_batch" for f in families)
  sampled = all(f.trainer == "gibbs" for f in families)
  for name in sorted(given):
    if name in models.registry.CHECKS and not any(
        name in f.settings for f in families):
      raise UserError(f"--{name} does not apply to --model={names}; drop it")
    if name == "side" and not any(f.needs_side for f in families):
      raise UserError(f"--side does not apply to --model={names} (side_nn "
                      "reads side information); drop it")
    if full_batch and name in fullbatch.IGNORED:
      raise UserError(f"--{name} does not apply to --model={names} (it "
                      "trains full-batch with Adam); drop it")
    if sampled and name in gibbs.IGNORED:
      raise UserError(f"--{name} does not apply to --model={names} (it is "
                      "sampled by Gibbs sweeps, not optimised); drop it")
    if name == "burn_in" and not sampled:
      raise UserError(f"--burn_in does not apply to --model={names} (bpmf "
                      "reads it); drop it")
