"""Fixed sin-cos position tables and their resizing, exactly as the official PyTorch code does it.

The official UMT / VideoMAE code uses one 1-D sinusoid over the flattened (t, h, w) token index (not a
factorised 3-D table). Fine-tuning at another frame count or resolution resizes the reference 8×P×P
table with PyTorch's `F.interpolate` (bicubic over space, linear over time, align_corners=False). That
resize is reproduced here in numpy so tables are trace-time constants and match PyTorch to fp32 rounding.
"""
from __future__ import annotations

import functools

import numpy as np


def sincos_table(n_position: int, dim: int) -> np.ndarray:
  """(n_position, dim) float32: angle p / 10000^(2⌊j/2⌋/dim); sin on even j, cos on odd j (interleaved)."""
  pos = np.arange(n_position, dtype=np.float64)[:, None]
  j = np.arange(dim)
  angle = pos / np.power(10000, 2 * (j // 2) / dim)[None, :]
  table = np.where(j % 2 == 0, np.sin(angle), np.cos(angle))
  return table.astype(np.float32)


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
  """Keys cubic-convolution weights (PyTorch's A=-0.75) for taps at offsets -1, 0, 1, 2. t: (n,) -> (n, 4)."""
  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def resize_axis(x: np.ndarray, new_size: int, axis: int, mode: str) -> np.ndarray:
  """Resize one axis like `torch.nn.functional.interpolate(..., mode, align_corners=False)` with `size=`.

  mode: 'linear' or 'cubic' (bicubic is separable: apply 'cubic' to each spatial axis).
  """
  old = x.shape[axis]
  if old == new_size:
    return x
  x = np.moveaxis(x.astype(np.float64), axis, 0)
  scale = old / new_size
  src = (np.arange(new_size, dtype=np.float64) + 0.5) * scale - 0.5
  if mode == "linear":
    src = np.maximum(src, 0.0)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, old - 1)
    lam = (src - i0)[(...,) + (None,) * (x.ndim - 1)]
    out = (1 - lam) * x[i0] + lam * x[i1]
  elif mode == "cubic":
    i0 = np.floor(src).astype(np.int64)
    w = _cubic_weights(src - i0)
    out = 0.0
    for k in range(4):
      idx = np.clip(i0 - 1 + k, 0, old - 1)
      out = out + w[:, k][(...,) + (None,) * (x.ndim - 1)] * x[idx]
  else:
    raise ValueError(f"resize mode must be 'linear' or 'cubic', got {mode!r}")
  return np.moveaxis(out, 0, axis).astype(np.float32)


@functools.lru_cache(maxsize=32)
def video_pos_table(grid: tuple[int, int, int], dim: int,
                    ref_grid: tuple[int, int, int] | None = None) -> np.ndarray:
  """(T·H·W, dim) table for a token grid (T, H, W).

  ref_grid None: the plain 1-D table over T·H·W positions (what pretraining models build).
  ref_grid given: the table of the reference grid (8, P, P), resized bicubically over space and linearly
  over time to `grid` (what the official fine-tuning models build for other sizes).
  """
  if ref_grid is None or tuple(ref_grid) == tuple(grid):
    return sincos_table(int(np.prod(grid)), dim)
  rt, rh, rw = ref_grid
  table = sincos_table(rt * rh * rw, dim).reshape(rt, rh, rw, dim)
  table = resize_axis(resize_axis(table, grid[1], 1, "cubic"), grid[2], 2, "cubic")
  table = resize_axis(table, grid[0], 0, "linear")
  return table.reshape(-1, dim)


def resize_grid_table(table: np.ndarray, new_hw: tuple[int, int], num_prefix: int = 1) -> np.ndarray:
  """Bicubically resize a learned (prefix + h·w, C) table (e.g. CLIP's, with its CLS row) to a new h×w grid."""
  prefix, grid = table[:num_prefix], table[num_prefix:]
  side = int(round(np.sqrt(grid.shape[0])))
  if side * side != grid.shape[0]:
    raise ValueError(f"position table has {grid.shape[0]} grid rows, which is not a square")
  grid = grid.reshape(side, side, -1)
  grid = resize_axis(resize_axis(grid, new_hw[0], 0, "cubic"), new_hw[1], 1, "cubic")
  return np.concatenate([prefix.astype(np.float32), grid.reshape(-1, table.shape[-1])], axis=0)
