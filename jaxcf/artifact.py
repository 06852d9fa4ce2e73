"""The one file format of a trained thing: a model, or an ensemble of models.

An `Artifact` holds one or more members — each a model spec
(`models.Spec`), its parameters and its other variables (BatchNorm
statistics, y_range, side-feature tables, AutoRec's rating matrix) — and
what a person needs to use them by ids: the vocabularies, titles, the
training and validation pairs, side-feature vocabularies and the run's
info. A single run, a sweep's best replica, a whole ensemble (predicting
its members' mean) and AutoRec all save as one: `save` writes it with
orbax (atomically), `load` reads it back onto any device.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxcf import checkpoint, models, runinfo
from jaxcf.data import CollabData, Ratings, Vocab
from jaxcf.errors import UserError

FORMAT = "jaxcf-model-2"
OLD_FORMATS = ("jaxcf-model-1",)  # one model, its spec at the top level


@dataclasses.dataclass
class Member:
  """One model: its spec and variables ('params' and the other
  collections, as `steps.TrainState` keeps them)."""
  spec: models.Spec
  params: Any
  model_state: dict


@dataclasses.dataclass
class Artifact:
  """Members, vocabularies and pairs (see the module docstring).

  titles: object [n_items] aligned with `items` (index 0 '#na#'), or None;
  item_ids: raw item id -> vocabulary key (ids of titled items); side: the
  side-feature spec the members were built with, and side_vocab the user
  features' categories and scales (`features.SideFeatures`).
  """
  members: list[Member]
  users: Vocab
  items: Vocab
  item_key: str
  titles: np.ndarray | None
  item_ids: dict
  train: Ratings
  valid: Ratings
  info: dict
  side: dict | None = None
  side_vocab: dict | None = None

  def module(self, member: Member):
    """The Flax module of a member, for this artifact's tables."""
    return models.build(member.spec, len(self.users), len(self.items),
                        self.side if member.spec.family.needs_side else None)

  @classmethod
  def from_training(cls, members: Sequence[tuple[models.Spec, Any, dict]],
                    data: CollabData, info: dict | None = None) -> "Artifact":
    """From (spec, params, model_state) of each trained member (a spec or a
    `sweep.Replica`) and the data they were trained on. Tables padded for a
    mesh are cut to the data."""
    cut = lambda name, v: ({"embedding": v["embedding"][:len(
        data.users if name.startswith("user") else data.items)]}
                           if name.startswith(("user_", "item_"))
                           and "embedding" in v else v)
    table = data.table
    titles, item_ids = None, {}
    if "title" in table:
      pairs = table[["item", "title"]].drop_duplicates("item")  # per item
      if data.item_key == "title":
        titles = data.items.decode(np.arange(len(data.items)))
        item_ids = dict(zip(pairs["item"], pairs["title"]))
      else:
        by_id = dict(zip(pairs["item"], pairs["title"]))
        titles = np.array(["#na#"] + [by_id[i] for i in data.items.classes],
                          dtype=object)
    side = side_vocab = None
    if data.side is not None and any(models.get(m[0].model).needs_side
                                     for m in members):
      side = dict(data.side.spec)
      side_vocab = {"categories": data.side.categories,
                    "scales": data.side.scales}
    return cls(
        members=[Member(models.Spec.from_json(spec.to_json()).normalised(),
                        {k: cut(k, v) for k, v in params.items()},
                        model_state) for spec, params, model_state in members],
        users=data.users, items=data.items, item_key=data.item_key,
        titles=titles, item_ids=item_ids, train=data.train, valid=data.valid,
        info=info or {}, side=side, side_vocab=side_vocab)

  def save(self, path: str) -> None:
    """Writes the artifact (orbax, atomic) to the directory `path`."""
    arrays = {"members": [{"params": m.params, "model_state": m.model_state}
                          for m in self.members],
              "train": _triples(self.train), "valid": _triples(self.valid)}
    plain = lambda a: [v.item() if hasattr(v, "item") else v for v in a]
    meta = {
        "format": FORMAT, "members": [m.spec.to_json() for m in self.members],
        "item_key": self.item_key,
        "users": plain(self.users.classes), "items": plain(self.items.classes),
        "titles": None if self.titles is None else plain(self.titles),
        "item_ids": [plain(self.item_ids), plain(self.item_ids.values())],
        "side": _jsonable(self.side), "side_vocab": self.side_vocab,
        "info": self.info, "pairs": [self.train.size, self.valid.size],
        "versions": runinfo.versions(),
        "saved": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }
    checkpoint.save(path, arrays, meta)

  @classmethod
  def load(cls, path: str, device=None) -> "Artifact":
    """Reads what `save` wrote (pass the directory or a workdir holding
    model/) onto `device` (default: JAX's default device)."""
    if os.path.isdir(os.path.join(path, "model")):
      path = os.path.join(path, "model")
    meta = checkpoint.read_meta(path)
    fmt = meta.get("format")
    if fmt not in (FORMAT, *OLD_FORMATS):
      raise UserError(f"{path} holds a checkpoint, but not a jaxcf model "
                      f"(format {fmt!r}, expected {FORMAT!r})")
    if fmt != FORMAT:
      meta = _upgrade(meta)
    users = Vocab.from_classes(_ids(meta["users"]))
    items = Vocab.from_classes(_ids(meta["items"]))
    specs = [models.Spec.from_json(s).normalised() for s in meta["members"]]
    shell = cls([Member(s, None, {}) for s in specs], users, items,
                meta["item_key"], None, {}, None, None, meta["info"],
                _side(meta.get("side")), meta.get("side_vocab"))
    like_members = []
    for member in shell.members:
      init = shell.module(member).init
      shapes = dict(jax.eval_shape(  # traced: nothing compiled
          lambda ids, init=init: init(jax.random.key(0), ids, ids),
          jax.ShapeDtypeStruct((1,), jnp.int32)))
      like_members.append({"params": shapes.pop("params"),
                           "model_state": shapes})
    n_train, n_valid = meta.get("pairs") or _pair_counts(path)
    pairs = lambda n: {"users": jax.ShapeDtypeStruct((n,), jnp.int32),
                       "items": jax.ShapeDtypeStruct((n,), jnp.int32),
                       "ratings": jax.ShapeDtypeStruct((n,), jnp.float32)}
    like = {"members": like_members, "train": pairs(n_train),
            "valid": pairs(n_valid)}
    if fmt != FORMAT:  # one member, at the top level
      like = {**like_members[0], "train": like["train"],
              "valid": like["valid"]}
    arrays = checkpoint.restore(path, like, device,
                                meta.get(checkpoint.CHECKSUMS))
    if fmt != FORMAT:
      arrays["members"] = [{"params": arrays.pop("params"),
                            "model_state": arrays.pop("model_state")}]
    for member, saved in zip(shell.members, arrays["members"]):
      member.params, member.model_state = (saved["params"],
                                           saved["model_state"])
    shell.titles = (None if meta["titles"] is None
                    else np.asarray(meta["titles"], dtype=object))
    shell.item_ids = dict(zip(*meta["item_ids"]))
    shell.train = Ratings(**arrays["train"])
    shell.valid = Ratings(**arrays["valid"])
    return shell


def _upgrade(meta: dict) -> dict:
  """A jaxcf-model-1 file's metadata in this format's terms."""
  spec = dict(meta["spec"])
  side = spec.pop("side", None)
  if side:
    spec["id_dropout"] = side.pop("id_dropout", 0.0)
  return {**meta, "members": [spec], "side": side}


def _side(side: Mapping | None) -> dict | None:
  if side is None:
    return None
  return {k: tuple(v) if isinstance(v, list) else v for k, v in side.items()}


def _jsonable(side: Mapping | None):
  if side is None:
    return None
  return {k: list(v) if isinstance(v, tuple) else v for k, v in side.items()}


def _ids(values: Sequence) -> np.ndarray:
  """Vocabulary classes from JSON: int64 when every value is an int."""
  if all(isinstance(v, int) for v in values):
    return np.asarray(values, dtype=np.int64)
  return np.asarray(values, dtype=object)


def _triples(r: Ratings) -> dict:
  return {"users": r.users, "items": r.items, "ratings": r.ratings}


def _pair_counts(path: str) -> tuple[int, int]:
  """Lengths of the saved train/valid arrays, from orbax's metadata (for
  models saved before the metadata recorded them)."""
  with open(os.path.join(path, "arrays", "_METADATA")) as f:
    tree = json.load(f)["tree_metadata"]
  def length(split):
    for key, value in tree.items():
      if split in key and "ratings" in key:
        return int(value["value_metadata"]["write_shape"][0])
    raise UserError(f"{path}: the checkpoint holds no {split} ratings")
  return length("train"), length("valid")


def export_npz(artifact: Artifact, path: str) -> None:
  """Writes plain arrays that numpy alone reads (np.load, no pickle).

  Keys: 'params/<module>/<name>' and 'model_state/...' arrays of the first
  member (of member k > 0: 'member<k>/params/...'; bfloat16 weights widened
  to float32, which numpy has), 'users', 'items' (ids or titles), 'titles'
  when known, and 'meta' (a JSON string: the members' specs, the item key).
  """
  flat = {}
  for k, member in enumerate(artifact.members):
    for prefix, tree in (("params", member.params),
                         ("model_state", member.model_state)):
      prefix = prefix if k == 0 else f"member{k}/{prefix}"
      for keypath, leaf in jax.tree_util.tree_leaves_with_path(tree):
        name = "/".join(str(getattr(p, "key", p)) for p in keypath)
        if leaf.dtype == jnp.bfloat16:
          leaf = leaf.astype(jnp.float32)
        flat[f"{prefix}/{name}"] = np.asarray(leaf)
  text = lambda a: (np.asarray([str(v) for v in a]) if a.dtype == object
                    else np.asarray(a))
  flat["users"] = text(artifact.users.classes)
  flat["items"] = text(artifact.items.classes)
  if artifact.titles is not None:
    flat["titles"] = text(artifact.titles[1:])
  specs = [m.spec.to_json() for m in artifact.members]
  flat["meta"] = np.asarray(json.dumps({"spec": specs[0], "members": specs,
                                        "item_key": artifact.item_key}))
  np.savez(path, **flat)
