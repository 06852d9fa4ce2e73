"""What a text file is before its lines are read: compressed or not, and in
which encoding.

- Compression is told by the first bytes (gzip, bzip2, xz, a zip of one
  file), not the name, and the file is read as if it had been
  decompressed (`decompressed` wraps a reader; its messages name the
  original file).
- The encoding is UTF-8 when the whole file decodes as UTF-8 (a leading
  byte-order mark is skipped), latin-1 when the file is plainly not UTF-8
  (no valid multi-byte sequence anywhere), and refused naming the line
  when it is mostly UTF-8 with a stray byte: reading it as latin-1 would
  garble every other non-ASCII character silently. `--encoding` decides
  instead.
"""

from __future__ import annotations

import bz2
import codecs
import contextlib
import functools
import gzip
import lzma
import os
import re
import shutil
import tempfile
import zipfile

from jaxcf.errors import UserError

_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"),
          (b"\xfd7zXZ\x00", "xz"), (b"PK\x03\x04", "zip"))
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"))
_BLOCK = 1 << 24
# A well-formed multi-byte UTF-8 sequence (RFC 3629).
_UTF8_SEQUENCE = re.compile(
    rb"[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]"
    rb"|[\xe1-\xec\xee\xef][\x80-\xbf]{2}|\xed[\x80-\x9f][\x80-\xbf]"
    rb"|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}"
    rb"|\xf4[\x80-\x8f][\x80-\xbf]{2}")


def compression(path: str) -> str | None:
  """'gzip', 'bzip2', 'xz' or 'zip' from the file's first bytes, else None."""
  with open(path, "rb") as f:
    head = f.read(6)
  return next((name for magic, name in _MAGIC if head.startswith(magic)),
              None)


@contextlib.contextmanager
def plain_copy(path: str, what: str):
  """The path of the file's decompressed bytes: the file itself when it is
  not compressed, else a temporary copy (removed afterwards)."""
  kind = compression(path) if os.path.isfile(path) else None
  if kind is None:  # (a missing file is the reader's to report)
    yield path
    return
  with tempfile.TemporaryDirectory(prefix="jaxcf-") as tmp:
    out = os.path.join(tmp, "decompressed")  # no suffix for pandas to act on
    try:
      if kind == "zip":
        with zipfile.ZipFile(path) as z:
          files = [m for m in z.infolist() if not m.is_dir()]
          if len(files) != 1:
            raise UserError(f"{what} {path} is a zip of {len(files)} files; "
                            "give the file inside, or a zip of just it")
          source = z.open(files[0])
      else:
        source = {"gzip": gzip.open, "bzip2": bz2.open,
                  "xz": lzma.open}[kind](path)
      with source, open(out, "wb") as sink:
        shutil.copyfileobj(source, sink, _BLOCK)
    except (OSError, EOFError, lzma.LZMAError, zipfile.BadZipFile) as e:
      raise UserError(f"{what} {path} looks {kind}-compressed but cannot be "
                      f"decompressed ({e}); is it whole?") from None
    yield out


def decompressed(reader):
  """Wraps reader(path, *a, what=..., **k) so that a compressed file is read
  decompressed; its messages name the original file."""

  @functools.wraps(reader)
  def read(path, *args, **kwargs):
    what = kwargs.get("what") or "file"
    with plain_copy(path, what) as plain:
      if plain == path:
        return reader(path, *args, **kwargs)
      try:
        return reader(plain, *args, **kwargs)
      except UserError as e:
        raise UserError(str(e).replace(plain, f"{path} (decompressed)")
                        ) from None

  return read


def encoding_of(path: str, encoding: str | None = None,
                what: str = "file") -> str:
  """The encoding to read `path` with (see the module docstring)."""
  if encoding:
    try:
      return codecs.lookup(encoding).name
    except LookupError:
      raise UserError(f"--encoding={encoding} is not an encoding Python "
                      "knows (e.g. utf-8, latin-1, cp1252)") from None
  with open(path, "rb") as f:
    head = f.read(4)
  bom = next((name for mark, name in _BOMS if head.startswith(mark)), None)
  if bom == "utf-16":
    return bom
  decoder = codecs.getincrementaldecoder("utf-8")()
  offset = 0
  with open(path, "rb") as f:
    while block := f.read(_BLOCK):
      try:
        decoder.decode(block)
      except UnicodeDecodeError as e:
        return _not_utf8(path, offset + e.start, what)
      offset += len(block)
  try:
    decoder.decode(b"", final=True)
  except UnicodeDecodeError:
    return _not_utf8(path, offset, what)
  return bom or "utf-8"


def _not_utf8(path: str, bad: int, what: str) -> str:
  """latin-1 for a file with no UTF-8 sequence; else a UserError naming
  the line of the first byte that is not UTF-8."""
  with open(path, "rb") as f:
    data = f.read()  # rare: only files that are not UTF-8 get here
  if not _UTF8_SEQUENCE.search(data):
    return "latin-1"
  line = data.count(b"\n", 0, bad) + 1
  raise UserError(
      f"{what} {path}, line {line}: byte 0x{data[bad]:02x} is not UTF-8, "
      "though the file's other non-ASCII text is; fix the line, or pass "
      "--encoding=latin-1 (or whichever encoding wrote the file)")


def first_line(path: str, encoding: str) -> str:
  with open(path, encoding=encoding, errors="replace") as f:
    for line in f:
      if line.strip():
        return line.rstrip("\r\n")
  raise UserError(f"{path}: the file is empty; it needs one row per rating")


def check_file(path: str, what: str) -> None:
  if not os.path.exists(path):
    raise UserError(f"{what} not found: {path}")
  if not os.path.isfile(path):
    raise UserError(f"{what} is not a file: {path}")
  if not os.access(path, os.R_OK):
    raise UserError(f"{what} cannot be read (permission denied): {path}; "
                    "make it readable (chmod +r) or copy it")
