"""Shared fixtures: a tiny MovieLens-format folder, and the real one if present."""

import atexit
import os
from pathlib import Path
import shutil
import tempfile

# One persistent compilation cache for the session (its xdist workers and
# the train.py processes tests start inherit it): identical programs
# compile once. The process that made it removes it at exit.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="jaxcf-tests-xla-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
  atexit.register(shutil.rmtree, _CACHE, True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def write_movielens(folder: Path, n_users=40, n_items=30, density=0.5,
                    seed=0) -> Path:
  """Writes u.data, u.item (latin-1), u.user and u1.base/u1.test like
  GroupLens'.

  Ratings are 1..5 from a rank-2 model plus noise, so there is something to
  learn. Items 1 and 2 share a title, as 18 MovieLens ids do; item 3's title
  is not ASCII.
  """
  rng = np.random.default_rng(seed)
  folder.mkdir(parents=True, exist_ok=True)
  pu, qi = rng.normal(size=(n_users, 2)), rng.normal(size=(n_items, 2))
  rows = []
  for u in range(n_users):
    for i in range(n_items):
      if rng.random() < density:
        r = np.clip(np.rint(3 + pu[u] @ qi[i] + 0.3 * rng.normal()), 1, 5)
        rows.append((u + 1, i + 1, int(r), 880000000 + len(rows)))
  rows = [rows[k] for k in rng.permutation(len(rows))]
  lines = [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in rows]
  (folder / "u.data").write_text("\n".join(lines) + "\n")
  titles = []
  for i in range(1, n_items + 1):
    title = {1: "Twin (1995)", 2: "Twin (1995)", 3: "Café Olé (1997)"}.get(
        i, f"Movie {i:03d} (19{50 + i % 50})")
    genres = "|".join("1" if (i + g) % 7 == 0 else "0" for g in range(19))
    date = "" if i == 4 else f"01-Jan-19{50 + i % 50}"  # one unknown date
    titles.append(f"{i}|{title}|{date}||http://x|{genres}")
  (folder / "u.item").write_bytes(("\n".join(titles) + "\n").encode("latin-1"))
  jobs = ("student", "writer", "retired", "engineer")
  people = [f"{u}|{18 + (u * 7) % 50}|{'MF'[u % 2]}|{jobs[u % 4]}|0{u:04d}"
            for u in range(1, n_users + 1)]
  (folder / "u.user").write_text("\n".join(people) + "\n")
  cut = len(rows) // 5
  (folder / "u1.test").write_text("\n".join(lines[:cut]) + "\n")
  (folder / "u1.base").write_text("\n".join(lines[cut:]) + "\n")
  return folder


@pytest.fixture
def tiny_ml(tmp_path) -> Path:
  return write_movielens(tmp_path / "ml-100k")


def shared_ml100k() -> Path | None:
  """The real MovieLens 100k: $JAXCF_DATA/ml-100k, else ../shared/data."""
  for root in (os.environ.get("JAXCF_DATA"), SHARED):
    if root and (Path(root) / "ml-100k" / "u.data").is_file():
      return Path(root) / "ml-100k"
  return None


@pytest.fixture(scope="session")
def ml100k() -> Path:
  folder = shared_ml100k()
  if folder is None:
    pytest.skip("MovieLens 100k not found: set JAXCF_DATA to a folder holding "
                "ml-100k/ (e.g. ../shared/data)")
  return folder


@pytest.fixture(scope="session")
def fastai_splits(ml100k) -> Path:
  folder = ml100k.parent / "fastai-splits"
  if not (folder / "fastai_seed42_valid.tsv").is_file():
    pytest.skip(f"fastai's validation splits not found in {folder}")
  return folder


def train_cli(*args: str) -> int:
  """train.py in-process: parses args (a fresh set of flags) and runs the
  experiment; returns the exit status. Read what it printed with capsys."""
  from absl import flags
  from jaxcf import cli, cliconfig, experiment
  flag_values = flags.FlagValues()
  cliconfig.define(flag_values)
  return cli.main(["train.py", *args],
                  lambda fv: experiment.train_and_evaluate(cliconfig.build(fv)),
                  flag_values)
