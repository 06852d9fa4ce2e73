"""The MovieLens family by name (`--dataset=ml-1m`, ...): tiny archives in
each release's real layout (folder and file names, separators, encodings,
headers, quoting) go through download, checksum, unzip, parse, cache and
training without the network; and the per-user splits."""

import dataclasses
import hashlib
from pathlib import Path
import zipfile

import numpy as np
import pandas as pd
import pytest

from jaxcf import data, errors, mlread, movielens, sidefiles
from tests.conftest import train_cli

# Titles with the quirks the real files have: ':' and ',' inside, non-ASCII.
TITLES = {1: "Toy Story (1995)", 2: "Misérables, Les (1995)",
          3: "Star Wars: Episode IV - A New Hope (1977)",
          4: "American President, The (1995)", 5: "Amélie (2001)",
          6: 'Movie "Six" (1999)'}
GENRES = {i: "Comedy|Drama" if i % 2 else "(no genres listed)" for i in TITLES}


def ratings(half_stars: bool, n_users=12, seed=0):
  rng = np.random.default_rng(seed)
  rows = []
  for u in range(1, n_users + 1):
    for i in TITLES:
      if rng.random() < 0.8:
        r = rng.integers(1, 11) / 2 if half_stars else rng.integers(1, 6)
        rows.append((u, i, float(r), 978300000 + int(rng.integers(1e6))))
  return rows


def write_release(root: Path, name: str) -> tuple[Path, list]:
  """The release's folder under root, as GroupLens lays it out."""
  release = movielens.RELEASES[name]
  folder = root / release.folders[0]
  folder.mkdir(parents=True)
  rows = ratings(half_stars=name != "ml-1m")
  if release.layout == "dat":
    fmt = lambda r: f"{r:g}"
    (folder / "ratings.dat").write_text("".join(
        f"{u}::{i}::{fmt(r)}::{t}\n" for u, i, r, t in rows))
    encoding = "latin-1" if name == "ml-1m" else "utf-8"
    (folder / "movies.dat").write_bytes("".join(
        f"{i}::{t}::{GENRES[i]}\n" for i, t in TITLES.items()).encode(encoding))
    if name == "ml-1m":
      (folder / "users.dat").write_text("".join(
          f"{u}::F::25::4::0{u:04d}\n" for u in range(1, 13)))
    (folder / "README").write_text("MovieLens\n")
  else:
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n" + "".join(
            f"{u},{i},{r:.1f},{t}\n" for u, i, r, t in rows))
    quote = lambda t: '"' + t.replace('"', '""') + '"' if any(
        c in t for c in ',"') else t
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n" + "".join(
            f"{i},{quote(t)},{GENRES[i]}\n" for i, t in TITLES.items()),
        encoding="utf-8")
    (folder / "links.csv").write_text("movieId,imdbId,tmdbId\n1,114709,862\n")
  return folder, rows


def zipped(folder: Path, dest: Path) -> tuple[Path, str]:
  with zipfile.ZipFile(dest, "w") as z:
    for path in sorted(folder.rglob("*")):
      z.write(path, path.relative_to(folder.parent))
  return dest, hashlib.md5(dest.read_bytes()).hexdigest()


NAMES = [n for n in movielens.RELEASES if n != "ml-100k"]


@pytest.mark.parametrize("name", NAMES)
def test_each_release_downloads_verifies_parses_and_caches(
    name, tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  monkeypatch.delenv("JAXCF_DATA", raising=False)
  folder, rows = write_release(tmp_path / "src", name)
  archive, md5 = zipped(folder, tmp_path / f"{name}.zip")
  release = dataclasses.replace(movielens.RELEASES[name])
  if release.md5 is None:  # ml-latest-small: the .md5 published beside it
    Path(str(archive) + ".md5").write_text(f"MD5 ({name}.zip) = {md5}\n")
  else:
    release = dataclasses.replace(release, md5=md5)
  with pytest.raises(errors.UserError, match="damaged or not the official"):
    movielens.fetch(movielens.cache_root(), url=archive.as_uri(),
                    md5="0" * 32, release=release)
  got = movielens.find(url=archive.as_uri(), release=release)
  assert got == movielens.cache_root() / release.folders[0]
  assert movielens.find(download=False, release=release) == got

  table = mlread.read(release, got)
  expected = pd.DataFrame(rows, columns=["user", "item", "rating",
                                         "timestamp"])
  np.testing.assert_array_equal(table["user"], expected["user"])
  np.testing.assert_array_equal(table["item"], expected["item"])
  np.testing.assert_array_equal(table["rating"],
                                expected["rating"].astype(np.float32))
  np.testing.assert_array_equal(table["timestamp"], expected["timestamp"])
  assert list(table["title"]) == [TITLES[i] for i in expected["item"]]
  assert list((movielens.cache_root() / "arrays").glob(f"{name}-*/user.npy"))

  def no_parse(*_):
    raise AssertionError("parsed again instead of reading the cache")

  monkeypatch.setattr(mlread, "_read_dat", no_parse)
  monkeypatch.setattr(mlread, "_read_csv", no_parse)
  pd.testing.assert_frame_equal(mlread.read(release, got), table)


def test_a_release_trains_by_name_with_each_split(tmp_path, capsys,
                                                   monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  _, rows = write_release(tmp_path, "ml-1m")
  common = ["--dataset=ml-1m", f"--data_dir={tmp_path}", "--epochs=1",
            "--bs=8", "--n_factors=4"]
  for split, valid in (("ratio:0.9", len(rows) // 10), ("temporal:0.25", None),
                       ("leave_last_out", 12)):
    assert train_cli(*common, f"--split={split}") == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "6 items" in out  # keyed by movie id, not title
    if valid is not None:
      assert f" / {valid} valid rows" in out
  assert train_cli(*common, "--split=u1") == 2
  assert "official splits exist only for MovieLens 100k" in (
      capsys.readouterr().err)
  # ml-1m's users.dat demographics, genres and times feed side_nn.
  assert train_cli(*common[:-1], "--model=side_nn", "--layers=8") == 0, (
      capsys.readouterr())
  assert "side information: user, item, time" in capsys.readouterr().out


def test_side_tables_of_the_releases(tmp_path, capsys, monkeypatch):
  """users.dat with ml-1m's coded occupations and age bands; genres as
  flags and the year from the title, for the '::' and the CSV layouts."""
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  folder, _ = write_release(tmp_path, "ml-1m")
  users = sidefiles.users(movielens.RELEASES["ml-1m"], folder)
  assert list(users.columns) == ["user", "gender", "age", "occupation"]
  assert list(users["user"]) == list(range(1, 13))
  assert set(users["gender"]) == {"F"} and set(users["age"]) == {25.0}
  assert set(users["occupation"]) == {"college/grad student"}  # code 4
  for name in ("ml-1m", "ml-25m"):
    release = movielens.RELEASES[name]
    where = folder if name == "ml-1m" else write_release(tmp_path, name)[0]
    items = sidefiles.items(release, where).set_index("item")
    assert list(items.columns) == ["year", "genre:Comedy", "genre:Drama"]
    for i, title in TITLES.items():
      assert items.loc[i, "year"] == int(title[-5:-1])
      assert items.loc[i, "genre:Comedy"] == (i % 2)  # else no genres
  assert sidefiles.users(movielens.RELEASES["ml-25m"], where) is None
  (folder / "users.dat").write_text("1::F::25::21::00000\n")
  with pytest.raises(errors.UserError, match=r"users.dat, line 1: not "):
    sidefiles.users(movielens.RELEASES["ml-1m"], folder)
  # A release without demographics trains side_nn on items and time only.
  common = ["--dataset=ml-25m", f"--data_dir={tmp_path}", "--epochs=1",
            "--bs=8", "--model=side_nn", "--layers=8"]
  assert train_cli(*common, "--side=user,item") == 2
  assert "ml-25m holds no user demographics" in capsys.readouterr().err
  assert train_cli(*common, "--side=item,time") == 0, capsys.readouterr()


def test_missing_release_names_where_to_get_it(tmp_path, capsys):
  assert train_cli("--dataset=ml-25m", f"--data_dir={tmp_path}") == 2
  err = capsys.readouterr().err
  assert "holds neither ratings.csv and movies.csv nor ml-25m/" in err
  assert "https://files.grouplens.org/datasets/movielens/ml-25m.zip" in err


def test_latest_per_user_takes_each_users_latest_ratings():
  users = np.array([1, 1, 1, 1, 2, 2, 3, 1, 2])
  times = np.array([5, 1, 9, 9, 3, 4, 7, 2, 1])
  train, valid = data.latest_per_user(users, times, None)
  assert sorted(valid) == [3, 5]  # user 1's last (ties: file order), 2's
  train, valid = data.latest_per_user(users, times, 0.5)
  assert sorted(valid) == [2, 3, 5]  # floor(half): 2 of 5 for user 1, 1 of 3
  assert sorted(np.r_[train, valid]) == list(range(9))
  assert 6 in train  # a user with one rating keeps it in training
  str_users = users.astype(str).astype(object)
  assert sorted(data.latest_per_user(str_users, times, None)[1]) == [3, 5]


@pytest.mark.parametrize("text, parsed", [
    ("random", ("random", None)), ("u3", ("official", "u3")),
    ("ratio:0.9", ("ratio", 0.9)), ("temporal:0.2", ("temporal", 0.2)),
    ("leave_last_out", ("leave_last_out", None))])
def test_split_flag_values(text, parsed):
  assert data.parse_split(text, movielens.SPLITS) == parsed


@pytest.mark.parametrize("text", ["ratio:1", "ratio:0", "ratio:", "temporal:-1",
                                  "u9", "last"])
def test_bad_split_flag_values(text):
  with pytest.raises(errors.UserError, match=f"--split={text} must be"):
    data.parse_split(text, movielens.SPLITS)
