"""Any ratings file is read exactly or refused in one line: compression,
byte-order marks, encodings, ids as written, every layout (a property
test), and the cases users met."""

import bz2
import codecs
import gzip
import lzma
import string
import zipfile

from hypothesis import given, settings, strategies as st
import pytest

from jaxcf import io, items, textfile
from jaxcf.errors import UserError


def compress(data: bytes, how: str | None, path) -> None:
  if how == "zip":
    with zipfile.ZipFile(path, "w") as z:
      z.writestr("ratings.csv", data)
    return
  pack = {None: lambda b: b, "gzip": gzip.compress, "bzip2": bz2.compress,
          "xz": lzma.compress}[how]
  path.write_bytes(pack(data))


_canonical = st.integers(-10**6, 10**18).map(str)
_text_ids = st.text(string.ascii_letters + string.digits + "_-éü",
                    min_size=1, max_size=6)
_rows = st.lists(st.tuples(st.one_of(_canonical, _text_ids), _canonical,
                           st.integers(-20, 20).map(lambda r: r / 4),
                           st.integers(0, 2**40)), min_size=1, max_size=25)


@settings(max_examples=120, deadline=None)
@given(rows=_rows, sep=st.sampled_from([",", "\t", ";", "|", "::"]),
       header=st.booleans(), bom=st.booleans(), crlf=st.booleans(),
       final_newline=st.booleans(),
       packing=st.sampled_from([None, "gzip", "bzip2", "xz", "zip"]),
       encoding=st.sampled_from(["utf-8", "latin-1"]),
       quote=st.booleans())
def test_every_layout_reads_back_exactly(tmp_path_factory, rows, sep, header,
                                         bom, crlf, final_newline, packing,
                                         encoding, quote):
  """Random tables written in every supported layout come back as exactly
  the (user, item, rating, time) rows written, ids as written."""
  if bom and encoding != "utf-8":
    bom = False
  q = (lambda v: f'"{v}"') if quote and sep != "::" else (lambda v: v)
  lines = [sep.join(["user", "item", "rating", "time"])] if header else []
  lines += [sep.join([q(u), q(i), repr(r), str(t)]) for u, i, r, t in rows]
  end = "\r\n" if crlf else "\n"
  text = end.join(lines) + (end if final_newline else "")
  data = (codecs.BOM_UTF8 if bom else b"") + text.encode(encoding)
  path = tmp_path_factory.mktemp("layout") / "ratings.txt"
  compress(data, packing, path)
  table = io.read_ratings(str(path), columns=[0, 1, 2, 3], sep=sep,
                          header=header)
  assert [str(u) for u in table["user"]] == [u for u, _, _, _ in rows]
  assert [str(i) for i in table["item"]] == [i for _, i, _, _ in rows]
  assert table["rating"].tolist() == [r for _, _, r, _ in rows]
  assert table["timestamp"].tolist() == [t for _, _, _, t in rows]


def write(tmp_path, data: bytes, name="r.csv"):
  path = tmp_path / name
  path.write_bytes(data)
  return str(path)


def test_ids_are_kept_as_written_unless_all_are_canonical(tmp_path):
  table = io.read_ratings(write(tmp_path, b"01,1,4\n1,1,3\n"))
  assert table["user"].tolist() == ["01", "1"]  # never merged
  table = io.read_ratings(write(tmp_path, b"+1,1,4\n1,1,3\n"))
  assert table["user"].tolist() == ["+1", "1"]
  big = b"9223372036854775808,1,4\n2,1,3\n"  # 2^63: past int64
  assert io.read_ratings(write(tmp_path, big))["user"].tolist() == [
      "9223372036854775808", "2"]
  ok = b"9223372036854775807,1,4\n-2,1,3\n"
  assert io.read_ratings(write(tmp_path, ok))["user"].tolist() == [
      2**63 - 1, -2]


@pytest.mark.parametrize("data, flags, message", [
    (b"1,1,NA\n2,1,3\n", {"columns": [0, 1, 2]},
     "line 1: rating 'NA' is not a number"),  # never taken for a header
    (b"1,1,1e39\n2,1,3\n", {}, "line 1: rating '1e39' is too large for a "
     "float32"),
    (b"1;1;2,5\n2;1;3\n", {"sep": ";"}, "line 1: rating '2,5' is written "
     "with a decimal comma; write 2.5"),
    (b"1;1;2,5\n2;1;3\n", {"sep": ";", "columns": [0, 1, 2]},
     "line 1: rating '2,5' is written with a decimal comma"),
    (b"user,item,rating\n1,1,4\n", {"columns": [0, 0, 2]},
     "--columns=0,0,2 names column 0 twice"),
    (b"user,item,rating\n1,Caf\xc3\xa9,4\n2,Am\xe9lie,3\n", {},
     "line 3: byte 0xe9 is not UTF-8"),
    (b"user,item,rating\n1,1,4\n", {"encoding": "klingon"},
     "--encoding=klingon is not an encoding"),
])
def test_what_cannot_be_read_exactly_is_one_line(tmp_path, data, flags,
                                                 message):
  with pytest.raises(UserError, match=None) as e:
    io.read_ratings(write(tmp_path, data), **flags)
  assert message in str(e.value)
  assert "\n" not in str(e.value)


def test_mixed_encoding_is_refused_and_latin1_is_read(tmp_path):
  mixed = write(tmp_path, "1|Café (1995)\n".encode() + b"2|Am\xe9lie\n",
                "mixed.item")
  with pytest.raises(UserError, match=r"mixed.item, line 2: byte 0xe9"):
    items.read_titles(mixed, sep="|", header=False)
  latin = items.read_titles(mixed, sep="|", header=False, encoding="latin-1")
  assert latin["title"].tolist() == ["CafÃ© (1995)", "Amélie"]  # as asked
  plain = write(tmp_path, b"1|Caf\xe9 (1995)\n", "latin.item")
  assert items.read_titles(plain, sep="|", header=False)["title"].tolist() == [
      "Café (1995)"]


def test_compressed_files_are_told_by_their_bytes(tmp_path):
  data = b"\xef\xbb\xbfuserId,movieId,rating\r\n1,1,4\r\n2,1,3"
  for how in ("gzip", "bzip2", "xz", "zip"):
    path = tmp_path / f"ratings-{how}.csv"  # the name says nothing
    compress(data, how, path)
    assert textfile.compression(str(path)) == how
    table = io.read_ratings(str(path))
    assert table["user"].tolist() == [1, 2]
  broken = tmp_path / "broken.csv.gz"
  broken.write_bytes(gzip.compress(b"1,1,4\n" * 100)[:30])
  with pytest.raises(UserError, match="looks gzip-compressed but cannot be"):
    io.read_ratings(str(broken))
  bad = tmp_path / "bad.csv.gz"
  bad.write_bytes(gzip.compress(b"1,1,four\n2,1,3\n"))
  with pytest.raises(UserError, match=r"bad.csv.gz \(decompressed\), line 1: "
                     "rating 'four'"):
    io.read_ratings(str(bad), columns=[0, 1, 2])


def test_items_file_errors_name_the_items_flags(tmp_path):
  path = write(tmp_path, b"id;title\n1;Toy\n", "items.csv")
  with pytest.raises(UserError, match="pass --items_sep or --item_columns"):
    items.read_titles(path, columns=(0, 1), sep=",")
