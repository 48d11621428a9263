"""Token masks as sorted index lists with static sizes: jittable and deterministic given a PRNG key.

Every function returns the indices of the tokens that are KEPT (visible to the encoder, or reconstructed by
the decoder), sorted ascending, i.e. the order PyTorch's boolean `x[~mask]` produces. Token index is t-major:
t·(h·w) + y·w + x.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def num_visible(n: int, mask_ratio: float) -> int:
  """Tokens kept out of n: n - int(n·ratio), the official rounding."""
  keep = n - int(n * mask_ratio)
  if not 0 < keep <= n:
    raise ValueError(f"mask_ratio {mask_ratio} keeps {keep} of {n} tokens; expected 0 <= ratio < 1")
  return keep


def _sorted_topk(scores: jax.Array, k: int) -> jax.Array:
  return jnp.sort(jax.lax.top_k(scores, k)[1], axis=-1)


def semantic_frame_mask(key: jax.Array, cls_attn: jax.Array, mask_ratio: float) -> jax.Array:
  """UMT's attention-guided mask, per frame. cls_attn (B, T, N) teacher CLS→patch attention -> (B, T, Nv)
  patch indices within each frame, ascending.

  Per frame, draws Nv = N - int(N·ratio) tokens without replacement with probability ∝ attention (the
  official `torch.multinomial(attn, N)[:Nv]`), via Gumbel-top-k, which has the same distribution.
  """
  k = num_visible(cls_attn.shape[-1], mask_ratio)
  logp = jnp.log(jnp.maximum(cls_attn.astype(jnp.float32), jnp.finfo(jnp.float32).tiny))
  return _sorted_topk(logp + jax.random.gumbel(key, logp.shape), k)


def frame_tokens(idx: jax.Array, n: int) -> jax.Array:
  """Per-frame patch indices (B, T, K) of frames of n patches -> token indices t·n + i (B, T·K)."""
  b, t, k = idx.shape
  return (idx + n * jnp.arange(t)[None, :, None]).reshape(b, t * k)


def semantic_mask(key: jax.Array, cls_attn: jax.Array, mask_ratio: float) -> jax.Array:
  """`semantic_frame_mask` as token indices: cls_attn (B, T, N) -> visible (B, T·Nv), ascending."""
  return frame_tokens(semantic_frame_mask(key, cls_attn, mask_ratio), cls_attn.shape[-1])


def random_mask(key: jax.Array, batch: int, num_tokens: int, mask_ratio: float) -> jax.Array:
  """Uniformly random mask over all tokens (VideoMAE 'random') -> visible (B, Nv)."""
  k = num_visible(num_tokens, mask_ratio)
  return _sorted_topk(jax.random.uniform(key, (batch, num_tokens)), k)


def tube_mask(key: jax.Array, batch: int, grid: tuple[int, int, int], mask_ratio: float) -> jax.Array:
  """VideoMAE tube mask: one random spatial mask per clip, repeated over time -> visible (B, T·Nv)."""
  t, h, w = grid
  k = num_visible(h * w, mask_ratio)
  cells = _sorted_topk(jax.random.uniform(key, (batch, h * w)), k)  # (B, k)
  return (cells[:, None, :] + h * w * jnp.arange(t)[None, :, None]).reshape(batch, t * k)


def running_cell_patterns(grid: tuple[int, int, int], mask_ratio: float = 0.5) -> np.ndarray:
  """The VideoMAE V2 decoder masks for all phases: (4, T, H·W) with 1 = dropped by the decoder.

  A 2×2 cell reads a queue [1]*m + [0]*(4-m) (m = int(4·ratio)) from pointer φ+t+1 in raster order
  (TL, TR, BL, BR); the cell is tiled over the frame.
  """
  t, h, w = grid
  m = int(4 * mask_ratio)
  if not 0 < m < 4:
    raise ValueError(f"running-cell mask_ratio must give 1..3 masks per 2×2 cell, got {mask_ratio}")
  if h % 2 or w % 2:
    raise ValueError(f"running-cell masking needs an even token grid, got {h}×{w}")
  queue = np.array([1] * m + [0] * (4 - m))
  cell_of = (np.arange(h)[:, None] % 2) * 2 + (np.arange(w)[None, :] % 2)  # (H, W) position in the cell
  out = np.zeros((4, t, h * w), np.int32)
  for phase in range(4):
    for s in range(t):
      cell = queue[(np.arange(4) + phase + s + 1) % 4]
      out[phase, s] = cell[cell_of].reshape(-1)
  return out


def running_cell_mask(key: jax.Array, batch: int, grid: tuple[int, int, int], mask_ratio: float = 0.5) -> jax.Array:
  """VideoMAE V2 decoder mask: one uniformly random phase per sample -> decoder-kept tokens (B, Nd)."""
  patterns = running_cell_patterns(grid, mask_ratio)
  kept = np.stack([np.flatnonzero(p.reshape(-1) == 0) for p in patterns])  # (4, Nd), same Nd for every phase
  phase = jax.random.randint(key, (batch,), 0, 4)
  return jnp.asarray(kept)[phase]


def encoder_masked(visible_idx: jax.Array, num_tokens: int) -> jax.Array:
  """The complement of (B, Nv) visible tokens -> (B, N - Nv) sorted: what VideoMAE v1's decoder reconstructs
  (decoder_mask_ratio 0, where the official sets decoder_mask = 1 - encoder_mask)."""
  masked = visible_to_mask(visible_idx, num_tokens).astype(jnp.float32)
  return _sorted_topk(masked, num_tokens - visible_idx.shape[1])


def visible_to_mask(visible_idx: jax.Array, num_tokens: int) -> jax.Array:
  """(B, Nv) kept indices -> (B, N) bool, True = masked (the official convention)."""
  b = visible_idx.shape[0]
  return jnp.ones((b, num_tokens), bool).at[jnp.arange(b)[:, None], visible_idx].set(False)
