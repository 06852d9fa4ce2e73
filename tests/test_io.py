"""Reading rating and item files: every row kept, every bad line reported."""

import string

from hypothesis import given, settings, strategies as st
import numpy as np
import pytest

from jaxcf import fastread, io, items
from jaxcf.errors import UserError


def write(tmp_path, text, name="r.csv", encoding="utf-8"):
  path = tmp_path / name
  path.write_bytes(text.encode(encoding))
  return str(path)


def test_tsv_without_header(tmp_path):
  path = write(tmp_path, "1\t10\t4\t100\n2\t10\t3\t101\n\n2\t11\t5\t102\n")
  df = io.read_ratings(path)
  assert list(df.columns) == ["user", "item", "rating", "timestamp"]
  assert df["user"].tolist() == [1, 2, 2]
  assert df["item"].dtype == np.int64
  assert df["rating"].tolist() == [4.0, 3.0, 5.0]
  assert df["rating"].dtype == np.float32
  assert df["timestamp"].tolist() == [100, 101, 102]


def test_csv_with_movielens_header_and_half_stars(tmp_path):
  path = write(tmp_path, "userId,movieId,rating,timestamp\n"
               "1,31,2.5,1260759144\n1,1029,3.5,1260759179\n7,31,0.5,1\n")
  df = io.read_ratings(path)
  assert df["rating"].tolist() == [2.5, 3.5, 0.5]
  assert df["item"].tolist() == [31, 1029, 31]


def test_columns_by_name_and_position(tmp_path):
  path = write(tmp_path, "score;who;what\n4;a;x\n2;b;y\n")
  by_name = io.read_ratings(path, columns=["who", "what", "score"])
  by_pos = io.read_ratings(path, columns=[1, 2, 0], header=True)
  assert by_name.equals(by_pos)
  assert by_name["user"].tolist() == ["a", "b"]  # string ids stay strings
  assert by_name["rating"].tolist() == [4.0, 2.0]


def test_double_colon_separator(tmp_path):
  path = write(tmp_path, "1::1193::5::978300760\n1::661::3::978302109\n",
               name="ratings.dat")
  df = io.read_ratings(path)
  assert df["item"].tolist() == [1193, 661]


def test_titles_latin1_and_verbatim(tmp_path):
  path = write(tmp_path, "1|Café (1995)|x\n2|Heidi (1995) |y\n",
               name="u.item", encoding="latin-1")
  titles = items.read_titles(path, sep="|", header=False)
  # The trailing space is kept: fastai keeps it, and titles are keys.
  assert titles["title"].tolist() == ["Café (1995)", "Heidi (1995) "]


def test_titles_with_quoted_commas(tmp_path):
  path = write(tmp_path, 'movieId,title,genres\n1,"American President, The '
               '(1995)",Comedy\n2,Heat (1995),Action\n')
  titles = items.read_titles(path, columns=["movieId", "title"])
  assert titles["title"].tolist() == ["American President, The (1995)",
                                      "Heat (1995)"]


@pytest.mark.parametrize("text, columns, message", [
    ("", None, "empty"),
    ("\n\n", None, "empty"),
    ("user,item,rating\n", None, "no ratings"),
    ("1\t2\t4\n1\t3\tfive\n", None, "line 2: rating 'five' is not a number"),
    ("1\t2\t4\n1\t3\tnan\n", None, "line 2: rating 'nan' is not a finite"),
    ("1\t2\t4\n1\t3\tinf\n", None, "line 2: rating 'inf' is not a finite"),
    ("1\t2\t4\n\n1\t3\n", None, "line 3: the rating field is missing"),
    ("1\t2\t4\n1\t3\t4\t5\t6\n", None, "Expected 3 fields in line 2"),
    ("1 2 4\n", [0, 1, 2], "found 1 column(s)"),
    ("a,b,c\nx,y,1\n", None, "cannot tell which columns"),
    ("user,item,rating\n1,2,3\n", ["user", "movie", "rating"],
     "no column named 'movie'"),
    ("1,2,3\n", [0, 1], "give 3"),
])
def test_bad_ratings_files(tmp_path, text, columns, message):
  path = write(tmp_path, text)
  sep = "," if columns and "1 2 4" in text else None
  with pytest.raises(UserError, match=_escape(message)):
    io.read_ratings(path, columns=columns, sep=sep)


def _escape(text):
  import re
  return re.escape(text)


def test_missing_and_folder(tmp_path):
  with pytest.raises(UserError, match="not found"):
    io.read_ratings(str(tmp_path / "nope.csv"))
  with pytest.raises(UserError, match="not a file"):
    io.read_ratings(str(tmp_path))


def test_titles_file_errors(tmp_path):
  dup = write(tmp_path, "1|A\n1|B\n", name="dup.item")
  with pytest.raises(UserError, match="line 2: item id 1 appears twice"):
    items.read_titles(dup, sep="|")
  ratings = io.read_ratings(write(tmp_path, "1\t1\t4\n1\t9\t3\n"))
  titles = items.read_titles(write(tmp_path, "1|A\n2|B\n", name="t.item"),
                          sep="|")
  with pytest.raises(UserError, match="no title for 1 rated item id"):
    items.attach_titles(ratings, titles, "t.item")


def test_parse_columns_flag():
  assert io.parse_columns_flag("userId, movieId,rating") == [
      "userId", "movieId", "rating"]
  assert io.parse_columns_flag("0,2,1") == [0, 2, 1]
  assert io.parse_columns_flag("") is None


# Property tests ------------------------------------------------------------

_ids = st.one_of(st.integers(0, 10**9).map(str),
                 st.text(string.ascii_letters + string.digits + "_-",
                         min_size=1, max_size=8))
_ratings = st.one_of(st.integers(-5, 10), st.floats(-10, 10,
                                                    allow_nan=False))
_rows = st.lists(st.tuples(_ids, _ids, _ratings), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(rows=_rows, sep=st.sampled_from([",", "\t", ";", "|"]),
       header=st.booleans())
def test_every_row_survives_the_round_trip(tmp_path_factory, rows, sep,
                                           header):
  lines = ["user{0}item{0}rating".format(sep)] if header else []
  lines += [f"{u}{sep}{i}{sep}{r!r}" for u, i, r in rows]
  path = tmp_path_factory.mktemp("rt") / "r.txt"
  path.write_text("\n".join(lines) + "\n")
  df = io.read_ratings(str(path), sep=sep, columns=[0, 1, 2], header=header)
  assert len(df) == len(rows)
  np.testing.assert_allclose(df["rating"], [float(r) for _, _, r in rows],
                             rtol=1e-6, atol=1e-6)
  # Ids stay as written ('007' is not '7'); all canonical: integers.
  assert [str(u) for u in df["user"]] == [u for u, _, _ in rows]


_junk = st.text(string.printable, min_size=0, max_size=20).filter(
    lambda s: "\n" not in s and "\r" not in s and '"' not in s)


@settings(max_examples=80, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(1, 50), st.integers(1, 50),
                               st.integers(1, 5)), min_size=1, max_size=20),
       junk=_junk, where=st.integers(0, 20))
def test_a_malformed_line_is_reported_or_counted(tmp_path_factory, rows,
                                                 junk, where):
  """A random line among good ones: a UserError, or exactly one more row."""
  lines = [f"{u}\t{i}\t{r}" for u, i, r in rows]
  where = min(where, len(lines))
  lines.insert(where, junk)
  path = tmp_path_factory.mktemp("junk") / "r.tsv"
  path.write_text("\n".join(lines) + "\n")
  try:
    df = io.read_ratings(str(path), sep="\t", columns=[0, 1, 2],
                         header=False)
  except UserError as e:
    assert str(e) and "\n" not in str(e)
    return
  blank = not junk.strip()
  assert len(df) == len(rows) + (0 if blank else 1)


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(1, 10**9), st.integers(1, 10**6),
                               st.sampled_from([0.5, 1.0, 3.5, 5.0]),
                               st.integers(0, 2**40)),
                     min_size=1, max_size=60),
       chunk=st.integers(1, 9), header=st.booleans())
def test_chunked_numeric_read_keeps_every_row(tmp_path_factory, rows, chunk,
                                              header):
  path = tmp_path_factory.mktemp("big") / "r.csv"
  text = "userId,movieId,rating,timestamp\n" if header else ""
  text += "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows)
  path.write_text(text)
  table = io.read_ratings(str(path), chunk_rows=chunk)
  assert len(table) == len(rows)
  expected = np.array(rows, dtype=np.float64)
  np.testing.assert_array_equal(table["user"], expected[:, 0])
  np.testing.assert_array_equal(table["item"], expected[:, 1])
  np.testing.assert_array_equal(table["rating"], expected[:, 2])
  np.testing.assert_array_equal(table["timestamp"],
                                np.array([r[3] for r in rows]))
  assert table["user"].dtype == np.int64
  assert table["rating"].dtype == np.float32


@pytest.mark.parametrize("bad, message", [
    ("7\t8\tgood", "line 2502: rating 'good' is not a number"),
    ("7\t8", "line 2502: the rating field is missing"),
    ("7\t8\t4\t1", "Expected 3 fields in line 2502"),
    ("7\t8\tinf", "line 2502: rating 'inf' is not a finite number"),
])
def test_a_bad_line_after_many_chunks_is_named(tmp_path, bad, message):
  lines = ["1\t2\t4"] * 2501 + [bad] + ["3\t4\t5"] * 10
  path = tmp_path / "r.tsv"
  path.write_text("\n".join(lines) + "\n")
  with pytest.raises(UserError, match=message):
    io.read_ratings(str(path), chunk_rows=100)


def test_string_ids_take_the_checked_path(tmp_path):
  path = tmp_path / "r.csv"
  path.write_text("user,item,rating\nu1,m1,4\nu2,7,3.5\n\nu1,8,1\n")
  table = io.read_ratings(str(path), chunk_rows=1)
  assert list(table["user"]) == ["u1", "u2", "u1"]
  assert list(table["item"]) == ["m1", "7", "8"]
  np.testing.assert_array_equal(table["rating"], [4, 3.5, 1])


@pytest.mark.parametrize("line, user, rating", [
    ("TRUE,7,4", "TRUE", 4.0),  # the C parser alone would read 1
    ("1.0,7,4", "1.0", 4.0),  # ... and 1
    ("1e3,7,4", "1e3", 4.0),  # ... and 1000
    ("5,7,4.5", 5, 4.5),
])
def test_what_the_fast_path_reads_the_checked_path_reads_too(tmp_path, line,
                                                             user, rating):
  path = tmp_path / "r.csv"
  path.write_text("2,3,1\n" + line + "\n")
  table = io.read_ratings(str(path), chunk_rows=1)
  assert list(table["user"])[1] in (user, str(user))
  assert [str(u) for u in table["user"]] == ["2", str(user)]
  assert table["rating"].iloc[1] == rating


def test_a_boolean_rating_is_refused(tmp_path):
  path = tmp_path / "r.csv"
  path.write_text("2,3,1\n5,7,TRUE\n")
  with pytest.raises(UserError, match="line 2: rating 'TRUE' is not a number"):
    io.read_ratings(str(path))


@pytest.mark.parametrize("block", [3, 8, 1000])
def test_lines_across_blocks_are_checked_whole(tmp_path, monkeypatch, block):
  monkeypatch.setattr(fastread, "_BLOCK", block)
  path = tmp_path / "r.csv"
  path.write_text("1,2,3.5\n" * 50 + "1.5,2,3\n")
  assert not fastread._plain_numbers(str(path), ",", False, [0, 1])  # pylint: disable=protected-access
  path.write_text("1,2,3.5\n" * 50 + "7,2,3")  # no final line end
  assert fastread._plain_numbers(str(path), ",", False, [0, 1])  # pylint: disable=protected-access


def test_a_last_line_without_its_line_end_is_read(tmp_path):
  """The fast path's byte check once indexed past the last line end."""
  path = tmp_path / "r.csv"
  path.write_text("userId,movieId,rating\n1,2,3.5\n2,3,4.5")  # no final \n
  table = io.read_ratings(str(path))
  assert list(table["rating"]) == [3.5, 4.5] and list(table["user"]) == [1, 2]
