"""The progress bar and the wait on an asynchronously dispatched epoch."""

import io
import time

import jax
import jax.numpy as jnp

from jaxcf import progress


def test_bar_writes_lines_off_a_terminal():
  out = io.StringIO()
  bar = progress.Bar("download", 200, every_s=0.0, stream=out)
  bar.update(50, "0.1 MB")
  bar.close("0.2 MB")
  lines = out.getvalue().splitlines()
  assert lines[0].startswith("download [") and "25%" in lines[0]
  assert "0.2 MB" in lines[-1] and "100%" not in lines[0]
  quiet = io.StringIO()
  bar = progress.Bar("fast", 10, every_s=5.0, stream=quiet)
  bar.update(10)
  bar.close()
  assert quiet.getvalue() == ""  # finished before the first line was due


class _Pending:
  """Stands in for a jax.Array whose computation takes `seconds`."""

  def __init__(self, seconds):
    self.done_at = time.perf_counter() + seconds

  def is_ready(self):
    return time.perf_counter() >= self.done_at


def test_wait_draws_a_bar_only_for_slow_work(capsys):
  progress.wait_with_progress(_Pending(0.1), "epoch 0", expected_s=None)
  assert capsys.readouterr().err == ""
  progress.wait_with_progress(_Pending(1.3), "epoch 1", expected_s=2.0)
  assert capsys.readouterr().err == ""  # off a terminal: lines every 5s
  progress.wait_with_progress(_Pending(6.5), "epoch 2", expected_s=8.0)
  err = capsys.readouterr().err
  assert "epoch 2 [" in err and "%" in err


def test_a_dispatched_epoch_is_asynchronous():
  """What `wait_with_progress` relies on: jitted calls return before their result."""
  x = jnp.ones((1000, 1000))
  slow = jax.jit(lambda x: jax.lax.fori_loop(0, 50, lambda i, y: y @ x / 1e3,
                                             x))
  slow(x).block_until_ready()
  y = slow(x)
  assert not y.is_ready()
  progress.wait_with_progress(y, "work", expected_s=None)
  assert y.is_ready()
