"""Collectives of a compiled (SPMD-partitioned) step, read from its HLO text, and the bytes each device moves.

Bytes per device follow ring algorithms over a group of n devices, R being one device's result:
all-gather R·(n-1)/n, reduce-scatter R·(n-1), all-reduce 2R·(n-1)/n, all-to-all R·(n-1)/n, permute R.
A group spanning several nodes runs at the slower link (umt_jax.hardware).
"""
from __future__ import annotations

import collections
import dataclasses
import re

import numpy as np

KINDS = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
               "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8}
_OP = re.compile(r"=\s*(?P<type>.+?)\s+(?P<kind>" + "|".join(KINDS) + r")(?P<start>-start)?\(")
_SHAPE = re.compile(r"\b(" + "|".join(DTYPE_BYTES) + r")\[([\d,]*)\]")
_IOTA = re.compile(r"replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?")
_LIST = re.compile(r"replica_groups=\{(\{[\d,]*\}(?:,\{[\d,]*\})*)\}")
_PAIRS = re.compile(r"source_target_pairs=\{((?:\{\d+,\d+\},?)*)\}")


@dataclasses.dataclass
class Collective:
  kind: str
  result_bytes: int
  groups: np.ndarray  # (num_groups, group_size) device ids

  @property
  def group_size(self) -> int:
    return self.groups.shape[1]

  def bytes_moved(self) -> float:
    n, r = self.group_size, self.result_bytes
    if self.kind == "collective-permute":
      return float(r)
    if n <= 1:
      return 0.0
    return {"all-gather": r * (n - 1) / n, "reduce-scatter": r * (n - 1), "all-reduce": 2 * r * (n - 1) / n,
            "all-to-all": r * (n - 1) / n}[self.kind]

  def crosses_nodes(self, per_node: int) -> bool:
    if per_node <= 0:
      return False
    nodes = self.groups // per_node
    return bool((nodes != nodes[:, :1]).any())


def _groups(line: str, num_devices: int) -> np.ndarray:
  if m := _IOTA.search(line):
    g, s = int(m[1]), int(m[2])
    ids = np.arange(int(np.prod([int(d) for d in m[3].split(",")]))).reshape([int(d) for d in m[3].split(",")])
    if m[4]:
      ids = ids.transpose([int(d) for d in m[4].split(",")])
    return ids.reshape(g, s)
  if m := _LIST.search(line):
    rows = [[int(v) for v in grp.split(",") if v] for grp in re.findall(r"\{([\d,]*)\}", m[1])]
    if rows and all(len(r) == len(rows[0]) and r for r in rows):
      return np.array(rows)
  if m := _PAIRS.search(line):
    return np.array([[int(a), int(b)] for a, b in re.findall(r"\{(\d+),(\d+)\}", m[1])])
  return np.arange(num_devices)[None]  # empty groups: every device


def parse(hlo_text: str, num_devices: int) -> list[Collective]:
  """Every collective in the HLO module text (async `-start` ops counted once, `-done` skipped)."""
  out = []
  for line in hlo_text.splitlines():
    m = _OP.search(line)
    if not m:
      continue
    shapes = [(dt, [int(d) for d in dims.split(",") if d]) for dt, dims in _SHAPE.findall(m["type"])]
    if m["start"] and m["kind"] == "all-gather" and len(shapes) > 1:
      shapes = shapes[len(shapes) // 2:]  # (operands, results) tuple: keep the results
    nbytes = sum(DTYPE_BYTES[dt] * int(np.prod(dims)) for dt, dims in shapes)
    out.append(Collective(m["kind"], nbytes, _groups(line, num_devices)))
  return out


def summarize(ops: list[Collective], fast_link: float, slow_link: float, per_node: int) -> dict:
  """-> {'counts': {kind: n}, 'bytes': moved per device, 'seconds': at the link bandwidths}."""
  counts = collections.Counter(op.kind for op in ops)
  moved = sum(op.bytes_moved() for op in ops)
  seconds = sum(op.bytes_moved() / (slow_link if op.crosses_nodes(per_node) else fast_link) for op in ops)
  return {"counts": dict(counts), "bytes": moved, "seconds": seconds}
