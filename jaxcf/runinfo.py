"""What a run records about where it ran: package versions and the device."""

from __future__ import annotations

import importlib.metadata
import os
import platform

import jax

PACKAGES = ("jaxcf", "jax", "jaxlib", "flax", "optax", "numpy", "pandas")


def versions(packages=PACKAGES) -> dict[str, str | None]:
  """Python's and each package's version (None when not installed)."""
  out = {"python": platform.python_version()}
  for pkg in packages:
    try:
      out[pkg] = importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
      out[pkg] = None
  return out


def device() -> dict:
  """The default JAX device, and the host CPU's model and core count."""
  dev = jax.devices()[0]
  cpu = platform.processor() or "unknown"
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f
                 if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return {"platform": dev.platform, "kind": dev.device_kind,
          "count": jax.device_count(), "cpu": cpu,
          "cpu_count": os.cpu_count()}


def process_age() -> float | None:
  """Seconds since this process started (Linux's /proc; None elsewhere)."""
  try:
    with open("/proc/self/stat") as f:
      started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
      uptime = float(f.read().split()[0])
  except (OSError, ValueError, IndexError):
    return None
  return uptime - started_ticks / os.sysconf("SC_CLK_TCK")
