"""jaxcf.hugepages: the hint reaches the kernel and never changes contents."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcf import hugepages

linux = pytest.mark.skipif(not sys.platform.startswith("linux"),
                           reason="madvise hints are Linux-only")


def _vm_flags(address: int) -> list[str]:
  """The VmFlags of the mapping of this process that holds `address`."""
  inside = False
  for line in open("/proc/self/smaps"):
    head = line.split()[0]
    if "-" in head and ":" not in head:
      lo, hi = (int(x, 16) for x in head.split("-"))
      inside = lo <= address < hi
    elif inside and head == "VmFlags:":
      return line.split()[1:]
  raise AssertionError(f"no mapping holds {address:#x}")


@linux
def test_big_array_is_advised_and_unchanged():
  x = jnp.arange(6 << 20, dtype=jnp.float32)  # 24 MiB
  expected = np.asarray(x).copy()
  done = hugepages.advise({"table": x, "small": jnp.ones(3), "n": 5})
  assert done >= 8 << 20 and done % hugepages.HUGE_PAGE == 0
  start = x.unsafe_buffer_pointer()
  middle = start + x.nbytes // 2
  assert "hg" in _vm_flags(middle)  # MADV_HUGEPAGE set on the range
  np.testing.assert_array_equal(np.asarray(x), expected)
  np.testing.assert_array_equal(np.asarray(x * 2), expected * 2)


def test_small_and_non_array_leaves_are_skipped():
  assert hugepages.advise((jnp.ones((100, 50)), np.ones(1 << 22), None)) == 0


@linux
def test_deleted_array_is_skipped():
  x = jnp.zeros(4 << 20, jnp.float32)  # 16 MiB
  x.delete()
  assert hugepages.advise(x) == 0


@linux
def test_each_shard_of_a_sharded_array():
  devices = jax.devices()
  mesh = jax.sharding.Mesh(np.array(devices), ("data",))
  spec = jax.sharding.PartitionSpec("data")
  x = jax.device_put(jnp.zeros((len(devices) * (4 << 20),), jnp.float32),
                     jax.sharding.NamedSharding(mesh, spec))
  done = hugepages.advise(x)
  assert done >= len(devices) * hugepages.HUGE_PAGE * 4
