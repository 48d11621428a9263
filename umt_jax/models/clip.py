"""CLIP (vision + text towers) in the OpenAI state_dict layout, its use as the frame-wise UMT teacher, and ViCLIP
(InternVid's video CLIP, MSTA's backbone: CLIP's towers with joint space-time attention over all frames).

Flax tree [torch name]: visual/{conv1 [visual.conv1], class_embedding, positional_embedding, ln_pre,
transformer/resblocks_i/{attn (in_proj_weight, in_proj_bias, out_proj), ln_1, mlp (c_fc, c_proj), ln_2},
ln_post, proj}, token_embedding, positional_embedding, transformer/..., ln_final, text_projection, logit_scale.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from umt_jax import masking
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


Adapter = Callable[[jax.Array], jax.Array]


class ResidualAttentionBlock(nn.Module):
  """x + DropPath(attn(z)); x + DropPath(mlp(ln_2 x)) [+ adapter(z)], z = ln_1(x).

  __call__(x (B, N, D), deterministic, adapter, keep) -> (x (B, N, D), query-0 attention (B, N) averaged over
  heads or None, rows or None). `adapter` (MMA / MSTA): z (B, N, D) -> (B, N, D), added after attention and
  MLP. `keep` (with return_cls_attn): that attention -> rows (B, M); the block then runs on those rows only
  and returns x (B, M, D) (layers.Attention's `keep`).
  """
  num_heads: int
  act: str = "quick_gelu"
  norm_eps: float = 1e-5
  causal: bool = False
  return_cls_attn: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  drop_path: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True, adapter: Adapter | None = None,
               keep: Callable[[jax.Array], jax.Array] | None = None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    rng = lambda: None if deterministic or self.drop_path == 0 else self.make_rng("dropout")
    z = layers.LayerNorm(self.norm_eps, name="ln_1", **kw)(x)
    out = layers.Attention(self.num_heads, layout="openai", causal=self.causal,
                           return_attn="cls" if self.return_cls_attn else None, name="attn", **kw)(z, keep=keep)
    rows = None
    if keep is not None:
      y, attn, rows = out
      x, z = layers.gather_tokens(x, rows), layers.gather_tokens(z, rows)
    else:
      y, attn = out if self.return_cls_attn else (out, None)
    x = x + layers.drop_path(y, self.drop_path, rng(), deterministic)
    y = layers.Mlp(4 * x.shape[-1], act=ACTIVATIONS[self.act], names=("c_fc", "c_proj"), name="mlp", **kw)(
        layers.LayerNorm(self.norm_eps, name="ln_2", **kw)(x))
    x = x + layers.drop_path(y, self.drop_path, rng(), deterministic)
    if adapter is not None:
      x = x + adapter(z).astype(x.dtype)
    return layers.constrain(x), attn, rows


class Transformer(nn.Module):
  """Stack of residual blocks -> (x, outputs of `return_layers` stacked (K, ...), last block's CLS attn, rows).

  Stochastic depth linspace(0, drop_path_rate, layers) (ViCLIP's). `adapters`: one entry per block (None = none),
  each an `Adapter` the block adds (see ResidualAttentionBlock); entry i is MMA's layer_index i + 1.
  `keep` (with return_cls_attn): the last block's CLS attention -> rows (B, M); x and every returned layer are
  then those rows only, and rows is returned (else None).
  """
  layers_: int
  num_heads: int
  act: str = "quick_gelu"
  norm_eps: float = 1e-5
  causal: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, return_layers: Sequence[int] = (), return_cls_attn: bool = False,
               deterministic: bool = True, adapters: Sequence[Adapter | None] | None = None,
               keep: Callable[[jax.Array], jax.Array] | None = None):
    if adapters is not None and len(adapters) != self.layers_:
      raise ValueError(f"adapters has {len(adapters)} entries; expected one per block ({self.layers_}, None = none)")
    if keep is not None and not return_cls_attn:
      raise ValueError("keep selects rows by the last block's CLS attention: it needs return_cls_attn=True")
    feats, attn, rows = {}, None, None
    rates = np.linspace(0, self.drop_path_rate, self.layers_)
    for i in range(self.layers_):
      last = return_cls_attn and i == self.layers_ - 1
      x, a, rows = ResidualAttentionBlock(self.num_heads, self.act, self.norm_eps, self.causal, last,
                                          self.dtype, self.param_dtype, float(rates[i]), name=f"resblocks_{i}")(
                                              x, deterministic, None if adapters is None else adapters[i],
                                              keep if last else None)
      attn = a if last else attn
      feats[i] = x
    at_rows = lambda i: feats[i] if rows is None or i == self.layers_ - 1 else layers.gather_tokens(feats[i], rows)
    stacked = jnp.stack([at_rows(i) for i in return_layers]) if return_layers else None
    return x, stacked, attn, rows


class CLIPVision(nn.Module):
  """OpenAI CLIP image tower.

  __call__(images (B, H, W, 3) normalised, return_layers, return_cls_attn, adapters per block or None, keep) ->
    embed (B, E) = ln_post(CLS) @ proj,
    tokens (K, B, N, E) = ln_post(patch tokens of `return_layers`) @ proj (not normalised), or None,
    cls_attn (B, N): last block's head-averaged CLS→patch attention (not renormalised), or None,
    patches (B, M) or None.
  `keep` (with return_cls_attn): cls_attn -> patches (B, M) int in [0, N); the last block and the projection
  then run on the CLS token and those patches only, and tokens is (K, B, M, E) (the UMT teacher, whose masked
  tokens nobody reads).
  """
  cfg: CLIPConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, return_layers: Sequence[int] = (), return_cls_attn: bool = False,
               adapters: Sequence[Adapter | None] | None = None, keep: Callable[[jax.Array], jax.Array] | None = None):
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
    rows = None if keep is None else (
        lambda a: jnp.concatenate([jnp.zeros((a.shape[0], 1), jnp.int32), 1 + keep(a[:, 1:]).astype(jnp.int32)], 1))
    x, stacked, attn, rows = Transformer(c.vision_layers, c.vision_heads, c.act, c.norm_eps, name="transformer",
                                         **kw)(x, return_layers, return_cls_attn, adapters=adapters, keep=rows)
    ln_post = layers.LayerNorm(c.norm_eps, name="ln_post", **kw)
    proj = layers.param_with_axes(self, "proj", nn.initializers.normal(scale), (w, c.embed_dim),
                                  ("embed", "clip_embed"), self.param_dtype).astype(self.dtype)
    embed = ln_post(x[:, 0]) @ proj
    tokens = None if stacked is None else ln_post(stacked[:, :, 1:]) @ proj
    return embed, tokens, (None if attn is None else attn[:, 1:]), (None if rows is None else rows[:, 1:] - 1)


class CLIPText(nn.Module):
  """CLIP's text tower, its params at the module's top level (OpenAI names; ViCLIP's `text_encoder`).

  encode_text(ids (B, L) int, EOT = argmax id, adapters per block or None) -> (B, E) = ln_final(EOT) @ proj.
  """
  cfg: CLIPConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    c, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
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

  def encode_text(self, ids: jax.Array, adapters: Sequence[Adapter | None] | None = None) -> jax.Array:
    x = self.token_embedding(ids).astype(self.dtype) + self.positional_embedding[: ids.shape[1]].astype(self.dtype)
    x, *_ = self.transformer(x, adapters=adapters)
    x = self.ln_final(x)
    eot = x[jnp.arange(ids.shape[0]), jnp.argmax(ids, axis=-1)]
    return eot @ self.text_projection.astype(self.dtype)

  def __call__(self, ids: jax.Array, adapters: Sequence[Adapter | None] | None = None) -> jax.Array:
    return self.encode_text(ids, adapters)


class CLIP(CLIPText):
  """Full CLIP: the text tower's params at the top level, `visual`, `logit_scale`. encode_image(images, adapters)
  -> (B, E); encode_text(ids, adapters) -> (B, E); __call__(images, ids) -> (image_embed, text_embed,
  logit_scale), embeddings L2-normalised."""

  def setup(self):
    super().setup()
    self.visual = CLIPVision(self.cfg, dtype=self.dtype, param_dtype=self.param_dtype)
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(np.log(1 / 0.07)), (), self.param_dtype)

  def encode_image(self, images: jax.Array, adapters: Sequence[Adapter | None] | None = None) -> jax.Array:
    return self.visual(images, adapters=adapters)[0]

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

  __call__(video (B, T, H, W, 3), normalised exactly as the student's input, select) ->
    feats (K, B, T·N, E): last K blocks' patch tokens → ln_post → proj → L2 norm, blocks ascending;
    cls_attn (B, T, N): the last block's head-averaged CLS→patch attention;
    visible (B, T·Nv) or None.
  `select` (e.g. masking.semantic_frame_mask with its key and ratio): cls_attn -> (B, T, Nv) patches kept in
  each frame. The last block and the projection then run on those tokens only (UMT aligns nothing else), feats
  is (K, B, T·Nv, E) at them, and visible holds their token indices (masking.frame_tokens), ascending per frame.
  Frames are resized bicubically to `cfg.image_size` first when they differ (UMT-L: 224 → 196).
  """
  cfg: CLIPConfig
  num_layers: int = 6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, video: jax.Array, select: Callable[[jax.Array], jax.Array] | None = None):
    b, t, h, w, ch = video.shape
    s, n = self.cfg.image_size, self.cfg.grid ** 2
    frames = video.reshape(b * t, h, w, ch)
    if (h, w) != (s, s):
      frames = jnp.einsum("yh,xw,bhwc->byxc", resize_matrix(h, s), resize_matrix(w, s), frames.astype(jnp.float32))
    keep = None if select is None else lambda a: select(a.reshape(b, t, n)).reshape(b * t, -1)
    L = self.cfg.vision_layers
    _, tokens, attn, patches = CLIPVision(self.cfg, self.dtype, self.param_dtype, name="visual")(
        frames.astype(self.dtype), tuple(range(L - self.num_layers, L)), True, keep=keep)
    feats = l2n(tokens).reshape(self.num_layers, b, -1, tokens.shape[-1])
    visible = None if patches is None else masking.frame_tokens(patches.reshape(b, t, -1), n)
    return feats, attn.reshape(b, t, n), visible


# ----------------------------------------------------------------------------- ViCLIP (InternVid), MSTA's backbone
@dataclasses.dataclass(frozen=True)
class ViCLIPConfig(CLIPConfig):
  """CLIPConfig plus the video tower's frame count (the temporal table's length) and stochastic depth (ViCLIP
  pretrains with 0.1; 0 for evaluation and MSTA). Text context 32 (`max_txt_l`). conv1's time kernel is 1, as in
  every released model (the official forward cannot add its temporal table with another kernel)."""
  context_length: int = 32
  num_frames: int = 8
  drop_path_rate: float = 0.0


VICLIP_PRESETS: dict[str, ViCLIPConfig] = {
    "ViCLIP-B/16": ViCLIPConfig(),
    "ViCLIP-L/14": ViCLIPConfig(embed_dim=768, patch_size=14, vision_width=1024, vision_layers=24,
                                vision_heads=16, text_width=768, text_heads=12),
    "tiny": ViCLIPConfig(**{**dataclasses.asdict(CLIP_PRESETS["tiny"]), "num_frames": 4, "text_width": 64}),
}
VICLIP_TEMP = 0.01  # ViCLIP's `temp` init and clamp floor: logits = cos / temp, i.e. a logit scale of 100


class ViCLIPVision(nn.Module):
  """ViCLIP's video tower (`clip_joint_b16` / `_l14`): CLIP's image tower over all frames' patch tokens at once.

  __call__(video (B, T, H, W, 3), keep, deterministic, adapters) -> (B, E) = ln_post(CLS) @ proj. Frames are
  normalised with ImageNet's mean / std (IMAGENET_MEAN / _STD), as ViCLIP trains and evaluates ("vit" encoders).
  Patch tokens get the spatial table, then `temporal_positional_embedding[t]` (its mean over time when T = 1,
  as the official code does); CLS gets class_embedding + positional_embedding[0] only. Token order after CLS is
  the official (n, t): token 1 + n·T + t is patch n of frame t. `keep` (B, K) sorted
  indices into the N·T patch tokens (e.g. masking.random_mask: ViCLIP's pretraining token masking) drops the
  others. `adapters`: one per block (see Transformer). Params [torch: vision_encoder.*]: conv1 (1, p, p, 3, D)
  [Conv3d (D, 3, 1, p, p)], class_embedding, positional_embedding (1 + N, D), temporal_positional_embedding
  (1, T, D), ln_pre, transformer/resblocks_i, ln_post, proj (D, E).
  """
  cfg: ViCLIPConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, video: jax.Array, keep: jax.Array | None = None, deterministic: bool = True,
               adapters: Sequence[Adapter | None] | None = None) -> jax.Array:
    c, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, t, w, n = video.shape[0], video.shape[1], c.vision_width, c.grid ** 2
    if video.shape[2:4] != (c.image_size, c.image_size) or t not in (1, c.num_frames):
      raise ValueError(f"ViCLIP video tower built for {c.num_frames} frames (or 1) of {c.image_size}px got a "
                       f"video of shape {video.shape} (B, T, H, W, C); import with --num_frames / --image_size")
    x = patchify(video, 1, c.patch_size)  # (B, T·N, 1, p, p, 3), t-major
    x = layers.Dense(w, axes=(None, None, None, None, "embed"), in_ndim=4, use_bias=False, name="conv1", **kw)(x)
    scale = w ** -0.5
    cls = layers.param_with_axes(self, "class_embedding", nn.initializers.normal(scale), (w,), ("embed",),
                                 self.param_dtype)
    pos = layers.param_with_axes(self, "positional_embedding", nn.initializers.normal(scale), (n + 1, w),
                                 (None, "embed"), self.param_dtype).astype(self.dtype)
    temporal = layers.param_with_axes(self, "temporal_positional_embedding", nn.initializers.zeros,
                                      (1, c.num_frames, w), (None, None, "embed"), self.param_dtype)[0]
    temporal = (temporal if t > 1 else temporal.mean(0, keepdims=True)).astype(self.dtype)
    x = x.reshape(b, t, n, w) + pos[1:] + temporal[:, None]
    x = x.transpose(0, 2, 1, 3).reshape(b, n * t, w)
    if keep is not None:
      x = layers.gather_tokens(x, keep)
    cls = jnp.broadcast_to((cls.astype(self.dtype) + pos[0]), (b, 1, w))
    x = layers.LayerNorm(c.norm_eps, name="ln_pre", **kw)(jnp.concatenate([cls, x], axis=1))
    x, *_ = Transformer(c.vision_layers, c.vision_heads, c.act, c.norm_eps, drop_path_rate=c.drop_path_rate,
                        name="transformer", **kw)(x, deterministic=deterministic, adapters=adapters)
    proj = layers.param_with_axes(self, "proj", nn.initializers.normal(scale), (w, c.embed_dim),
                                  ("embed", "clip_embed"), self.param_dtype)
    return layers.LayerNorm(c.norm_eps, name="ln_post", **kw)(x[:, 0]) @ proj.astype(self.dtype)


class ViCLIP(nn.Module):
  """ViCLIP (InternVid): `vision_encoder` (ViCLIPVision), `text_encoder` (CLIPText), `temp` (scalar, 0.01).

  encode_video(video, keep, deterministic, adapters) -> (B, E); encode_text(ids, adapters) -> (B, E);
  __call__(video, ids) -> (video_embed, text_embed, temp), embeddings L2-normalised; logits = cos / temp.
  """
  cfg: ViCLIPConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.vision_encoder = ViCLIPVision(self.cfg, **kw)
    self.text_encoder = CLIPText(self.cfg, **kw)
    self.temp = layers.param_with_axes(self, "temp", nn.initializers.constant(VICLIP_TEMP), (), (),
                                       self.param_dtype)

  def encode_video(self, video: jax.Array, keep: jax.Array | None = None, deterministic: bool = True,
                   adapters: Sequence[Adapter | None] | None = None) -> jax.Array:
    return self.vision_encoder(video, keep, deterministic, adapters)

  def encode_text(self, ids: jax.Array, adapters: Sequence[Adapter | None] | None = None) -> jax.Array:
    return self.text_encoder(ids, adapters)

  def __call__(self, video: jax.Array, ids: jax.Array, deterministic: bool = True):
    return l2n(self.encode_video(video, deterministic=deterministic)), l2n(self.encode_text(ids)), self.temp
