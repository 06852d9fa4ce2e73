"""A reader of stdout that leaves early (`train.py | head`): the run ends
as SIGPIPE ends other tools, exit 141 and no traceback; any other broken
pipe or failed write is not hidden. Real pipes, sockets and /dev/full."""

import contextlib
import io
import os
import socket
import stat
import subprocess
import sys

import pytest

from jaxcf import cli
from tests.conftest import REPO


def _pipe_stdout(monkeypatch, reader_open: bool):
  """sys.stdout on a real pipe; returns (stdout, the read end or None)."""
  r, w = os.pipe()
  if not reader_open:
    os.close(r)
    r = None
  stdout = open(w, "w", encoding="utf-8")  # pylint: disable=consider-using-with
  monkeypatch.setattr(sys, "stdout", stdout)
  return stdout, r


def _is_devnull(fd: int) -> bool:
  mode = os.fstat(fd)
  return stat.S_ISCHR(mode.st_mode) and mode.st_rdev == os.stat(
      os.devnull).st_rdev


def test_a_reader_that_has_gone_ends_the_run_with_141(monkeypatch):
  stdout, _ = _pipe_stdout(monkeypatch, reader_open=False)
  assert cli.stdout_reader_gone()

  def body():
    print("epoch 0", flush=True)

  assert cli.guarded(body) == 141
  assert _is_devnull(stdout.fileno())  # no flush at exit can fail again
  stdout.close()


def test_a_broken_pipe_that_is_not_stdout_is_raised(monkeypatch):
  stdout, r = _pipe_stdout(monkeypatch, reader_open=True)
  assert not cli.stdout_reader_gone()
  ours, theirs = socket.socketpair()
  theirs.close()

  def body():
    for _ in range(100):  # the first send may still succeed
      ours.send(b"x" * 65536)

  with pytest.raises(BrokenPipeError):
    cli.guarded(body)
  ours.close()
  stdout.close()
  os.close(r)


def test_flush_output_reports_what_could_not_be_written(monkeypatch):
  stderr = io.StringIO()
  monkeypatch.setattr(sys, "stderr", stderr)
  stdout, _ = _pipe_stdout(monkeypatch, reader_open=False)
  stdout.write("a buffered line\n")
  assert cli.flush_output(0) == 141
  assert _is_devnull(stdout.fileno()) and stderr.getvalue() == ""
  stdout.close()
  if not os.path.exists("/dev/full"):
    return
  full = open("/dev/full", "w", encoding="utf-8")  # pylint: disable=consider-using-with
  monkeypatch.setattr(sys, "stdout", full)
  full.write("a line for a full disk\n")
  assert cli.flush_output(0) == 1
  assert stderr.getvalue().startswith(
      "error: could not write standard output: [Errno 28]")
  full.write("again\n")
  assert cli.flush_output(2) == 2  # the run's own status stands
  with contextlib.suppress(OSError):  # what is still buffered
    full.close()


@pytest.mark.parametrize("script", [[str(REPO / "train.py")],
                                    ["-m", "jaxcf.inspect"]],
                         ids=["train.py", "jaxcf.inspect"])
def test_the_scripts_into_a_closed_pipe_exit_141_without_a_traceback(script):
  """`train.py --help | true`: the help text meets a reader that has
  gone."""
  r, w = os.pipe()
  os.close(r)
  done = subprocess.run([sys.executable, *script, "--help"], cwd=REPO,
                        stdout=w, stderr=subprocess.PIPE, text=True,
                        timeout=120, check=False)
  os.close(w)
  assert done.returncode == 141, done.stderr
  assert done.stderr == ""
