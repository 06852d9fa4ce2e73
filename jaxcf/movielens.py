"""The MovieLens family: find a release, download and verify it; read 100k.

Where a release is looked for, in order: an explicit folder (`--data_dir`,
the release's folder or one holding it), `$JAXCF_DATA` (a folder holding
it), the cache (`$XDG_CACHE_HOME/jaxcf` or `~/.cache/jaxcf`), and finally a
download of GroupLens' zip into the cache, checked against the MD5 GroupLens
publishes beside it (`<zip>.md5`) and, for 100k, the SHA-256 of every file.
The other releases' layouts are read by `jaxcf.mlread`.
"""

from __future__ import annotations

import dataclasses
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

BASE_URL = "https://files.grouplens.org/datasets/movielens/"


@dataclasses.dataclass(frozen=True)
class Release:
  """One MovieLens release as GroupLens ships it.

  Attributes:
    name: its --dataset name and zip name (ml-1m -> ml-1m.zip).
    folders: the folder its zip unpacks to, then other names accepted for it.
    md5: of the zip, as GroupLens publishes it at BASE_URL + name +
      '.zip.md5'; None for ml-latest-small, which GroupLens updates in
      place: its .md5 is fetched beside the zip.
    layout: '100k' (u.data, u.item), 'dat' (ratings.dat, movies.dat with
      '::' separators; ml-1m also users.dat) or 'csv' (ratings.csv and
      movies.csv with headers).
  """
  name: str
  folders: tuple[str, ...]
  md5: str | None
  layout: str

  @property
  def url(self) -> str:
    return f"{BASE_URL}{self.name}.zip"

  @property
  def files(self) -> tuple[str, str]:
    """(ratings file, items file) inside its folder."""
    return {"100k": ("u.data", "u.item"), "dat": ("ratings.dat", "movies.dat"),
            "csv": ("ratings.csv", "movies.csv")}[self.layout]


# MD5s as GroupLens publishes them in <zip>.md5 beside each zip (100k's is
# also in its README); ml-10m unpacks to ml-10M100K/.
RELEASES = {r.name: r for r in (
    Release("ml-100k", ("ml-100k",), "0e33842e24a9c977be4e0107933c0723",
            "100k"),
    Release("ml-1m", ("ml-1m",), "c4d9eecfca2ab87c1945afe126590906", "dat"),
    Release("ml-10m", ("ml-10M100K", "ml-10m"),
            "ce571fd55effeba0271552578f2648bd", "dat"),
    Release("ml-20m", ("ml-20m",), "cd245b17a1ae2cc31bb14903e1204af3", "csv"),
    Release("ml-25m", ("ml-25m",), "6b51fb2759a8657d3bfcbfc42b592ada", "csv"),
    Release("ml-32m", ("ml-32m",), "d472be332d4daa821edc399621853b57", "csv"),
    Release("ml-latest-small", ("ml-latest-small",), None, "csv"),
)}
ML100K = RELEASES["ml-100k"]
URL = ML100K.url
ZIP_MD5 = ML100K.md5
NAME = ML100K.name
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


def _hint(release: Release = ML100K) -> str:
  return (f"download {release.name}.zip from {release.url}, unzip it and "
          f"pass --data_dir=/path/to/{release.folders[0]} (or set JAXCF_DATA "
          f"to the folder that holds {release.folders[0]}/)")


_NO_DATA_HINT = _hint()


def cache_root() -> Path:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
  return Path(base).expanduser() / "jaxcf"


def _holds_data(folder: Path, release: Release = ML100K) -> bool:
  return all((folder / name).is_file() for name in release.files)


def _resolve(folder: Path, release: Release = ML100K) -> Path | None:
  """The release's folder at `folder` or just under it, if there is one."""
  for candidate in (folder, *(folder / f for f in release.folders)):
    if _holds_data(candidate, release):
      return candidate
  return None


def find(data_dir: str | None = None, *, download: bool = True,
         url: str | None = None, release: Release = ML100K) -> Path:
  """Returns the folder holding the release's files, downloading if needed.

  Args:
    data_dir: a folder that is, or holds, the release's folder (ml-100k/,
      ml-1m/, ...). When given, it must hold the data: nothing else is
      searched.
    download: whether to download into the cache when no copy is found.
    url: where to download from (default: GroupLens).
    release: which one (default: MovieLens 100k).
  """
  names = " and ".join(release.files)
  if data_dir:
    found = _resolve(Path(data_dir).expanduser(), release)
    if found is None:
      raise UserError(f"--data_dir={data_dir} holds neither {names} nor "
                      f"{release.folders[0]}/ with them; {_hint(release)}")
    return found
  env = os.environ.get("JAXCF_DATA")
  if env:
    found = _resolve(Path(env).expanduser(), release)
    if found is not None:
      return found
    if release is ML100K:
      raise UserError(f"JAXCF_DATA={env} holds no {NAME}/ folder with u.data "
                      f"and u.item; {_NO_DATA_HINT}")
  found = _resolve(cache_root(), release)
  if found is not None:
    return found
  if not download:
    raise UserError(f"{release.name} is not in {cache_root()}; "
                    f"{_hint(release)}")
  return fetch(cache_root(), url=url or release.url, release=release)


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


def _download(url: str, path: Path, release: Release = ML100K) -> None:
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
    raise UserError(f"could not download {release.name} from {url} "
                    f"({reason}); {_hint(release)}") from None


def _published_md5(url: str, release: Release) -> str:
  """The MD5 GroupLens publishes at url + '.md5' ('MD5 (x.zip) = <hex>' or
  '<hex>  x.zip')."""
  with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "md5"
    _download(url + ".md5", path, release)
    words = path.read_text(errors="replace").split()
  found = [w.lower() for w in words if len(w) == 32 and all(
      c in "0123456789abcdefABCDEF" for c in w)]
  if not found:
    raise UserError(f"{url}.md5 holds no MD5; {_hint(release)}")
  return found[0]


def fetch(root: Path, *, url: str | None = None, md5: str | None = None,
          sha256: dict[str, str] | None = None,
          release: Release = ML100K) -> Path:
  """Downloads, checks and unpacks the release's zip into `root`, atomically.

  Nothing is left in `root / <its folder>` unless every check passed.
  md5 defaults to the release's pinned one (or the published .md5 for
  ml-latest-small); sha256 (per file) to 100k's.
  """
  url = url or release.url
  if sha256 is None and release is ML100K:
    sha256 = SHA256
  md5 = md5 or release.md5 or _published_md5(url, release)
  root.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
    zip_path = Path(tmp) / f"{release.name}.zip"
    _download(url, zip_path, release)
    got = _digest(zip_path, "md5")
    if got != md5:
      raise UserError(f"the download from {url} is damaged or not the "
                      f"official file (MD5 {got}, expected {md5}); try again, "
                      f"or {_hint(release)}")
    try:
      safe_extract(zip_path, Path(tmp) / "unpacked")
    except zipfile.BadZipFile:
      raise UserError(f"the download from {url} is not a zip file; "
                      f"{_hint(release)}") from None
    unpacked = _resolve(Path(tmp) / "unpacked", release)
    if unpacked is None or unpacked == Path(tmp) / "unpacked":
      raise UserError(f"the download from {url} holds no {release.folders[0]}"
                      f"/ with {' and '.join(release.files)}; "
                      f"{_hint(release)}")
    if sha256:
      verify(unpacked, sha256)
    final = root / unpacked.name
    if not _holds_data(final, release):
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
