"""MSTA's adapted video-language model: a frozen CLIP (umt_jax/models/clip.py, both towers) with the adapters of
umt_jax/models/adapters.py in blocks k..L of both towers.

clip.py is not changed: its towers run as they are, and `nn.intercept_methods` adds the adapter branch to the
output of every adapted `ResidualAttentionBlock` (MMA's `ModifiedResidualAttentionBlock`):
  x_out = block(x) + grad_scale(λ · A_j(LN1(grad_scale(x, λ))), 1/λ),
with LN1 = that block's own (frozen) `ln_1`. The frozen CLIP params and the adapter params are separate trees, so
the train step differentiates the adapters only and takes the towers as a frozen argument.

Backbones (`msta.backbone`): 'clip_frames' (a `CLIP`) runs the image tower on every frame (tokens (B·T, 1+N, C);
the temporal adapter convolves each token position over the T frames) and averages the T frame embeddings
(ViFi-CLIP's video embedding), logits scaled by exp(logit_scale); 'viclip' (a `ViCLIP`, MSTA's backbone) attends
jointly over (B, 1+N·T, C) tokens (adapter layout 'joint'), logits scaled by 1/temp. clip.py's blocks also take
an `adapter` callable now; the interceptor is kept because CLIP's image tower does not pass one through.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from umt_jax.models import clip, layers
from umt_jax.models.adapters import AdapterConfig, Adapters, grad_scale

BACKBONES = ("clip_frames", "viclip")


class MSTAModel:
  """A frozen CLIP + trainable adapters. All methods are pure functions of (clip_params, adapter_params, ...).

  video_embed(clip_params, adapters, video (B, T, S, S, 3) normalised) -> (B, E) L2-normalised;
  text_embed(clip_params, adapters | None, ids (N, L) int) -> (N, E) L2-normalised (None: the frozen tower).
  """

  def __init__(self, cfg: clip.CLIPConfig, adapter_cfg: AdapterConfig, num_frames: int,
               backbone: str = "clip_frames", dtype: Any = jnp.float32):
    if backbone not in BACKBONES:
      raise ValueError(f"msta.backbone={backbone!r}; expected one of {BACKBONES}")
    viclip = backbone == "viclip"
    if viclip != isinstance(cfg, clip.ViCLIPConfig):
      raise ValueError(f"msta.backbone={backbone!r} needs a {'ViCLIP' if viclip else 'CLIP'} params file, got a "
                       f"{type(cfg).__name__}")
    if viclip and num_frames != cfg.num_frames:
      raise ValueError(f"the ViCLIP takes {cfg.num_frames} frames (its temporal table); data.num_frames={num_frames}")
    self.cfg, self.adapter_cfg, self.num_frames, self.dtype = cfg, adapter_cfg, num_frames, dtype
    self.backbone, self.layout = backbone, "joint" if viclip else "frames"
    self.clip = clip.ViCLIP(cfg, dtype=dtype) if viclip else clip.CLIP(cfg, dtype=dtype)
    # One shared layer per block index needs that block in both towers.
    self.adapters = Adapters(cfg.vision_width, cfg.text_width, min(cfg.vision_layers, cfg.text_layers),
                             adapter_cfg, dtype=dtype)
    self.blocks = frozenset(adapter_cfg.blocks(min(cfg.vision_layers, cfg.text_layers)))

  def init(self, rng: jax.Array) -> Any:
    """Boxed (logically named) adapter params."""
    c = self.cfg
    video = jnp.zeros((self.num_frames, c.grid ** 2 + 1, c.vision_width), self.dtype)
    text = jnp.zeros((1, c.context_length, c.text_width), self.dtype)
    return self.adapters.init(rng, video, text, self.num_frames)["params"]

  def abstract_clip(self) -> Any:
    """The frozen CLIP's boxed params as ShapeDtypeStructs (for shardings and shape checks)."""
    c = self.cfg
    frames = (1, self.num_frames) if self.layout == "joint" else (1,)
    return jax.eval_shape(lambda: self.clip.init(jax.random.key(0), jnp.zeros(frames + (c.image_size,) * 2 + (3,)),
                                                 jnp.zeros((1, c.context_length), jnp.int32)))["params"]

  def _interceptor(self, adapter_params: Any):
    bound = self.adapters.bind({"params": adapter_params})
    scale = self.adapter_cfg.scale

    def intercept(next_fun, args, kwargs, context):
      mod = context.module
      if context.method_name != "__call__" or not isinstance(mod, clip.ResidualAttentionBlock):
        return next_fun(*args, **kwargs)
      block = int(mod.name.rsplit("_", 1)[1])
      if block not in self.blocks:
        return next_fun(*args, **kwargs)
      x = args[0]
      y, attn = next_fun(*args, **kwargs)
      ln_1 = layers.LayerNorm(mod.norm_eps, dtype=mod.dtype, param_dtype=mod.param_dtype)
      z = ln_1.apply({"params": mod.variables["params"]["ln_1"]}, grad_scale(x, scale))
      video = mod.path[0] in ("visual", "vision_encoder")
      a = bound.video(block, z, self.num_frames, self.layout) if video else bound.text(block, z)
      return y + grad_scale(scale * a, 1.0 / scale).astype(y.dtype), attn

    return intercept

  def _run(self, clip_params: Any, adapter_params: Any | None, method: str, x: jax.Array) -> jax.Array:
    apply = lambda: self.clip.apply({"params": clip_params}, x, method=method)
    if adapter_params is None:
      return apply()
    with nn.intercept_methods(self._interceptor(adapter_params)):
      return apply()

  def video_embed(self, clip_params: Any, adapter_params: Any | None, video: jax.Array) -> jax.Array:
    b, t = video.shape[:2]
    if t != self.num_frames:
      raise ValueError(f"MSTAModel built for {self.num_frames} frames got a video of shape {video.shape}")
    if self.layout == "joint":
      return clip.l2n(self._run(clip_params, adapter_params, "encode_video", video.astype(self.dtype)))
    frames = video.reshape((b * t,) + video.shape[2:]).astype(self.dtype)
    emb = self._run(clip_params, adapter_params, "encode_image", frames)
    return clip.l2n(emb.reshape(b, t, -1).astype(jnp.float32).mean(axis=1))

  def text_embed(self, clip_params: Any, adapter_params: Any | None, ids: jax.Array) -> jax.Array:
    return clip.l2n(self._run(clip_params, adapter_params, "encode_text", ids))

  def logits(self, clip_params: Any, video_emb: jax.Array, text_emb: jax.Array) -> jax.Array:
    """Cosine similarities (B, C) times the (frozen) logit scale: CLIP's exp(logit_scale), ViCLIP's 1 / temp."""
    scale = (1.0 / clip_params["temp"] if self.layout == "joint" else jnp.exp(clip_params["logit_scale"]))
    return scale.astype(jnp.float32) * video_emb @ text_emb.T
