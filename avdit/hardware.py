"""Accelerator facts for memory checks and MFU: HBM and peak FLOP/s per chip, or a measured peak.

MFU = achieved model FLOP/s per device / peak FLOP/s per device. TPU peaks are the published bf16
numbers; on a CPU (or an unknown device) the peak is measured: the best of several jitted fp32
2048 x 2048 matmul chains on that device.
"""
from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
  hbm_bytes: int
  peak_bf16_flops: float  # per chip


CHIPS = {
    "v4": Chip(32 * GIB, 275e12),
    "v5e": Chip(16 * GIB, 197e12),
    "v5p": Chip(95 * GIB, 459e12),
    "v6e": Chip(32 * GIB, 918e12),
}
# jax's `device_kind` strings of those chips.
_DEVICE_KINDS = {"tpu v4": "v4", "tpu v5 lite": "v5e", "tpu v5e": "v5e", "tpu v5p": "v5p",
                 "tpu v5": "v5p", "tpu v6 lite": "v6e", "tpu v6e": "v6e"}


def chip_of(device) -> str | None:
  return _DEVICE_KINDS.get(str(getattr(device, "device_kind", "")).lower())


def measure_matmul_peak(size: int = 2048, repeats: int = 10) -> float:
  """FLOP/s of the best of `repeats` jitted fp32 size x size matmul chains (10 per call)."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32) / size

  @jax.jit
  def chain(x):
    for _ in range(10):
      x = x @ b
    return x

  chain(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    chain(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 10 * 2 * size**3 / best


@functools.lru_cache(maxsize=None)
def peak_flops_per_device() -> tuple[float, str]:
  """(peak FLOP/s of one local device, where the number comes from)."""
  device = jax.local_devices()[0]
  chip = chip_of(device)
  if chip is not None:
    return CHIPS[chip].peak_bf16_flops, f"{chip} bf16 peak (published)"
  return measure_matmul_peak(repeats=3), f"measured fp32 matmul peak on {device.platform}"
