"""vid-TLDR token merging (Choi et al., CVPR'24) and its saliency-free (ToMe-style) form, with static shapes.

The official code (mlvlab/vid-TLDR, multi_modality/utils/vid_TLDR.py) hooks into a block between the attention
residual and the MLP. In a block with r > 0:
  saliency   ŝ from the head-mean attention A of that block, taken without the size bias: H = Σ_j A log A,
             min-max normalised per sample; background (s below its mean) -> 0, foreground (s - mean) / max.
  matching   x (the hidden state, not the keys) L2-normalised, split by parity of the current order
             (A = even, B = odd); each A token's best B match over all frames; the r best-matched A are merged.
  merge      x'_dst = (m_dst x_dst + Σ m_src ŝ_src x_src) / (m_dst + Σ m_src ŝ_src), m'_dst likewise, so
             background sources add nothing; without saliency ŝ = 1 (mass-weighted ToMe merge). Output order
             [unmerged A in ascending order, B].
Every block after the first merge adds log m of each key to its attention logits (proportional attention).
Each merge also sums the input patches each token holds (unweighted counts; not in the official code), which
the classifier's pool weights tokens by (heads.VideoClassifier).
The schedule gives r per block, so all token counts are known when tracing: everything jits.
"""
from __future__ import annotations

import numbers
from typing import Sequence

import jax
import jax.numpy as jnp

from umt_jax.models import layers

POOLS = ("count", "mean")  # the classifier's pooling of merged tokens (heads.VideoClassifier.merge_pool)


def merge_counts(schedule: Sequence[float], tokens: int, depth: int) -> tuple[int, ...]:
  """Tokens merged per block (the official `vidTLDR_r`): r ≥ 1 an int count, 0 ≤ r < 1 a fraction int(N·r)
  of the block's current N; blocks past the schedule merge nothing. -> `depth` ints.

  Unlike the official code, which silently clips r to [0, N//2], anything outside that range is an error.
  """
  schedule = list(schedule)
  if len(schedule) > depth:
    raise ValueError(f"model.merge.schedule {schedule} has {len(schedule)} entries for a depth-{depth} encoder")
  rs, n = [], tokens
  for i, r in enumerate(schedule + [0] * (depth - len(schedule))):
    if isinstance(r, bool) or not isinstance(r, numbers.Real) or r < 0 or (r >= 1 and r != int(r)):
      raise ValueError(f"model.merge.schedule entry {i} is {r!r}: expected an int count ≥ 0 or a fraction in "
                       f"[0, 1)")
    count = int(n * r) if r < 1 else int(r)
    if count > n // 2:
      raise ValueError(f"model.merge.schedule entry {i} is {r!r}: block {i} can merge at most {n // 2} of its "
                       f"{n} tokens (schedule {schedule}, {tokens} input tokens)")
    rs.append(count)
    n -= count
  return tuple(rs)


def saliency(attn: jax.Array) -> jax.Array:
  """Head-mean attention probabilities (B, N, N) -> sharpened foreground saliency ŝ (B, N) in {0} ∪ (0, 1], fp32.

  (the official `get_objective_score`; 0·log 0 is taken as 0 where the official code gives NaN)
  """
  attn = attn.astype(jnp.float32)
  h = jnp.sum(jax.scipy.special.xlogy(attn, attn), axis=-1)
  s = h - h.min(axis=1, keepdims=True)
  s = s / s.max(axis=1, keepdims=True)
  mean = s.mean(axis=1, keepdims=True)
  fg = s - mean
  fg = fg / fg.max(axis=1, keepdims=True)
  return jnp.where(s < mean, 0.0, fg)


def bipartite_merge(x: jax.Array, size: jax.Array | None, r: int, score: jax.Array | None = None,
                    count: jax.Array | None = None):
  """x (B, N, D), size (B, N) token masses or None (all 1), score ŝ (B, N) or None (no saliency), count (B, N)
  input patches per token or None (all 1) -> (x' (B, N-r, D) in x's dtype, size' (B, N-r) fp32, count'
  (B, N-r) fp32), order [unmerged A ascending, B]. Counts add up whatever the saliency (a dropped background
  patch still counts, in the token it went to); without saliency they equal the masses.

  (the official `merging` + `merge_wavg`, which carry no counts; the scatter-add and the masses are fp32)
  """
  b, n, d = x.shape
  if not 0 < r <= n // 2:
    raise ValueError(f"merge r={r} for {n} tokens: expected 0 < r <= {n // 2}")
  size = jnp.ones((b, n), jnp.float32) if size is None else size.astype(jnp.float32)
  x32 = x.astype(jnp.float32)
  metric = x32 / jnp.linalg.norm(x32, axis=-1, keepdims=True)
  sim = (jnp.einsum("bid,bjd->bij", metric[:, ::2], metric[:, 1::2]) + 1) / 2
  node_max, node_idx = sim.max(axis=-1), jnp.argmax(sim, axis=-1)
  order = jnp.argsort(-node_max, axis=-1, stable=True)  # torch's descending argsort; ties may differ
  src_idx, unm_idx = order[:, :r], jnp.sort(order[:, r:], axis=-1)
  dst_idx = jnp.take_along_axis(node_idx, src_idx, axis=1)
  size_max = size.max(axis=1, keepdims=True)  # the official m / max(m): keeps the weighted sums in range
  src_w = jnp.ones_like(size[:, ::2]) if score is None else score[:, ::2].astype(jnp.float32)
  src_w = jnp.take_along_axis(src_w, src_idx, axis=1)[..., None]

  def merge(v, w=src_w):  # (B, N, C) -> (B, N-r, C): gather A, scatter-add the w-weighted sources into B
    a, dst = v[:, ::2], v[:, 1::2]
    src = jnp.take_along_axis(a, src_idx[..., None], axis=1) * w
    dst = jax.vmap(lambda t, i, s: t.at[i].add(s))(dst, dst_idx, src)
    return jnp.concatenate([jnp.take_along_axis(a, unm_idx[..., None], axis=1), dst], axis=1)

  new_size = merge(size[..., None])[..., 0]
  new_x = merge(x32 * (size / size_max)[..., None]) / (new_size / size_max)[..., None]
  count = jnp.ones((b, n), jnp.float32) if count is None else count.astype(jnp.float32)
  new_count = merge(count[..., None], 1.0)[..., 0]
  return layers.constrain(new_x.astype(x.dtype)), new_size, new_count


def size_bias(size: jax.Array | None) -> jax.Array | None:
  """Proportional attention: masses (B, N) -> logit bias log m (B, 1, 1, N) over keys, or None."""
  return None if size is None else jnp.log(size)[:, None, None, :]
