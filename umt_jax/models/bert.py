"""The UMT stage-2 text encoder: BERT (post-LN) whose top layers cross-attend to vision tokens, plus the MLM head.

Follows the official xbert: layers [0, fusion_layer) are text-only (`text`), layers [fusion_layer, num_layers)
add a cross-attention block between self-attention and the feed-forward (`fusion`). Flax tree [torch name]:
bert/embeddings/{word_embeddings, position_embeddings, token_type_embeddings, LayerNorm},
bert/encoder/layer_i [bert.encoder.layer.i]/{attention/{self/{query,key,value}, output/{dense, LayerNorm}},
crossattention/... (fusion layers; key/value read encoder_width inputs), intermediate/dense, output/{dense, LayerNorm}},
cls/predictions/{bias, transform/{dense, LayerNorm}}. The decoder is tied to the word embeddings; no pooler.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from umt_jax.models import layers
from umt_jax.models.vit import REMAT_POLICIES

Dtype = Any


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_dropout: float = 0.1
  attention_dropout: float = 0.1
  fusion_layer: int = 9  # layers [0, fusion_layer) text-only; [fusion_layer, num_layers) add cross-attention
  encoder_width: int = 768  # width of the vision tokens the fusion layers attend to
  pad_token_id: int = 0


BERT_PRESETS: dict[str, BertConfig] = {
    "bert-base": BertConfig(),
    "bert-large": BertConfig(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096,
                             fusion_layer=19, encoder_width=1024),
}

_INIT = nn.initializers.normal(0.02)  # HF BERT: N(0, 0.02) weights and embeddings, zero biases, unit LayerNorms
_MLP_ACT = ("activation_batch", "activation_length", "activation_mlp")


def _key_mask(mask: jax.Array | None) -> jax.Array | None:
  """(B, S) {0,1} -> bool (B, 1, 1, S), broadcast over heads and queries."""
  return None if mask is None else (mask > 0)[:, None, None, :]


class BertEmbeddings(nn.Module):
  """ids (B, L) -> LayerNorm(word + position + token_type 0) -> dropout, (B, L, D)."""
  cfg: BertConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    c, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype, embedding_init=_INIT)
    self.word_embeddings = layers.Embed(c.vocab_size, c.hidden_size, ("vocab", "embed"), **kw)
    self.position_embeddings = layers.Embed(c.max_position_embeddings, c.hidden_size, (None, "embed"), **kw)
    self.token_type_embeddings = layers.Embed(c.type_vocab_size, c.hidden_size, (None, "embed"), **kw)
    self.LayerNorm = layers.LayerNorm(c.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)
    self.dropout = nn.Dropout(c.hidden_dropout)

  def __call__(self, ids: jax.Array, deterministic: bool = True) -> jax.Array:
    length = ids.shape[1]
    if length > self.cfg.max_position_embeddings:
      raise ValueError(f"text of length {length} exceeds max_position_embeddings {self.cfg.max_position_embeddings}")
    x = self.word_embeddings(ids) + self.position_embeddings(jnp.arange(length))[None]
    x = x + self.token_type_embeddings(jnp.zeros((1, 1), jnp.int32))  # the official code passes no type ids
    return layers.constrain(self.dropout(self.LayerNorm(x), deterministic=deterministic))


class DenseResidualNorm(nn.Module):
  """LayerNorm(dropout(dense(x)) + residual): BERT's `*.output` blocks. x (B, L, H, Dh) with in_ndim 2, or (B, L, F)."""
  cfg: BertConfig
  axes: tuple[str | None, ...] = ("heads", "kv", "embed")
  in_ndim: int = 2
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, residual: jax.Array, deterministic: bool = True) -> jax.Array:
    c, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = layers.Dense(c.hidden_size, axes=self.axes, in_ndim=self.in_ndim, kernel_init=_INIT, name="dense", **kw)(x)
    y = nn.Dropout(c.hidden_dropout)(y, deterministic=deterministic)
    return layers.constrain(layers.LayerNorm(c.layer_norm_eps, name="LayerNorm", **kw)(y + residual))


class BertAttention(nn.Module):
  """`self` (query/key/value) + `output` (dense, dropout, residual, LayerNorm); cross-attention when `kv` is given.

  x (B, L, D), kv (B, S, Dkv) or None, mask bool (B, 1, 1, S) or None -> (B, L, D).
  """
  cfg: BertConfig
  attn_impl: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, kv: jax.Array | None, mask: jax.Array | None,
               deterministic: bool = True) -> jax.Array:
    c, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    ctx = layers.QKVAttention(c.num_heads, c.hidden_size, c.attention_dropout, kernel_init=_INIT,
                              attn_impl=self.attn_impl, name="self", **kw)(x, kv, mask, deterministic)
    return DenseResidualNorm(c, name="output", **kw)(ctx, x, deterministic)


class BertLayer(nn.Module):
  """Post-LN layer: self-attention [-> cross-attention to `vision` when `cross`] -> GELU feed-forward.

  x (B, L, D), mask bool (B, 1, 1, L), vision (B, Nv, encoder_width), vision_mask bool (B, 1, 1, Nv) or None.
  """
  cfg: BertConfig
  cross: bool = False
  attn_impl: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None, vision: jax.Array | None = None,
               vision_mask: jax.Array | None = None, deterministic: bool = True) -> jax.Array:
    c, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = BertAttention(c, self.attn_impl, name="attention", **kw)(x, None, mask, deterministic)
    if self.cross:
      if vision is None:
        raise ValueError("a fusion layer needs vision tokens")
      x = BertAttention(c, self.attn_impl, name="crossattention", **kw)(x, vision, vision_mask, deterministic)
    h = _Intermediate(c, name="intermediate", **kw)(x)
    return DenseResidualNorm(c, axes=("mlp", "embed"), in_ndim=1, name="output", **kw)(h, x, deterministic)


class _Intermediate(nn.Module):
  """dense (D -> intermediate) + exact GELU."""
  cfg: BertConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = layers.Dense(self.cfg.intermediate_size, axes=("embed", "mlp"), kernel_init=_INIT, name="dense",
                     dtype=self.dtype, param_dtype=self.param_dtype)(x)
    return layers.constrain(layers.exact_gelu(h), _MLP_ACT)


class BertEncoder(nn.Module):
  """`layer_i` for i < num_layers; `text` runs the layers below fusion_layer, `fusion` the rest."""
  cfg: BertConfig
  attn_impl: str | None = None
  remat_policy: str = "none"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    c = self.cfg
    if not 0 <= c.fusion_layer <= c.num_layers:
      raise ValueError(f"fusion_layer {c.fusion_layer} outside [0, num_layers={c.num_layers}]")
    layer = BertLayer
    if self.remat_policy != "none":  # the official stage 2 checkpoints BERT's activations too
      layer = nn.remat(BertLayer, policy=REMAT_POLICIES[self.remat_policy], static_argnums=(5,))
    self.layer = [layer(c, i >= c.fusion_layer, self.attn_impl, self.dtype, self.param_dtype)
                  for i in range(c.num_layers)]

  def text(self, x: jax.Array, mask: jax.Array | None, deterministic: bool = True) -> jax.Array:
    for lyr in self.layer[: self.cfg.fusion_layer]:
      x = lyr(x, mask, None, None, deterministic)
    return x

  def fusion(self, x: jax.Array, mask: jax.Array | None, vision: jax.Array, vision_mask: jax.Array | None,
             deterministic: bool = True) -> jax.Array:
    for lyr in self.layer[self.cfg.fusion_layer:]:
      x = lyr(x, mask, vision, vision_mask, deterministic)
    return x


class BertModel(nn.Module):
  """embeddings + encoder (no pooler)."""
  cfg: BertConfig
  attn_impl: str | None = None
  remat_policy: str = "none"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.embeddings = BertEmbeddings(self.cfg, **kw)
    self.encoder = BertEncoder(self.cfg, self.attn_impl, self.remat_policy, **kw)

  def text(self, ids: jax.Array, mask: jax.Array, deterministic: bool = True) -> jax.Array:
    return self.encoder.text(self.embeddings(ids, deterministic), _key_mask(mask), deterministic)

  def fusion(self, hidden: jax.Array, mask: jax.Array, vision: jax.Array, vision_mask: jax.Array | None = None,
             deterministic: bool = True) -> jax.Array:
    return self.encoder.fusion(hidden.astype(self.dtype), _key_mask(mask), layers.constrain(vision.astype(self.dtype)),
                               _key_mask(vision_mask), deterministic)

  def attend(self, x: jax.Array) -> jax.Array:
    """(..., D) -> (..., vocab) fp32 against the word embeddings (the tied MLM decoder)."""
    return self.embeddings.word_embeddings.attend(x)


class BertLMPredictionHead(nn.Module):
  """transform (dense, exact GELU, LayerNorm) -> tied decoder (`decode`) + `bias` (vocab,)."""
  cfg: BertConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, decode: Callable[[jax.Array], jax.Array]) -> jax.Array:
    c, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    bias = layers.param_with_axes(self, "bias", nn.initializers.zeros, (c.vocab_size,), ("vocab",),
                                  self.param_dtype)
    x = _Transform(c, name="transform", **kw)(x)
    return decode(x) + bias.astype(jnp.float32)


class _Transform(nn.Module):
  """`transform`: dense (D -> D), exact GELU, LayerNorm."""
  cfg: BertConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = layers.Dense(c.hidden_size, axes=("embed", None), kernel_init=_INIT, name="dense", **kw)(x)
    return layers.LayerNorm(c.layer_norm_eps, name="LayerNorm", **kw)(layers.exact_gelu(x))


class _MLMHead(nn.Module):
  """`cls`: holds `predictions` (the torch BertOnlyMLMHead)."""
  cfg: BertConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, decode: Callable[[jax.Array], jax.Array]) -> jax.Array:
    return BertLMPredictionHead(self.cfg, self.dtype, self.param_dtype, name="predictions")(x, decode)


class BertForMaskedLM(nn.Module):
  """BERT text encoder with fusion layers and the MLM head (the official `text_encoder`).

  text(ids (B, L) int, mask (B, L) {0,1}) -> (B, L, D) after the text-only layers;
  fusion(hidden (B, L, D), mask, vision (B, Nv, encoder_width), vision_mask (B, Nv) {0,1} or None) -> (B, L, D);
  mlm_logits(hidden (B, L, D)) -> (B, L, vocab) fp32; __call__ = mlm_logits(fusion(text(...))) (for init).
  Dropout (hidden and attention probabilities) draws from the 'dropout' rng when not deterministic.
  """
  cfg: BertConfig
  dtype: Dtype = jnp.float32  # compute dtype; params fp32 (param_dtype); LayerNorm and softmax stats in fp32
  param_dtype: Dtype = jnp.float32
  attn_impl: str | None = None  # see layers.attention_impl
  remat_policy: str = "none"  # see vit.REMAT_POLICIES

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.bert = BertModel(self.cfg, self.attn_impl, self.remat_policy, **kw)
    self.cls = _MLMHead(self.cfg, **kw)

  def text(self, ids: jax.Array, mask: jax.Array, deterministic: bool = True) -> jax.Array:
    return self.bert.text(ids, mask, deterministic)

  def fusion(self, hidden: jax.Array, mask: jax.Array, vision: jax.Array, vision_mask: jax.Array | None = None,
             deterministic: bool = True) -> jax.Array:
    return self.bert.fusion(hidden, mask, vision, vision_mask, deterministic)

  def mlm_logits(self, hidden: jax.Array) -> jax.Array:
    return self.cls(hidden, self.bert.attend)

  def __call__(self, ids: jax.Array, mask: jax.Array, vision: jax.Array, deterministic: bool = True) -> jax.Array:
    hidden = self.text(ids, mask, deterministic)
    return self.mlm_logits(self.fusion(hidden, mask, vision, None, deterministic))
