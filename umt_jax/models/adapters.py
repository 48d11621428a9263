"""MSTA's multi-modal spatio-temporal adapters (MMA-style bottlenecks with a layer shared by both towers).

Per adapted block j (1-based, `start`..`end` inclusive, MMA's ADAPTER_START / ADAPTER_END), with z = LN1 of the
block input:
  video: h = ReLU(shared(ReLU(video_down z)));  A_v = video_up h (Dense, spatial) + video_temporal h (conv over time)
  text:  h = ReLU(shared(ReLU(text_down z)));   A_t = text_up h
`shared` (d×d) is ONE set of params that both towers' adapters of the layer use. The block output becomes
x + Attn + MLP + grad_scale(λ·A(LN1(grad_scale(x, λ))), 1/λ), which is MMA's `gradient_scale_layer` pair: the
trunk receives the true gradient of the λ-scaled branch, while the adapter params get 1/λ times theirs (their
updates are not shrunk by λ). `video_temporal` is a depthwise Conv3d d -> video width, kernel (k, 1, 1), groups
d, with bias (output channel o reads bottleneck channel o // (width / d)): the form the logged parameter counts
pin down (see the README's MSTA section); 'dense' (a full d -> width conv) and 'none' are the alternatives.
Init: Kaiming normal (fan_out, ReLU) weights and zero biases, as MMA; the adapters are NOT zero at init, so
the adapted model differs from the frozen one by O(λ) from the first step.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from umt_jax.models import layers

Dtype = Any
TEMPORAL_FORMS = ("depthwise", "dense", "none")
LAYOUTS = ("frames", "joint")  # video tokens (B·T, 1+N, C) frame-wise, or ViCLIP's (B, 1+N·T, C), n-major


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
  start: int = 8  # first adapted block, 1-based
  end: int = 12  # last adapted block, inclusive
  dim: int = 128  # bottleneck d
  scale: float = 0.005  # λ
  temporal: str = "depthwise"
  kernel: int = 3  # temporal kernel (odd; zero padding keeps T)

  def __post_init__(self):
    if self.temporal not in TEMPORAL_FORMS:
      raise ValueError(f"msta.temporal={self.temporal!r}; expected one of {TEMPORAL_FORMS}")
    if not 1 <= self.start <= self.end:
      raise ValueError(f"msta adapter layers {self.start}..{self.end}: need 1 <= start <= end (1-based, inclusive)")
    if self.kernel % 2 == 0:
      raise ValueError(f"msta.kernel={self.kernel}: the temporal kernel must be odd (it keeps the frame count)")
    if self.scale <= 0:
      raise ValueError(f"msta.scale={self.scale}: λ must be > 0 (the gradient scaling divides by it)")

  def blocks(self, depth: int) -> range:
    """0-based indices of the adapted blocks of a `depth`-block tower."""
    if self.end > depth:
      raise ValueError(f"msta adapter layers {self.start}..{self.end}, but the tower has {depth} blocks")
    return range(self.start - 1, self.end)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def grad_scale(x: jax.Array, scale: float) -> jax.Array:
  """Identity in the forward; multiplies the incoming gradient by `scale` (MMA's GradientScaleLayer)."""
  return x


def _gs_fwd(x, scale):
  return x, None


def _gs_bwd(scale, _, g):
  return (g * jnp.asarray(scale, g.dtype),)


grad_scale.defvjp(_gs_fwd, _gs_bwd)


def kaiming_fan_out(fan_out: int):
  """torch.nn.init.kaiming_normal_(mode='fan_out', nonlinearity='relu'): N(0, 2 / fan_out)."""
  std = float(np.sqrt(2.0 / fan_out))
  return lambda key, shape, dtype=jnp.float32: std * jax.random.normal(key, shape, dtype)


class LayerAdapter(nn.Module):
  """The adapters of one block of both towers. video(z (…, d_v)) and text(z (…, d_t)) share `shared`."""
  video_width: int
  text_width: int
  cfg: AdapterConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    c, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    dense = lambda n_in, n_out, axes: layers.Dense(n_out, axes=axes, kernel_init=kaiming_fan_out(n_out), **kw)
    self.shared = dense(c.dim, c.dim, ("mlp", None))
    self.video_down = dense(self.video_width, c.dim, ("embed", "mlp"))
    self.video_up = dense(c.dim, self.video_width, ("mlp", "embed"))
    self.text_down = dense(self.text_width, c.dim, ("embed", "mlp"))
    self.text_up = dense(c.dim, self.text_width, ("mlp", "embed"))
    if c.temporal != "none":
      if c.temporal == "depthwise" and self.video_width % c.dim:
        raise ValueError(f"msta.temporal='depthwise' needs the video width {self.video_width} to be a multiple of "
                         f"msta.dim={c.dim} (groups = d)")
      shape, axes = ((c.kernel, self.video_width), (None, "embed")) if c.temporal == "depthwise" else (
          (c.kernel, c.dim, self.video_width), (None, "mlp", "embed"))
      fan_out = c.kernel * (self.video_width // c.dim if c.temporal == "depthwise" else self.video_width)
      self.temporal_kernel = layers.param_with_axes(self, "temporal_kernel", kaiming_fan_out(fan_out), shape, axes,
                                                    self.param_dtype)
      self.temporal_bias = layers.param_with_axes(self, "temporal_bias", nn.initializers.zeros, (self.video_width,),
                                                  ("embed",), self.param_dtype)

  def _bottleneck(self, down: nn.Module, z: jax.Array) -> jax.Array:
    return jax.nn.relu(self.shared(jax.nn.relu(down(z))))

  def text(self, z: jax.Array) -> jax.Array:
    """z (B, L, d_t) -> (B, L, d_t)."""
    return self.text_up(self._bottleneck(self.text_down, z))

  def video(self, z: jax.Array, num_frames: int, layout: str = "frames") -> jax.Array:
    """z: (B·T, 1+N, d_v) for layout 'frames', (B, 1+N·T, d_v) for 'joint' (token 1 + n·T + t = patch n of
    frame t, ViCLIP's order) -> same shape."""
    h = self._bottleneck(self.video_down, z)
    out = self.video_up(h)
    if self.cfg.temporal == "none":
      return out
    if layout == "frames":  # every token position (each frame's CLS included) is a sequence over time
      bt, n, d = h.shape
      ht = h.reshape(bt // num_frames, num_frames, n, d)
      return out + self._conv_time(ht).reshape(out.shape)
    if layout == "joint":  # the single CLS token is a sequence of length 1
      b, n, d = h.shape
      patches = h[:, 1:].reshape(b, -1, num_frames, d).transpose(0, 2, 1, 3)  # (B, T, N, d)
      cls, patches = self._conv_time(h[:, None, :1]), self._conv_time(patches).transpose(0, 2, 1, 3)
      return out + jnp.concatenate([cls[:, 0], patches.reshape(b, n - 1, -1)], axis=1)
    raise ValueError(f"video token layout {layout!r}; expected one of {LAYOUTS}")

  def _conv_time(self, h: jax.Array) -> jax.Array:
    """h (B, T, N, d) -> (B, T, N, W): the temporal up-projection, zero-padded to keep T."""
    k, w = self.cfg.kernel, self.video_width
    kernel = self.temporal_kernel.astype(self.dtype)
    t = h.shape[1]
    hp = jnp.pad(h.astype(self.dtype), ((0, 0), (k // 2, k // 2), (0, 0), (0, 0)))
    if self.cfg.temporal == "depthwise":
      hp = jnp.repeat(hp, w // self.cfg.dim, axis=-1)  # groups = d: channel o reads o // (W / d)
      y = sum(hp[:, j:j + t] * kernel[j] for j in range(k))
    else:
      y = sum(jnp.einsum("btnd,dw->btnw", hp[:, j:j + t], kernel[j]) for j in range(k))
    return y + self.temporal_bias.astype(self.dtype)


class Adapters(nn.Module):
  """All adapted blocks: params `layer_{j}` (j = 1-based block number), each one `LayerAdapter`; `video(block,
  ...)` / `text(block, ...)` take the 0-based block index the towers use.

  __call__(video_tokens (B·T, 1+N, d_v), text_tokens (B, L, d_t), num_frames) runs every layer once (init only).
  """
  video_width: int
  text_width: int
  depth: int  # blocks per tower (both towers must have the same depth, as CLIP-B and ViCLIP-B do)
  cfg: AdapterConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    # Flax names dict entries `layer_<key>`: the 1-based block number, as MMA indexes its adapters.
    self.layer = {str(j + 1): LayerAdapter(self.video_width, self.text_width, self.cfg, self.dtype, self.param_dtype)
                  for j in self.cfg.blocks(self.depth)}

  def video(self, block: int, z: jax.Array, num_frames: int, layout: str = "frames") -> jax.Array:
    return self.layer[str(block + 1)].video(z, num_frames, layout)

  def text(self, block: int, z: jax.Array) -> jax.Array:
    return self.layer[str(block + 1)].text(z)

  def __call__(self, video_tokens: jax.Array, text_tokens: jax.Array, num_frames: int):
    return [(a.video(video_tokens, num_frames), a.text(text_tokens)) for a in self.layer.values()]


def adapter_count(video_width: int, text_width: int, depth: int, cfg: AdapterConfig) -> int:
  """Trainable params of `Adapters` from abstract shapes (no arrays allocated)."""
  m = Adapters(video_width, text_width, depth, cfg)
  shapes = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((2, 2, video_width)),
                                         jnp.zeros((1, 2, text_width)), 2))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.meta.unbox(shapes)))
