"""MSTA's adapted video-language model: a frozen CLIP (umt_jax/models/clip.py, both towers) with the adapters of
umt_jax/models/adapters.py in blocks k..L of both towers.

The towers take one `adapter` callable per block (clip.Transformer's hook, MMA's `ModifiedResidualAttentionBlock`):
block j adds, after attention and MLP, grad_scale(λ · A_j(grad_scale(z, λ)), 1/λ) with z = its own (frozen)
LN1 of the block input. Scaling z's cotangent equals MMA's scaling of x's before LN1 (the vjp is linear; LN1's
params are frozen). The frozen CLIP params and the adapter params are separate trees, so the train step
differentiates the adapters only and takes the towers as a frozen argument.

Backbones (`msta.backbone`): 'clip_frames' (a `CLIP`) runs the image tower on every frame (tokens (B·T, 1+N, C);
the temporal adapter convolves each token position over the T frames) and averages the T frame embeddings
(ViFi-CLIP's video embedding), logits scaled by exp(logit_scale); 'viclip' (a `ViCLIP`, MSTA's backbone) attends
jointly over (B, 1+N·T, C) tokens (adapter layout 'joint'), logits scaled by 1/temp.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from umt_jax.models import clip
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

  def _init_clip(self, rng: jax.Array) -> Any:
    c = self.cfg
    frames = (1, self.num_frames) if self.layout == "joint" else (1,)
    return self.clip.init(rng, jnp.zeros(frames + (c.image_size,) * 2 + (3,)),
                          jnp.zeros((1, c.context_length), jnp.int32))["params"]

  def abstract_clip(self) -> Any:
    """The frozen CLIP's boxed params as ShapeDtypeStructs (for shardings and shape checks)."""
    return jax.eval_shape(self._init_clip, jax.random.key(0))

  @property
  def video_tower(self) -> str:
    """The key of the video tower's params in the CLIP tree ('visual' / ViCLIP's 'vision_encoder')."""
    return "vision_encoder" if self.layout == "joint" else "visual"

  def init_video_tower(self, rng: jax.Array) -> Any:
    """Boxed random params of the video tower alone (full fine-tuning, the baseline MSTA is compared with)."""
    return self._init_clip(rng)[self.video_tower]

  def _hooks(self, adapter_params: Any | None, tower: str) -> list | None:
    """One clip.Adapter per block of `tower` ('video' | 'text'; None where the block is not adapted), or None."""
    if adapter_params is None:
      return None
    bound, lam = self.adapters.bind({"params": adapter_params}), self.adapter_cfg.scale
    depth = self.cfg.vision_layers if tower == "video" else self.cfg.text_layers

    def hook(block: int) -> clip.Adapter:
      def branch(z: jax.Array) -> jax.Array:
        z = grad_scale(z, lam)
        a = bound.video(block, z, self.num_frames, self.layout) if tower == "video" else bound.text(block, z)
        return grad_scale(lam * a, 1.0 / lam)
      return branch

    return [hook(j) if j in self.blocks else None for j in range(depth)]

  def video_embed(self, clip_params: Any, adapter_params: Any | None, video: jax.Array) -> jax.Array:
    b, t = video.shape[:2]
    if t != self.num_frames:
      raise ValueError(f"MSTAModel built for {self.num_frames} frames got a video of shape {video.shape}")
    hooks = self._hooks(adapter_params, "video")
    if self.layout == "joint":
      return clip.l2n(self.clip.apply({"params": clip_params}, video.astype(self.dtype), adapters=hooks,
                                      method="encode_video"))
    frames = video.reshape((b * t,) + video.shape[2:]).astype(self.dtype)
    emb = self.clip.apply({"params": clip_params}, frames, adapters=hooks, method="encode_image")
    return clip.l2n(emb.reshape(b, t, -1).astype(jnp.float32).mean(axis=1))

  def text_embed(self, clip_params: Any, adapter_params: Any | None, ids: jax.Array) -> jax.Array:
    return clip.l2n(self.clip.apply({"params": clip_params}, ids, adapters=self._hooks(adapter_params, "text"),
                                    method="encode_text"))

  def logits(self, clip_params: Any, video_emb: jax.Array, text_emb: jax.Array) -> jax.Array:
    """Cosine similarities (B, C) times the (frozen) logit scale: CLIP's exp(logit_scale), ViCLIP's 1 / temp."""
    scale = (1.0 / clip_params["temp"] if self.layout == "joint" else jnp.exp(clip_params["logit_scale"]))
    return scale.astype(jnp.float32) * video_emb @ text_emb.T
