"""Accelerators: peak dense bf16 FLOP/s, HBM and interconnect bandwidth, for MFU and the mesh planner's roofline.

Vendor data-sheet figures (H100/H200 SXM5, A100 SXM4 80GB; Cloud TPU system-architecture pages). `fast_link` is
the per-device, one-direction bandwidth inside a node (NVLink) or a slice (ICI); `slow_link` the per-device
network bandwidth between nodes (one 400 Gb/s NIC per H100/H200, 200 Gb/s per A100); TPU slices have no node
boundary. These are estimates for planning, not measurements.
"""
from __future__ import annotations

import dataclasses

import jax


@dataclasses.dataclass(frozen=True)
class Accelerator:
  name: str
  device_kind: str  # substring of jax.Device.device_kind
  peak_flops: float  # dense bf16, per device
  hbm_bytes_per_s: float
  hbm_bytes: float
  fast_link: float  # bytes/s per device, inside a node / slice
  slow_link: float  # bytes/s per device, between nodes
  per_node: int  # devices sharing the fast link (0: the whole slice)


_G = 1e9
ACCELERATORS = {a.name: a for a in (
    Accelerator("H100", "H100", 989e12, 3350 * _G, 80 * 2 ** 30, 450 * _G, 50 * _G, 8),
    Accelerator("H200", "H200", 989e12, 4800 * _G, 141 * 2 ** 30, 450 * _G, 50 * _G, 8),
    Accelerator("A100", "A100", 312e12, 2039 * _G, 80 * 2 ** 30, 300 * _G, 25 * _G, 8),
    Accelerator("v4", "TPU v4", 275e12, 1228 * _G, 32 * 2 ** 30, 300 * _G, 300 * _G, 0),
    Accelerator("v5e", "TPU v5 lite", 197e12, 819 * _G, 16 * 2 ** 30, 200 * _G, 200 * _G, 0),
    Accelerator("v5p", "TPU v5", 459e12, 2765 * _G, 95 * 2 ** 30, 600 * _G, 600 * _G, 0),
    Accelerator("v6e", "TPU v6 lite", 918e12, 1640 * _G, 32 * 2 ** 30, 448 * _G, 448 * _G, 0),
)}


def lookup(name: str) -> Accelerator:
  if name not in ACCELERATORS:
    raise ValueError(f"unknown accelerator {name!r}; expected one of {sorted(ACCELERATORS)}")
  return ACCELERATORS[name]


def detect(device: jax.Device) -> Accelerator | None:
  """The table entry whose device_kind matches (the longest match: 'TPU v5 lite' before 'TPU v5'), or None."""
  kind = getattr(device, "device_kind", "")
  hits = [a for a in ACCELERATORS.values() if a.device_kind in kind]
  return max(hits, key=lambda a: len(a.device_kind)) if hits else None
