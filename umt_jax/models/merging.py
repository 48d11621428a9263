"""vid-TLDR token merging (Choi et al., CVPR'24) and plain ToMe bipartite merging, with static shapes.

In a merge block (r > 0), between the attention residual and the MLP:
  saliency   ŝ from the head-mean attention A of that block (without the size bias): H = Σ_j A log A,
             min-max normalised per sample; background (H below its mean) -> 0; foreground (s - mean)/max.
  matching   x L2-normalised, split by parity of the current order (A = even, B = odd), each A token's best B
             match over all frames; the r A tokens with the highest match are merged.
  merge      x'_dst = (m_dst x_dst + Σ m_src ŝ_src x_src) / (m_dst + Σ m_src ŝ_src), m'_dst likewise, so
             background sources add nothing; without saliency (ToMe) ŝ = 1. Output order [unmerged A, B].
Every block after the first merge adds log m of each key to its attention logits (proportional attention).
The schedule gives r per block, so token counts are known when tracing: everything jits.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from umt_jax.models import layers

Dtype = Any


def merge_counts(schedule: Sequence[float], tokens: int, depth: int) -> tuple[int, ...]:
  """Tokens merged per block, official semantics: r ≥ 1 an int count, 0 < r < 1 a fraction int(N·r) of the
  block's current N, clipped to N//2; blocks past the schedule merge nothing."""
  if len(schedule) > depth:
    raise ValueError(f"model.merge.schedule has {len(schedule)} entries for depth {depth}")
  rs, n = [], tokens
  for r in list(schedule) + [0] * (depth - len(schedule)):
    if r < 0 or (r >= 1 and r != int(r)):
      raise ValueError(f"model.merge.schedule entry {r!r}: expected an int ≥ 0 or a fraction in (0, 1)")
    r = min(int(n * r) if r < 1 else int(r), n // 2)
    rs.append(r)
    n -= r
  return tuple(rs)


def saliency(log_attn: jax.Array) -> jax.Array:
  """log of the head-mean attention (B, N, N) -> sharpened foreground saliency ŝ (B, N) in {0} ∪ (0, 1], fp32."""
  log_attn = log_attn.astype(jnp.float32)
  h = jnp.sum(jnp.exp(log_attn) * log_attn, axis=-1)
  s = h - h.min(axis=1, keepdims=True)
  s = s / s.max(axis=1, keepdims=True)
  mean = s.mean(axis=1, keepdims=True)
  fg = s - mean
  fg = fg / fg.max(axis=1, keepdims=True)
  return jnp.where(s < mean, 0.0, fg)


def bipartite_merge(x: jax.Array, size: jax.Array | None, r: int, score: jax.Array | None = None):
  """x (B, N, D), size (B, N) token masses or None (all 1), score ŝ (B, N) or None (ToMe)
  -> (x' (B, N-r, D) in x's dtype, size' (B, N-r) fp32), order [unmerged A ascending, B]."""
  b, n, d = x.shape
  if not 0 < r <= n // 2:
    raise ValueError(f"merge r={r} for {n} tokens: expected 0 < r <= {n // 2}")
  size = jnp.ones((b, n), jnp.float32) if size is None else size.astype(jnp.float32)
  x32 = x.astype(jnp.float32)
  metric = x32 / jnp.linalg.norm(x32, axis=-1, keepdims=True)
  sim = (jnp.einsum("bid,bjd->bij", metric[:, ::2], metric[:, 1::2]) + 1) / 2
  node_max, node_idx = sim.max(axis=-1), jnp.argmax(sim, axis=-1)
  order = jnp.argsort(-node_max, axis=-1, stable=True)
  src_idx, unm_idx = order[:, :r], jnp.sort(order[:, r:], axis=-1)
  dst_idx = jnp.take_along_axis(node_idx, src_idx, axis=1)
  weight = size / size.max(axis=1, keepdims=True)  # the official m/max(m), for range only
  xw = x32 * weight[..., None]
  src_w = jnp.ones_like(size[:, ::2]) if score is None else score[:, ::2].astype(jnp.float32)

  def merge(v):  # (B, N, C) -> (B, N-r, C): gather A, scatter-add the weighted sources into B
    a, dst = v[:, ::2], v[:, 1::2]
    src = jnp.take_along_axis(a, src_idx[..., None], axis=1)
    src = src * jnp.take_along_axis(src_w, src_idx, axis=1)[..., None]
    dst = jax.vmap(lambda t, i, s: t.at[i].add(s))(dst, dst_idx, src)
    return jnp.concatenate([jnp.take_along_axis(a, unm_idx[..., None], axis=1), dst], axis=1)

  new_size = merge(size[..., None])[..., 0]
  new_x = merge(xw) / (new_size / size.max(axis=1, keepdims=True))[..., None]
  return layers.constrain(new_x.astype(x.dtype)), new_size


def size_bias(size: jax.Array | None) -> jax.Array | None:
  """Proportional attention: masses (B, N) -> logit bias log m (B, 1, 1, N) over keys, or None."""
  return None if size is None else jnp.log(size)[:, None, None, :]


class MergeAttention(nn.Module):
  """`layers.Attention(layout='beit')` (same params) with the probabilities written out, for merge blocks.

  x (B, N, D), bias (B, 1, 1, N) or None -> (y (B, N, D), log of the head-mean attention without `bias`
  (B, N, N) fp32, the saliency input). Logits and softmax in fp32.
  """
  num_heads: int
  kernel_init: layers.Initializer | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array | None = None):
    d, h = x.shape[-1], self.num_heads
    dh = d // h
    if dh * h != d:
      raise ValueError(f"width {d} is not divisible by num_heads {h}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=self.kernel_init)
    qkv = layers.Dense((3, h, dh), axes=("embed", None, "heads", "kv"), use_bias=False, name="qkv", **kw)(x)
    q_bias = layers.param_with_axes(self, "q_bias", nn.initializers.zeros, (h, dh), ("heads", "kv"),
                                    self.param_dtype)
    v_bias = layers.param_with_axes(self, "v_bias", nn.initializers.zeros, (h, dh), ("heads", "kv"),
                                    self.param_dtype)
    qkv = qkv + jnp.stack([q_bias, jnp.zeros_like(q_bias), v_bias]).astype(self.dtype)
    q, k, v = (layers.constrain(qkv[..., i, :, :], ("activation_batch", "activation_length", "activation_heads",
                                                     "activation_kv")) for i in range(3))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * dh ** -0.5
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    log_attn = jax.nn.logsumexp(log_probs, axis=1) - np.log(h)  # log mean_h A, stable where A underflows
    probs = jnp.exp(log_probs) if bias is None else jax.nn.softmax(logits + bias, axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)
    y = layers.Dense(d, axes=("heads", "kv", "embed"), in_ndim=2, name="proj", **kw)(out)
    return y, jax.lax.stop_gradient(log_attn)
