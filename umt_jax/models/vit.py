"""The video ViT student (UMT / VideoMAE encoder), param names mirroring the official state_dict.

Flax tree (torch name in brackets): patch_embed/proj [patch_embed.proj], blocks_i [blocks.i] with norm1,
attn (qkv, q_bias, v_bias, proj), norm2, mlp (fc1, fc2), `norm` [norm] when `use_norm`, and `pos_embed`
[pos_embed] when `pos_param`.
Tokens are ordered t-major, index = t·h·w + y·w + x, as the official Conv3d + flatten produces them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from umt_jax.models import layers, merging
from umt_jax.models.layers import gather_tokens
from umt_jax.models.posemb import video_pos_table

Dtype = Any


@dataclasses.dataclass(frozen=True)
class ViTVariant:
  embed_dim: int
  depth: int
  num_heads: int
  mlp_dim: int
  patch_size: int = 16


# Reference dims (UMT: B, L; VideoMAE V2: S, B, L, H, g; Ti for tests and demos).
VARIANTS: dict[str, ViTVariant] = {
    "Ti": ViTVariant(192, 12, 3, 768),
    "S": ViTVariant(384, 12, 6, 1536),
    "B": ViTVariant(768, 12, 12, 3072),
    "L": ViTVariant(1024, 24, 16, 4096),
    "H": ViTVariant(1280, 32, 16, 5120),
    "g": ViTVariant(1408, 40, 16, 6144, patch_size=14),
}


def ref_grid(patch_size: int) -> tuple[int, int, int]:
  """The 8×P×P token grid the official fine-tuning code resizes position tables from (P=14, or 16 for g/14)."""
  return (8, 16, 16) if patch_size == 14 else (8, 14, 14)


def patchify(video: jax.Array, tubelet_size: int, patch_size: int) -> jax.Array:
  """(B, T, H, W, C) -> (B, T/kt · H/p · W/p, kt, p, p, C), tubelets in t-major raster order."""
  b, t, h, w, c = video.shape
  kt, p = tubelet_size, patch_size
  if t % kt or h % p or w % p:
    raise ValueError(f"video of shape {video.shape} (B,T,H,W,C) is not divisible into tubelets {kt}×{p}×{p}")
  x = video.reshape(b, t // kt, kt, h // p, p, w // p, p, c).transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(b, -1, kt, p, p, c)


class PatchEmbed(nn.Module):
  """Tubelet embedding: a Conv3d with kernel = stride = (kt, p, p), written as patchify + matmul.

  (B, T, H, W, C) -> (B, T/kt · H/p · W/p, D), or with `visible_idx` (B, Nv) only those tubelets (B, Nv, D):
  they are gathered before the matmul, so masked ones cost nothing. Kernel (kt, p, p, C, D) [torch:
  proj.weight (D, C, kt, p, p)].
  """
  embed_dim: int
  patch_size: int
  tubelet_size: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, video: jax.Array, visible_idx: jax.Array | None = None) -> jax.Array:
    x = patchify(video, self.tubelet_size, self.patch_size)
    if visible_idx is not None:
      x = gather_tokens(x, visible_idx)
    fan_in = int(np.prod(x.shape[2:]))
    return layers.Dense(self.embed_dim, axes=(None, None, None, None, "embed"), in_ndim=4,
                        kernel_init=layers.torch_linear_init(fan_in), bias_init=layers.torch_linear_init(fan_in),
                        dtype=self.dtype, param_dtype=self.param_dtype, name="proj")(x)


class Block(nn.Module):
  """Pre-norm block: x + DropPath(Attn(LN1 x)); x + DropPath(MLP(LN2 x)). LN eps 1e-6, exact GELU.

  With token masses `size` (B, N) the attention adds log m to its logits; with `merge_r` > 0, vid-TLDR
  (ToMe without `merge_saliency`) merges r tokens between attention and MLP (umt_jax.models.merging).
  Returns x, or (x (B, N - merge_r, D), size, count) when `size` is given or `merge_r` > 0; `count` (B, N)
  is the number of input patches each token holds.
  """
  num_heads: int
  mlp_dim: int
  drop_path: float = 0.0
  kernel_init: layers.Initializer | None = None
  attn_impl: str | None = None
  merge_r: int = 0
  merge_saliency: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True, size: jax.Array | None = None,
               count: jax.Array | None = None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    rng = lambda: None if deterministic or self.drop_path == 0 else self.make_rng("dropout")
    h = layers.LayerNorm(1e-6, name="norm1", **kw)(x)
    want_attn = bool(self.merge_r) and self.merge_saliency  # head-mean probs for the saliency, fp32
    y = layers.Attention(self.num_heads, layout="beit", kernel_init=self.kernel_init, attn_impl=self.attn_impl,
                         return_attn="mean" if want_attn else None, name="attn", **kw)(h, merging.size_bias(size))
    y, attn = y if want_attn else (y, None)
    x = x + layers.drop_path(y, self.drop_path, rng(), deterministic)
    if self.merge_r:  # the official hook: after the attention residual, before the MLP
      score = None if attn is None else merging.saliency(jax.lax.stop_gradient(attn))
      x, size, count = merging.bipartite_merge(x, size, self.merge_r, score, count)
    y = layers.Mlp(self.mlp_dim, kernel_init=self.kernel_init, name="mlp", **kw)(
        layers.LayerNorm(1e-6, name="norm2", **kw)(x))
    x = layers.constrain(x + layers.drop_path(y, self.drop_path, rng(), deterministic))
    return x if size is None else (x, size, count)


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class VisionTransformer(nn.Module):
  """Video ViT encoder on all tokens or on a static-size subset of them; no CLS token.

  __call__(video (B,T,H,W,3) normalised, visible_idx (B, Nv) sorted token indices or None,
           return_layers: block indices whose outputs to return, deterministic, return_counts)
  -> (x (B, Nv, D) last block output, feats (K, B, Nv, D) outputs of `return_layers` in the given order);
  both pass through the final `norm` when `use_norm` (the UMT pretraining encoder shares it). With
  `return_counts`, also the input patches each token holds (B, Nv) fp32 under merging (None without).
  """
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  patch_size: int = 16
  tubelet_size: int = 1
  drop_path_rate: float = 0.0
  use_norm: bool = False
  pos_ref_grid: tuple[int, int, int] | None = None  # None: plain table; else resized from this grid
  pos_param: bool = False  # carry the table as a (1, N, D) `pos_embed` param (an imported table that differs)
  linear_init: str = "xavier"  # 'xavier' (pretraining) or 'trunc_normal' (fine-tuning)
  remat_policy: str = "none"
  attn_impl: str | None = None
  merge_schedule: tuple[float, ...] = ()  # tokens merged per block (vid-TLDR `vidTLDR_r`); () = off
  merge_saliency: bool = True  # False: plain ToMe bipartite merging (no background drop)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def token_grid(self, video_shape: Sequence[int]) -> tuple[int, int, int]:
    _, t, h, w, _ = video_shape
    return (t // self.tubelet_size, h // self.patch_size, w // self.patch_size)

  def pos_table(self, video_shape: Sequence[int]) -> np.ndarray:
    return video_pos_table(self.token_grid(video_shape), self.embed_dim, self.pos_ref_grid)

  @nn.compact
  def __call__(self, video: jax.Array, visible_idx: jax.Array | None = None,
               return_layers: Sequence[int] = (), deterministic: bool = True, return_counts: bool = False):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = PatchEmbed(self.embed_dim, self.patch_size, self.tubelet_size, name="patch_embed", **kw)(video, visible_idx)
    table = jnp.asarray(self.pos_table(video.shape))[None]
    if self.pos_param:  # initialised to the computed table; detached, as the official forward does
      table = jax.lax.stop_gradient(layers.param_with_axes(
          self, "pos_embed", lambda *_: table, table.shape, (None, None, "embed"), self.param_dtype))
    if visible_idx is not None:  # the official code embeds every tubelet, then drops the masked ones: the same
      table = gather_tokens(jnp.broadcast_to(table, (x.shape[0],) + table.shape[1:]), visible_idx)
    x = x + table.astype(self.dtype)
    x = layers.constrain(x)
    kernel_init = layers.trunc_normal(0.02) if self.linear_init == "trunc_normal" else None
    block = Block
    if self.remat_policy != "none":
      block = nn.remat(Block, policy=REMAT_POLICIES[self.remat_policy], static_argnums=(2,))
    rates = np.linspace(0, self.drop_path_rate, self.depth)
    merge_r = merging.merge_counts(self.merge_schedule, x.shape[1], self.depth)
    feats, size, count = {}, None, None
    for i in range(self.depth):
      blk = block(self.num_heads, self.mlp_dim, float(rates[i]), kernel_init, self.attn_impl, merge_r[i],
                  self.merge_saliency, name=f"blocks_{i}", **kw)
      if size is None and not merge_r[i]:
        x = blk(x, deterministic)
      else:
        x, size, count = blk(x, deterministic, size, count)
      feats[i] = x
    missing = [i for i in return_layers if i not in feats]
    if missing:
      raise ValueError(f"return_layers {missing} out of range for depth {self.depth}")
    if len({feats[i].shape for i in return_layers}) > 1:
      raise ValueError(f"return_layers {list(return_layers)} have different token counts under merge_schedule "
                       f"{self.merge_schedule}")
    stacked = jnp.stack([feats[i] for i in return_layers]) if return_layers else None
    if self.use_norm:
      norm = layers.LayerNorm(1e-6, name="norm", **kw)
      x = norm(x)
      stacked = None if stacked is None else norm(stacked)
    return (x, stacked, count) if return_counts else (x, stacked)


def vit_kwargs(variant: str, **overrides) -> dict:
  """VisionTransformer kwargs of a named variant ('Ti','S','B','L','H','g'), with overrides."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown ViT variant {variant!r}; expected one of {sorted(VARIANTS)}")
  v = VARIANTS[variant]
  kw = dict(embed_dim=v.embed_dim, depth=v.depth, num_heads=v.num_heads, mlp_dim=v.mlp_dim,
            patch_size=v.patch_size)
  kw.update(overrides)
  return kw
