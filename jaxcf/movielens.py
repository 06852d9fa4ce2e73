"""MovieLens 100k: find it, download and verify it, read it.

Where the data is looked for, in order: an explicit folder (`--data_dir`),
`$JAXCF_DATA` (a folder holding `ml-100k/`), the cache (`$XDG_CACHE_HOME/jaxcf`
or `~/.cache/jaxcf`), and finally a download of GroupLens' zip into the cache,
checked against its published MD5 and the SHA-256 of every file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pandas as pd

from jaxcf import io, items
from jaxcf.errors import UserError
from jaxcf.progress import Bar

URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
ZIP_MD5 = "0e33842e24a9c977be4e0107933c0723"  # published by GroupLens
NAME = "ml-100k"
# SHA-256 of the files this package reads (from the GroupLens zip).
SHA256 = {
    "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
    "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
    "u.user": "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c",
    "u.genre": "9757e0d3e6b298159a80dd48eaf938114690e911e39af97a76949ef1663610bb",
    "u.occupation":
        "cd5fbec9afe345d993a62fc7817df1a4a9079c4feb267b3118763b8fd942137d",
    "u1.base": "ce253ec86c448b44fb3ba9a30d12dcfc2e9210cbde71efada3730c22e9ac212a",
    "u1.test": "18c6014a4b2c7324f250a63f8904a7b16b2b19f911129e346141507b0cbac950",
    "u2.base": "6c06f0b5df4b256da1a994f3ac66edc8da4d3f09bc9282df6b14d893366d703e",
    "u2.test": "4de658d1e04ed9104629509a2e2528fce833ac8e048280183f1df167632038c3",
    "u3.base": "afdc155c291c6edc41c0407e39d7462eb98d341e064f0b0a12175b80b3c4af5d",
    "u3.test": "0f548b51c78327de4c156461d3e430b7e5579fe2b5681586a59416e48fd35f6d",
    "u4.base": "219f0f4d40dfe9c5141d425f53fa91ee23ed275f14e280bbf1b50117afb064ca",
    "u4.test": "7c02ad0a1e7ab1083c8b9d4b627203a051dd7b5eab46d99fa44de33470de8db9",
    "u5.base": "a9574e59ce961eec2121627760b6e9b0974ce1637b3fe69ac32cb14a4bfab485",
    "u5.test": "351cc52e0d15b6c721466276fc24671d40936899e3d01fadeaf312915b8c5634",
    "ua.base": "67b5bcdb380c29f85d56a012ecd88612ae020f30a6730d117a334ee8203b91f2",
    "ua.test": "d0497e202417720f57a184ec8c66be2d1afa4ff41bb53787c57b28d6bf79bc42",
    "ub.base": "237254d253b6ad7de84f919d041055428646254f34ed8f562703c899430cd881",
    "ub.test": "d54a72d05730d5892062734b2bec73e976f9b713d18c828a18b968d6cce442da",
}
SPLITS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")  # the official splits
_NO_DATA_HINT = (
    "download ml-100k.zip from https://grouplens.org/datasets/movielens/100k/"
    ", unzip it and pass --data_dir=/path/to/ml-100k (or set JAXCF_DATA to "
    "the folder that holds ml-100k/)")


def cache_root() -> Path:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
  return Path(base).expanduser() / "jaxcf"


def _holds_data(folder: Path) -> bool:
  return (folder / "u.data").is_file() and (folder / "u.item").is_file()


def _resolve(folder: Path) -> Path | None:
  """The ml-100k folder at `folder` or just under it, if there is one."""
  for candidate in (folder, folder / NAME):
    if _holds_data(candidate):
      return candidate
  return None


def find(data_dir: str | None = None, *, download: bool = True,
         url: str = URL) -> Path:
  """Returns the folder holding u.data and u.item, downloading if needed.

  Args:
    data_dir: a folder that is, or holds, `ml-100k/`. When given, it must
      hold the data: nothing else is searched.
    download: whether to download into the cache when no copy is found.
    url: where to download from.
  """
  if data_dir:
    found = _resolve(Path(data_dir).expanduser())
    if found is None:
      raise UserError(f"--data_dir={data_dir} holds neither u.data and u.item "
                      f"nor {NAME}/ with them; {_NO_DATA_HINT}")
    return found
  env = os.environ.get("JAXCF_DATA")
  if env:
    found = _resolve(Path(env).expanduser())
    if found is None:
      raise UserError(f"JAXCF_DATA={env} holds no {NAME}/ folder with u.data "
                      f"and u.item; {_NO_DATA_HINT}")
    return found
  found = _resolve(cache_root())
  if found is not None:
    return found
  if not download:
    raise UserError(f"MovieLens 100k is not in {cache_root()}; "
                    f"{_NO_DATA_HINT}")
  return fetch(cache_root(), url=url)


def _digest(path: Path, algorithm: str) -> str:
  h = hashlib.new(algorithm)
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def verify(folder: Path, sha256: dict[str, str] = SHA256) -> None:
  """Checks the SHA-256 of each expected file; raises listing mismatches."""
  bad = [name for name, want in sha256.items()
         if not (folder / name).is_file()
         or _digest(folder / name, "sha256") != want]
  if bad:
    raise UserError(f"{folder}: {len(bad)} file(s) missing or not as "
                    f"GroupLens published them ({', '.join(bad[:5])}); delete "
                    f"the folder and try again, or {_NO_DATA_HINT}")


def safe_extract(zip_path: Path, dest: Path) -> None:
  """Extracts a zip, refusing absolute paths, '..' and links."""
  root = dest.resolve()
  with zipfile.ZipFile(zip_path) as z:
    for member in z.infolist():
      name = member.filename
      target = (root / name).resolve()
      is_link = stat.S_ISLNK(member.external_attr >> 16)
      if (name.startswith(("/", "\\")) or ".." in Path(name).parts
          or is_link or not target.is_relative_to(root)):
        raise UserError(f"{zip_path}: refusing to extract {name!r}, which "
                        "would land outside the target folder; the download "
                        "is not GroupLens' zip")
    z.extractall(root)


def _download(url: str, path: Path) -> None:
  try:
    with urllib.request.urlopen(url, timeout=30) as response, \
        open(path, "wb") as out:
      total = int(response.headers.get("Content-Length") or 0) or None
      bar = Bar(f"downloading {url.rsplit('/', 1)[-1]}", total)
      done = 0
      for block in iter(lambda: response.read(1 << 16), b""):
        out.write(block)
        done += len(block)
        bar.update(done, f"{done / 1e6:.1f} MB")
      bar.close(f"{done / 1e6:.1f} MB")
  except (urllib.error.URLError, OSError, ValueError) as e:
    reason = getattr(e, "reason", None) or e
    raise UserError(f"could not download MovieLens 100k from {url} "
                    f"({reason}); {_NO_DATA_HINT}") from None


def fetch(root: Path, *, url: str = URL, md5: str = ZIP_MD5,
          sha256: dict[str, str] = SHA256) -> Path:
  """Downloads, checks and unpacks the zip into `root / ml-100k`, atomically.

  Nothing is left in `root / ml-100k` unless every check passed.
  """
  root.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
    zip_path = Path(tmp) / f"{NAME}.zip"
    _download(url, zip_path)
    got = _digest(zip_path, "md5")
    if got != md5:
      raise UserError(f"the download from {url} is damaged or not the "
                      f"official file (MD5 {got}, expected {md5}); try again, "
                      f"or {_NO_DATA_HINT}")
    try:
      safe_extract(zip_path, Path(tmp) / "unpacked")
    except zipfile.BadZipFile:
      raise UserError(f"the download from {url} is not a zip file; "
                      f"{_NO_DATA_HINT}") from None
    unpacked = Path(tmp) / "unpacked" / NAME
    verify(unpacked, sha256)
    final = root / NAME
    if not _holds_data(final):
      shutil.rmtree(final, ignore_errors=True)
      os.replace(unpacked, final)
  return final


def load(folder: Path) -> pd.DataFrame:
  """Reads u.data merged with the titles of u.item (latin-1).

  Returns:
    A DataFrame with 100,000 rows and columns user (int64), item (int64,
    the movie id), rating (float32), timestamp (int64), title (str).
  """
  ratings = io.read_ratings(str(folder / "u.data"), columns=[0, 1, 2, 3],
                            sep="\t", header=False)
  titles = items.read_titles(str(folder / "u.item"), columns=(0, 1),
                             sep="|", header=False, encoding="latin-1")
  return items.attach_titles(ratings, titles, str(folder / "u.item"))


def split_file(folder: Path, split: str) -> Path:
  """The official test file of split u1..u5, ua or ub."""
  if split not in SPLITS:
    raise UserError(f"unknown MovieLens split {split!r}; choose one of "
                    f"{', '.join(SPLITS)}, or --split=random")
  path = folder / f"{split}.test"
  if not path.is_file():
    raise UserError(f"{path} is missing; the official splits come with "
                    "GroupLens' ml-100k.zip")
  return path
