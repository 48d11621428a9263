"""UMT stage 2: the video-language model (official `multi_modality/models/umt.py`).

Flax tree [official stage-2 state_dict]:
  vision_encoder/{encoder/*, clip_decoder_k/*, pool_norm}  [vision_encoder.*]  (the stage-1 `UMTPretrain`)
  text_encoder/{bert/*, cls/*}                             [text_encoder.*]    (BERT with fusion layers + MLM)
  vision_proj, text_proj                                   Linear(D → E)
  itm_head                                                 Linear(D_text → 2)
  temp                                                     scalar, init 0.07 (clamped by the objectives)
Each method is one pass the objectives and the retrieval evaluation combine (`apply(..., method=...)`).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from umt_jax.models import layers
from umt_jax.models.bert import BertConfig, BertForMaskedLM
from umt_jax.models.heads import UMTPretrain

Dtype = Any


class UMTStage2(nn.Module):
  vision: dict  # UMTPretrain kwargs: encoder (VisionTransformer kwargs), clip_dim, num_align_layers
  text: BertConfig
  embed_dim: int = 512
  temp_init: float = 0.07
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.vision_encoder = UMTPretrain(**self.vision, decoder_norm_eps=1e-5, pool_norm=True, **kw)
    self.text_encoder = BertForMaskedLM(self.text, **kw)
    self.vision_proj = layers.Dense(self.embed_dim, axes=("embed", "clip_embed"), name="vision_proj", **kw)
    self.text_proj = layers.Dense(self.embed_dim, axes=("embed", "clip_embed"), name="text_proj", **kw)
    self.itm_head = layers.Dense(2, axes=("embed", None), name="itm_head", **kw)
    self.temp = layers.param_with_axes(self, "temp", nn.initializers.constant(self.temp_init), (), (),
                                       self.param_dtype)

  def encode_vision(self, video: jax.Array, visible_idx: jax.Array | None, deterministic: bool = True,
                    align: bool = True):
    """video (B,T,H,W,3) normalised -> (aligned (K,B,Nv,C) or None, tokens (B,Nv,D), vision embedding (B,T',E))."""
    aligned, tokens, pooled = self.vision_encoder(video, visible_idx, deterministic, align, return_tokens=True)
    return aligned, tokens, self.vision_proj(pooled).astype(jnp.float32)

  def encode_text(self, ids: jax.Array, mask: jax.Array, deterministic: bool = True):
    """ids, mask (B,L) -> (hidden (B,L,D) of the text-only layers, text embedding (B,E) from [CLS])."""
    hidden = self.text_encoder.text(ids, mask, deterministic)
    return hidden, self.text_proj(hidden[:, 0]).astype(jnp.float32)

  def itm_logits(self, hidden: jax.Array, mask: jax.Array, tokens: jax.Array, vision_mask: jax.Array | None = None,
                 deterministic: bool = True) -> jax.Array:
    """Video-text matching: fusion layers on text `hidden` over vision `tokens` -> [CLS] -> itm_head, (B, 2)."""
    fused = self.text_encoder.fusion(hidden, mask, tokens, vision_mask, deterministic)
    return self.itm_head(fused[:, 0]).astype(jnp.float32)

  def mlm_logits(self, hidden: jax.Array, mask: jax.Array, tokens: jax.Array, deterministic: bool = True):
    """Masked language modelling: fusion over vision `tokens` -> MLM head, (B, L, vocab)."""
    return self.text_encoder.mlm_logits(self.text_encoder.fusion(hidden, mask, tokens, None, deterministic))

  def __call__(self, video: jax.Array, visible_idx: jax.Array | None, ids: jax.Array, mask: jax.Array):
    """Every param once (for init) -> (ITM logits, MLM logits)."""
    _, tokens, _ = self.encode_vision(video, visible_idx)
    hidden, _ = self.encode_text(ids, mask)
    return self.itm_logits(hidden, mask, tokens), self.mlm_logits(hidden, mask, tokens)
