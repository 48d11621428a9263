"""CLIP (vision + text towers) in the OpenAI state_dict layout, and its use as the frame-wise UMT teacher.

Flax tree [torch name]: visual/{conv1 [visual.conv1], class_embedding, positional_embedding, ln_pre,
transformer/resblocks_i/{attn (in_proj_weight, in_proj_bias, out_proj), ln_1, mlp (c_fc, c_proj), ln_2},
ln_post, proj}, token_embedding, positional_embedding, transformer/..., ln_final, text_projection, logit_scale.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from umt_jax.models import layers
from umt_jax.models.posemb import resize_axis
from umt_jax.models.vit import patchify

Dtype = Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  embed_dim: int = 512
  image_size: int = 224
  patch_size: int = 16
  vision_width: int = 768
  vision_layers: int = 12
  vision_heads: int = 12
  context_length: int = 77
  vocab_size: int = 49408
  text_width: int = 512
  text_layers: int = 12
  text_heads: int = 8
  act: str = "quick_gelu"  # or 'gelu' (exact)
  norm_eps: float = 1e-5

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size


CLIP_PRESETS: dict[str, CLIPConfig] = {
    "ViT-B/16": CLIPConfig(),
    "ViT-L/14": CLIPConfig(embed_dim=768, patch_size=14, vision_width=1024, vision_layers=24,
                           vision_heads=16, text_width=768, text_heads=12),
    "tiny": CLIPConfig(embed_dim=32, image_size=32, patch_size=8, vision_width=64, vision_layers=3,
                       vision_heads=4, context_length=16, vocab_size=100, text_width=48, text_layers=2,
                       text_heads=4),
}

def teacher_arch(name: str, image_size: int = 0) -> CLIPConfig:
  """A CLIP_PRESETS architecture, optionally at another input size (UMT-L's teacher: ViT-L/14 at 196²)."""
  if name not in CLIP_PRESETS:
    raise ValueError(f"config.teacher.arch={name!r}; expected one of {sorted(CLIP_PRESETS)}")
  return dataclasses.replace(CLIP_PRESETS[name], **({"image_size": image_size} if image_size else {}))


ACTIVATIONS = {"quick_gelu": layers.quick_gelu, "gelu": layers.exact_gelu}


class ResidualAttentionBlock(nn.Module):
  """x + attn(ln_1 x); x + mlp(ln_2 x). Optionally also returns query-0 attention (B, N) averaged over heads."""
  num_heads: int
  act: str = "quick_gelu"
  norm_eps: float = 1e-5
  causal: bool = False
  return_cls_attn: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    out = layers.Attention(self.num_heads, layout="openai", causal=self.causal, return_cls_attn=self.return_cls_attn,
                           name="attn", **kw)(layers.LayerNorm(self.norm_eps, name="ln_1", **kw)(x))
    y, attn = out if self.return_cls_attn else (out, None)
    x = x + y
    x = x + layers.Mlp(4 * x.shape[-1], act=ACTIVATIONS[self.act], names=("c_fc", "c_proj"), name="mlp", **kw)(
        layers.LayerNorm(self.norm_eps, name="ln_2", **kw)(x))
    return layers.constrain(x), attn


class Transformer(nn.Module):
  """Stack of residual blocks; returns (x, outputs of `return_layers` stacked (K, ...), last block's CLS attn)."""
  layers_: int
  num_heads: int
  act: str = "quick_gelu"
  norm_eps: float = 1e-5
  causal: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, return_layers: Sequence[int] = (), return_cls_attn: bool = False):
    feats, attn = {}, None
    for i in range(self.layers_):
      want_attn = return_cls_attn and i == self.layers_ - 1
      x, a = ResidualAttentionBlock(self.num_heads, self.act, self.norm_eps, self.causal, want_attn,
                                    self.dtype, self.param_dtype, name=f"resblocks_{i}")(x)
      attn = a if want_attn else attn
      feats[i] = x
    stacked = jnp.stack([feats[i] for i in return_layers]) if return_layers else None
    return x, stacked, attn


class CLIPVision(nn.Module):
  """OpenAI CLIP image tower.

  __call__(images (B, H, W, 3) normalised, return_layers, return_cls_attn) ->
    embed (B, E) = ln_post(CLS) @ proj,
    tokens (K, B, N, E) = ln_post(patch tokens of `return_layers`) @ proj (not normalised), or None,
    cls_attn (B, N): last block's head-averaged CLS→patch attention (not renormalised), or None.
  """
  cfg: CLIPConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, return_layers: Sequence[int] = (), return_cls_attn: bool = False):
    c, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    w = c.vision_width
    if images.shape[1:3] != (c.image_size, c.image_size):
      raise ValueError(f"CLIP vision tower built for {c.image_size}px got images of shape {images.shape}; "
                       "resize the input or import the weights at that resolution (--image_size)")
    x = patchify(images[:, None], 1, c.patch_size)[:, :, 0]  # (B, N, p, p, 3)
    x = layers.Dense(w, axes=(None, None, None, "embed"), in_ndim=3, use_bias=False, name="conv1", **kw)(x)
    scale = w ** -0.5
    cls = layers.param_with_axes(self, "class_embedding", nn.initializers.normal(scale), (w,), ("embed",),
                                 self.param_dtype)
    pos = layers.param_with_axes(self, "positional_embedding", nn.initializers.normal(scale),
                                 (c.grid ** 2 + 1, w), (None, "embed"), self.param_dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (x.shape[0], 1, w)), x], axis=1)
    x = layers.LayerNorm(c.norm_eps, name="ln_pre", **kw)(x + pos.astype(self.dtype))
    x, stacked, attn = Transformer(c.vision_layers, c.vision_heads, c.act, c.norm_eps, name="transformer", **kw)(
        x, return_layers, return_cls_attn)
    ln_post = layers.LayerNorm(c.norm_eps, name="ln_post", **kw)
    proj = layers.param_with_axes(self, "proj", nn.initializers.normal(scale), (w, c.embed_dim),
                                  ("embed", "clip_embed"), self.param_dtype).astype(self.dtype)
    embed = ln_post(x[:, 0]) @ proj
    tokens = None if stacked is None else ln_post(stacked[:, :, 1:]) @ proj
    return embed, tokens, (None if attn is None else attn[:, 1:])


class CLIP(nn.Module):
  """Full CLIP. encode_image(images) -> (B, E); encode_text(ids (B, L) int, EOT = argmax id) -> (B, E);
  __call__(images, ids) -> (image_embed, text_embed, logit_scale) with embeddings L2-normalised."""
  cfg: CLIPConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    c, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.visual = CLIPVision(c, **kw)
    self.token_embedding = nn.Embed(c.vocab_size, c.text_width, param_dtype=self.param_dtype,
                                    embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                                                ("vocab", "embed")))
    self.positional_embedding = layers.param_with_axes(self, "positional_embedding", nn.initializers.normal(0.01),
                                                       (c.context_length, c.text_width), (None, "embed"),
                                                       self.param_dtype)
    self.transformer = Transformer(c.text_layers, c.text_heads, c.act, c.norm_eps, causal=True, **kw)
    self.ln_final = layers.LayerNorm(c.norm_eps, **kw)
    self.text_projection = layers.param_with_axes(self, "text_projection", nn.initializers.normal(c.text_width ** -0.5),
                                                  (c.text_width, c.embed_dim), ("embed", "clip_embed"),
                                                  self.param_dtype)
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(np.log(1 / 0.07)), (), self.param_dtype)

  def encode_image(self, images: jax.Array) -> jax.Array:
    return self.visual(images)[0]

  def encode_text(self, ids: jax.Array) -> jax.Array:
    x = self.token_embedding(ids).astype(self.dtype) + self.positional_embedding[: ids.shape[1]].astype(self.dtype)
    x, _, _ = self.transformer(x)
    x = self.ln_final(x)
    eot = x[jnp.arange(ids.shape[0]), jnp.argmax(ids, axis=-1)]
    return eot @ self.text_projection.astype(self.dtype)

  def __call__(self, images: jax.Array, ids: jax.Array):
    img = l2n(self.encode_image(images))
    txt = l2n(self.encode_text(ids))
    return img, txt, self.logit_scale


def l2n(x: jax.Array) -> jax.Array:
  x = x.astype(jnp.float32)
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def resize_matrix(old: int, new: int) -> np.ndarray:
  """(new, old) matrix equal to torch bicubic interpolation (align_corners=False) along one axis."""
  return resize_axis(np.eye(old, dtype=np.float32), new, 0, "cubic")


class CLIPTeacher(nn.Module):
  """The frozen, frame-wise UMT teacher (the `visual` tower of CLIP).

  __call__(video (B, T, H, W, 3), normalised exactly as the student's input) ->
    feats (K, B, T·N, E): last K blocks' patch tokens → ln_post → proj → L2 norm, blocks ascending;
    cls_attn (B, T, N): the last block's head-averaged CLS→patch attention.
  Frames are resized bicubically to `cfg.image_size` first when they differ (UMT-L: 224 → 196).
  """
  cfg: CLIPConfig
  num_layers: int = 6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, video: jax.Array):
    b, t, h, w, ch = video.shape
    s = self.cfg.image_size
    frames = video.reshape(b * t, h, w, ch)
    if (h, w) != (s, s):
      frames = jnp.einsum("yh,xw,bhwc->byxc", resize_matrix(h, s), resize_matrix(w, s), frames.astype(jnp.float32))
    L = self.cfg.vision_layers
    _, tokens, attn = CLIPVision(self.cfg, self.dtype, self.param_dtype, name="visual")(
        frames.astype(self.dtype), tuple(range(L - self.num_layers, L)), True)
    n = tokens.shape[2]
    feats = l2n(tokens).reshape(self.num_layers, b, t * n, -1)
    return feats, attn.reshape(b, t, n)
