"""Models built on the student encoder: UMT stage-1 pretraining, VideoMAE V2 pretraining, classifier.

Flax trees mirror the official checkpoints:
  UMTPretrain       encoder/* [encoder.*], clip_decoder_k/{head,norm} [clip_decoder.k.*]
  VideoMAEPretrain  encoder/*, encoder_to_decoder, mask_token, decoder/{blocks_i,norm,head}
  VideoClassifier   encoder/* [top-level keys of the fine-tune model], fc_norm, head
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from umt_jax.models import layers, merging
from umt_jax.models.posemb import video_pos_table
from umt_jax.models.layers import gather_tokens
from umt_jax.models.vit import Block, VisionTransformer, ref_grid

Dtype = Any


def l2_normalize(x: jax.Array, eps: float = 0.0) -> jax.Array:
  """x / ||x|| over the last axis, in fp32 (the official code divides by the norm with no epsilon)."""
  x = x.astype(jnp.float32)
  return x / (jnp.linalg.norm(x, axis=-1, keepdims=True) + eps)


class UMTPretrain(nn.Module):
  """UMT student encoder + K alignment decoders; stage 2's vision tower (`vision_encoder`) adds `pool_norm`.

  __call__(video (B,T,H,W,3), visible_idx (B, Nv) or None (all tokens), deterministic) -> (K, B, Nv, C_clip),
  L2-normalised. Decoder k aligns the output of student block depth-K+k (shared final norm, plus the sin-cos
  table at encoder width at the visible positions) via Linear → LayerNorm → L2 normalise.
  With `return_tokens`: -> (aligned or None when `align` is off, tokens (B, Nv, D) = normed last block,
  pooled (B, T', D)): `pool_norm` of the token mean, T' = 1 on a masked clip, per frame (T' = T) on a full one
  (what the official stage-2 model returns for VTC).
  """
  encoder: dict  # VisionTransformer kwargs (use_norm is forced on)
  clip_dim: int = 512
  num_align_layers: int = 6
  decoder_norm_eps: float = 1e-6  # stage 2 decoders use 1e-5
  pool_norm: bool = False  # stage 2
  keep_temporal: bool = True  # pool per time step (UMT's configs); False: one mean (vid-TLDR's configs)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, video: jax.Array, visible_idx: jax.Array | None, deterministic: bool = True,
               align: bool = True, return_tokens: bool = False):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    enc = VisionTransformer(**{**self.encoder, "use_norm": True}, name="encoder", **kw)
    depth = enc.depth
    align = align and self.num_align_layers > 0  # downstream stage-2 models keep no decoders
    if align and any(enc.merge_schedule):
      raise ValueError(f"model.merge.schedule {list(enc.merge_schedule)}: merged tokens have no positions for the "
                       "alignment decoders; merge only without them (align=False, e.g. retrieval evaluation)")
    return_layers = tuple(range(depth - self.num_align_layers, depth)) if align else ()
    x, feats = enc(video, visible_idx, return_layers, deterministic)
    aligned = None
    if align:
      pos = jnp.asarray(video_pos_table(enc.token_grid(video.shape), enc.embed_dim), self.dtype)
      pos = jnp.broadcast_to(pos, (video.shape[0],) + pos.shape)
      feats = feats + (pos if visible_idx is None else gather_tokens(pos, visible_idx))[None]
      aligned = jnp.stack([AlignDecoder(self.clip_dim, self.decoder_norm_eps, name=f"clip_decoder_{k}", **kw)(
          feats[k]) for k in range(self.num_align_layers)])
    if not return_tokens:
      return aligned
    b, t = video.shape[0], enc.token_grid(video.shape)[0]
    # One unweighted mean over the tokens: asked for, or forced by masking or merging (no frame structure left).
    one_pool = not self.keep_temporal or visible_idx is not None or any(enc.merge_schedule)
    per_frame = x if one_pool else x.reshape(b, t, -1, x.shape[-1])
    pooled = per_frame.astype(jnp.float32).mean(axis=-2)
    pooled = pooled[:, None] if one_pool else pooled
    if self.pool_norm:
      pooled = layers.LayerNorm(1e-6, name="pool_norm", **kw)(pooled)
    return aligned, x, pooled


class AlignDecoder(nn.Module):
  """UMT `Linear_Decoder`: Linear(D → C) → LayerNorm(C) → L2 normalise. (B, N, D) -> (B, N, C) fp32."""
  out_dim: int
  norm_eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = layers.Dense(self.out_dim, axes=("embed", "clip_embed"), name="head", **kw)(x)
    return l2_normalize(layers.LayerNorm(self.norm_eps, axis_name="clip_embed", name="norm", **kw)(y))


class VideoMAEPretrain(nn.Module):
  """VideoMAE (V2) pixel reconstruction with dual masking.

  __call__(video, visible_idx (B, Nv) encoder-visible tokens, decode_idx (B, Nd) tokens the decoder
  reconstructs, deterministic) -> (B, Nd, kt·p·p·3) predicted (normalised) pixels, in (p0 p1 p2 c) order.
  Decoder input: [proj(enc) + pos[visible], mask_token + pos[decode_idx]] (B, Nv + Nd, Dd); its blocks' MLP
  width is int(Dd · the encoder's mlp_ratio) (g: 512 · 48/11 -> 2234), as the official model passes one ratio.
  """
  encoder: dict
  decoder_dim: int = 384
  decoder_depth: int = 4
  decoder_heads: int = 6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, video: jax.Array, visible_idx: jax.Array, decode_idx: jax.Array,
               deterministic: bool = True) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    enc = VisionTransformer(**{**self.encoder, "use_norm": True}, name="encoder", **kw)
    if any(enc.merge_schedule):
      raise ValueError(f"model.merge.schedule {list(enc.merge_schedule)}: the VideoMAE decoder needs each encoder "
                       "token's position, which merged tokens do not have")
    x, _ = enc(video, visible_idx, (), deterministic)
    x = layers.Dense(self.decoder_dim, axes=("embed", "decoder_embed"), use_bias=False,
                     name="encoder_to_decoder", **kw)(x)
    b = video.shape[0]
    pos = jnp.asarray(video_pos_table(enc.token_grid(video.shape), self.decoder_dim), self.dtype)
    pos = jnp.broadcast_to(pos, (b,) + pos.shape)
    mask_token = layers.param_with_axes(self, "mask_token", layers.trunc_normal(0.02), (1, 1, self.decoder_dim),
                                        (None, None, "decoder_embed"), self.param_dtype)
    queries = mask_token.astype(self.dtype) + gather_tokens(pos, decode_idx)
    x = jnp.concatenate([x + gather_tokens(pos, visible_idx), queries], axis=1)
    x = _Decoder(self.decoder_depth, self.decoder_heads, decoder_mlp_dim(self.decoder_dim, enc),
                 3 * enc.tubelet_size * enc.patch_size ** 2, name="decoder", **kw)(x, decode_idx.shape[1],
                                                                                    deterministic)
    return x


def decoder_mlp_dim(decoder_dim: int, enc) -> int:
  """The decoder blocks' MLP width: int(decoder_dim · mlp_dim / embed_dim) of the encoder (kwargs or module)."""
  get = enc.get if isinstance(enc, dict) else lambda k: getattr(enc, k)
  return int(decoder_dim * get("mlp_dim") / get("embed_dim"))


class _Decoder(nn.Module):
  """VideoMAE decoder: blocks → norm → head, predicting only the last `num_pred` tokens."""
  depth: int
  num_heads: int
  mlp_dim: int
  out_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, num_pred: int, deterministic: bool) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for i in range(self.depth):
      x = Block(self.num_heads, self.mlp_dim, name=f"blocks_{i}", **kw)(x, deterministic)
    x = layers.LayerNorm(1e-6, name="norm", **kw)(x[:, -num_pred:])
    return layers.Dense(self.out_dim, axes=("embed", None), name="head", **kw)(x)


class VideoClassifier(nn.Module):
  """Fine-tuning model: encoder on all tokens → mean pool → fc_norm → dropout → head.

  Under vid-TLDR / ToMe merging (`encoder['merge_schedule']`) `merge_pool` sets the pool: 'count' weights each
  token by the input patches it holds, so every patch counts once, as in the mean the classifier was trained on
  (in ToMe mode the pool of a merge's output is exactly the mean of its input); 'mean' is the unweighted mean,
  the official (retrieval) pooling. Without merging both are the plain mean.
  __call__(video (B,T,H,W,3), deterministic) -> logits (B, num_classes) in fp32.
  """
  encoder: dict
  num_classes: int = 400
  fc_drop_rate: float = 0.0
  init_scale: float = 0.001
  merge_pool: str = "count"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, video: jax.Array, deterministic: bool = True) -> jax.Array:
    if self.merge_pool not in merging.POOLS:
      raise ValueError(f"model.merge.pool {self.merge_pool!r}: expected one of {merging.POOLS}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    # Fine-tuning resizes the 8×P×P reference table for other clip shapes, as the official model does.
    pos_ref = ref_grid(self.encoder.get("patch_size", 16))
    x, _, count = VisionTransformer(**{"linear_init": "trunc_normal", "pos_ref_grid": pos_ref, **self.encoder,
                                      "use_norm": False}, name="encoder", **kw)(video, None, (), deterministic,
                                                                                return_counts=True)
    x = x.astype(jnp.float32)
    if count is None or self.merge_pool == "mean":
      x = x.mean(axis=1)
    else:
      x = jnp.einsum("bnd,bn->bd", x, count) / count.sum(axis=1, keepdims=True)
    x = layers.LayerNorm(1e-6, name="fc_norm", **kw)(x)
    x = nn.Dropout(self.fc_drop_rate)(x, deterministic=deterministic)
    head_init = lambda key, shape, dtype=jnp.float32: layers.trunc_normal(0.02)(key, shape, dtype) * self.init_scale
    logits = layers.Dense(self.num_classes, axes=("embed", "classes"), kernel_init=head_init, name="head",
                          **kw)(x)
    return logits.astype(jnp.float32)
