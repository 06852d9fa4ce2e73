"""Vocabularies, splits, device arrays, and finding/downloading MovieLens."""

import hashlib
import zipfile

from hypothesis import given, settings, strategies as st
import jax
import numpy as np
import pandas as pd
import pytest

from jaxcf import data, datasets, movielens
from jaxcf.errors import UserError


# Vocab ---------------------------------------------------------------------

@settings(max_examples=100, deadline=None)
@given(st.one_of(st.lists(st.integers(-10**6, 10**6), min_size=1),
                 st.lists(st.text(min_size=1, max_size=10), min_size=1)))
def test_vocab_round_trip(values):
  vocab = data.Vocab(values)
  assert len(vocab) == len(set(values)) + 1
  assert list(vocab.classes) == sorted(set(values))
  codes = vocab.encode(values)
  assert codes.dtype == np.int32
  assert codes.min() >= 1 and codes.max() < len(vocab)
  assert list(vocab.decode(codes)) == list(values)


def test_vocab_unknown_is_zero():
  vocab = data.Vocab([30, 10, 20])
  np.testing.assert_array_equal(vocab.encode([10, 99, 30]), [1, 0, 3])
  assert vocab.decode([0])[0] == "#na#"
  with pytest.raises(IndexError):
    vocab.decode([4])


# Splits --------------------------------------------------------------------

@settings(max_examples=100, deadline=None)
@given(n=st.integers(2, 5000), pct=st.floats(0.01, 0.99),
       seed=st.integers(0, 2**31))
def test_random_split_partitions_rows(n, pct, seed):
  train, valid = data.random_split(n, pct, seed)
  assert len(valid) == int(pct * n)
  assert sorted(np.concatenate([train, valid])) == list(range(n))
  again = data.random_split(n, pct, seed)
  np.testing.assert_array_equal(valid, again[1])


@pytest.mark.parametrize("pct", [0.0, 1.0, -0.1, 1.5])
def test_random_split_rejects_bad_pct(pct):
  with pytest.raises(UserError, match="valid_pct"):
    data.random_split(10, pct, 0)


def _table():
  return pd.DataFrame({"user": [1, 1, 2, 3], "item": [10, 20, 10, 30],
                       "rating": np.float32([4, 3, 5, 1])})


def test_pairs_split_selects_listed_pairs():
  pairs = pd.DataFrame({"user": [1, 3], "item": [20, 30]})
  train, valid = data.pairs_split(_table(), pairs, "f")
  assert list(valid) == [1, 3] and list(train) == [0, 2]


def test_pairs_split_matches_string_and_int_ids():
  pairs = pd.DataFrame({"user": ["2"], "item": ["10"]})
  _, valid = data.pairs_split(_table(), pairs, "f")
  assert list(valid) == [2]


def test_pairs_split_errors():
  with pytest.raises(UserError, match="1 of 2 validation pair.*(7, 10)"):
    data.pairs_split(_table(), pd.DataFrame({"user": [1, 7],
                                             "item": [10, 10]}), "f")
  with pytest.raises(UserError, match="listed twice"):
    data.pairs_split(_table(), pd.DataFrame({"user": [1, 1],
                                             "item": [10, 10]}), "f")


def test_prepare_encodes_on_device():
  table = _table().assign(title=["a", "b", "a", "c"])
  d = data.prepare(table, np.array([0, 1, 2]), np.array([3]),
                   item_key="title")
  assert (d.n_users, d.n_items) == (4, 4)  # ids + '#na#'
  assert isinstance(d.train.users, jax.Array)
  assert d.train.users.dtype == np.int32 and d.train.ratings.dtype == np.float32
  np.testing.assert_array_equal(d.train.items, [1, 2, 1])
  np.testing.assert_array_equal(d.valid.items, [3])  # vocab covers all rows
  with pytest.raises(UserError, match="no training rows"):
    data.prepare(table, np.array([], int), np.arange(4))


# A tiny MovieLens folder -----------------------------------------------------

def test_load_tiny_movielens(tiny_ml):
  table = movielens.load(tiny_ml)
  n_lines = len((tiny_ml / "u.data").read_text().splitlines())
  assert len(table) == n_lines
  assert "Café Olé (1997)" in set(table["title"])
  d = datasets.load(datasets.Source(data_dir=str(tiny_ml)), split="u1",
                    log=None)
  n_test = len((tiny_ml / "u1.test").read_text().splitlines())
  assert (d.train.size, d.valid.size) == (n_lines - n_test, n_test)
  assert d.n_items == table["title"].nunique() + 1  # two ids share a title
  by_id = datasets.load(datasets.Source(data_dir=str(tiny_ml)),
                        item_name="movie", log=None)
  assert by_id.n_items == table["item"].nunique() + 1


def test_split_needs_movielens(tiny_ml, tmp_path):
  path = tmp_path / "r.csv"
  path.write_text("1,2,3\n2,2,4\n")
  with pytest.raises(UserError, match="official splits exist only"):
    datasets.load(datasets.Source(ratings_file=str(path)), item_name="movie",
                  split="u1", log=None)
  with pytest.raises(UserError, match="needs titles"):
    datasets.load(datasets.Source(ratings_file=str(path)), log=None)


# Finding and downloading ------------------------------------------------------

def test_find_order(tiny_ml, tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  monkeypatch.delenv("JAXCF_DATA", raising=False)
  assert movielens.find(str(tiny_ml)) == tiny_ml
  assert movielens.find(str(tiny_ml.parent)) == tiny_ml
  monkeypatch.setenv("JAXCF_DATA", str(tiny_ml.parent))
  assert movielens.find() == tiny_ml
  monkeypatch.setenv("JAXCF_DATA", str(tmp_path / "empty"))
  with pytest.raises(UserError, match="JAXCF_DATA"):
    movielens.find()
  monkeypatch.delenv("JAXCF_DATA")
  with pytest.raises(UserError, match="--data_dir"):
    movielens.find(download=False)
  with pytest.raises(UserError, match="--data_dir=/path/to/ml-100k"):
    movielens.find(str(tmp_path / "nothing"))


def _zip(tmp_path, tiny_ml, name="ml-100k.zip", extra=None):
  path = tmp_path / name
  with zipfile.ZipFile(path, "w") as z:
    for f in sorted(tiny_ml.iterdir()):
      z.write(f, f"ml-100k/{f.name}")
    if extra:
      z.writestr(extra, "x")
  md5 = hashlib.md5(path.read_bytes()).hexdigest()
  sha = {f.name: hashlib.sha256(f.read_bytes()).hexdigest()
         for f in tiny_ml.iterdir()}
  return path, md5, sha


def test_fetch_checks_and_unpacks(tiny_ml, tmp_path):
  path, md5, sha = _zip(tmp_path, tiny_ml)
  root = tmp_path / "cache"
  folder = movielens.fetch(root, url=path.as_uri(), md5=md5, sha256=sha)
  assert folder == root / "ml-100k"
  assert (folder / "u.data").read_bytes() == (tiny_ml / "u.data").read_bytes()
  assert [p.name for p in root.iterdir()] == ["ml-100k"]  # no leftovers


def test_fetch_rejects_damaged_download(tiny_ml, tmp_path):
  path, md5, sha = _zip(tmp_path, tiny_ml)
  root = tmp_path / "cache"
  with pytest.raises(UserError, match="damaged or not the official file"):
    movielens.fetch(root, url=path.as_uri(), md5="0" * 32, sha256=sha)
  sha["u.data"] = "0" * 64
  with pytest.raises(UserError, match="not as GroupLens published.*u.data"):
    movielens.fetch(root, url=path.as_uri(), md5=md5, sha256=sha)
  assert list(root.iterdir()) == []  # nothing half-written


def test_fetch_rejects_path_traversal(tiny_ml, tmp_path):
  path, md5, sha = _zip(tmp_path, tiny_ml, extra="../../evil.txt")
  with pytest.raises(UserError, match="refusing to extract '../../evil.txt'"):
    movielens.fetch(tmp_path / "cache", url=path.as_uri(), md5=md5,
                    sha256=sha)
  assert not (tmp_path / "evil.txt").exists()


def test_fetch_without_network_says_what_to_do(tmp_path):
  with pytest.raises(UserError, match="could not download.*--data_dir"):
    movielens.fetch(tmp_path, url="http://127.0.0.1:9/ml-100k.zip")


# The real MovieLens 100k ------------------------------------------------------

def test_shared_copy_matches_published_checksums(ml100k):
  movielens.verify(ml100k)


def test_real_movielens_counts(ml100k):
  table = movielens.load(ml100k)
  assert len(table) == 100_000
  assert table["user"].nunique() == 943
  assert table["item"].nunique() == 1682
  assert table["title"].nunique() == 1664
  d = datasets.load(datasets.Source(data_dir=str(ml100k)), log=None)
  assert (d.n_users, d.n_items) == (944, 1665)
  assert (d.train.size, d.valid.size) == (80_000, 20_000)


@pytest.mark.parametrize("split, n_valid", [("u1", 20_000), ("ua", 9_430)])
def test_official_splits(ml100k, split, n_valid):
  d = datasets.load(datasets.Source(data_dir=str(ml100k)), split=split,
                    item_name="movie", log=None)
  assert d.valid.size == n_valid and d.train.size == 100_000 - n_valid
  base = pd.read_csv(ml100k / f"{split}.base", sep="\t", header=None)
  train = d.table.iloc[d.train_rows]
  assert set(zip(base[0], base[1])) == set(zip(train["user"], train["item"]))


def test_fastai_split_file(fastai_splits, ml100k):
  path = fastai_splits / "fastai_seed42_valid.tsv"
  d = datasets.load(datasets.Source(data_dir=str(ml100k)),
                    valid_file=str(path), log=None)
  assert (d.train.size, d.valid.size) == (80_000, 20_000)
  # fastai's own report: predicting the training mean scores 1.250 here.
  mean = np.asarray(d.train.ratings).mean()
  mse = float(np.mean((np.asarray(d.valid.ratings) - mean)**2))
  assert mse == pytest.approx(1.250, abs=5e-4)


# Duplicates and ranges --------------------------------------------------------

def _dups():
  return pd.DataFrame({"user": [1, 1, 2, 1], "item": [10, 20, 10, 10],
                       "rating": np.float32([4, 3, 5, 2]),
                       "timestamp": [1, 2, 3, 9]})


def test_duplicates_are_refused_by_default():
  with pytest.raises(UserError, match=r"1 rating\(s\) repeat .*\(1, 10\)"):
    data.resolve_duplicates(_dups(), "error", "r.csv")
  with pytest.raises(UserError, match="--duplicates=sometimes"):
    data.resolve_duplicates(_dups(), "sometimes")


def test_duplicates_keep_last_or_mean():
  last, n = data.resolve_duplicates(_dups(), "keep_last")
  assert n == 1 and len(last) == 3
  assert last.set_index(["user", "item"]).loc[(1, 10), "rating"] == 2
  mean, n = data.resolve_duplicates(_dups(), "mean")
  row = mean.set_index(["user", "item"]).loc[(1, 10)]
  assert n == 1 and len(mean) == 3
  assert row["rating"] == 3.0 and row["timestamp"] == 9


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4), st.integers(1, 4),
                          st.integers(1, 5)), min_size=1, max_size=30))
def test_resolving_duplicates_leaves_one_row_per_pair(rows):
  table = pd.DataFrame(rows, columns=["user", "item", "rating"])
  for how in ("keep_last", "mean"):
    out, removed = data.resolve_duplicates(table, how)
    pairs = set(zip(table["user"], table["item"]))
    assert len(out) == len(pairs) and removed == len(table) - len(pairs)
    assert set(zip(out["user"], out["item"])) == pairs


def test_ratings_outside_the_range():
  table = pd.DataFrame({"user": [1, 2, 3], "item": [1, 1, 1],
                        "rating": np.float32([0.5, 3, 6])})
  with pytest.raises(UserError, match=r"2 rating\(s\) lie outside "
                     r"--y_range=1,5 \(from 0.5 to 6\)"):
    data.check_range(table, (1.0, 5.0))
  clipped, n = data.check_range(table, (1.0, 5.0), clip=True)
  assert n == 2 and list(clipped["rating"]) == [1, 3, 5]
  assert data.check_range(table, None)[1] == 0
