"""Mixup / CutMix with label smoothing, on device (timm's `Mixup` in 'batch' mode, as UMT fine-tuning uses).

One λ and one choice (mixup or cutmix) per batch; the batch is mixed with its reverse. For video the CutMix box
is the same in every frame. Targets: one-hot smoothed (on = 1 - ε + ε/C, off = ε/C), mixed with the same λ
(for CutMix, λ is corrected to the exact box area, as timm's `correct_lam`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def smooth_one_hot(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
  off = smoothing / num_classes
  return jax.nn.one_hot(labels, num_classes) * (1.0 - smoothing) + off


def cutmix_box(key: jax.Array, h: int, w: int, lam: jax.Array) -> jax.Array:
  """(h, w) bool mask of the pasted box: side ratio sqrt(1-λ), centre uniform, clipped at the borders."""
  ky, kx = jax.random.split(key)
  ratio = jnp.sqrt(1.0 - lam)
  ch, cw = (h * ratio).astype(jnp.int32), (w * ratio).astype(jnp.int32)
  cy, cx = jax.random.randint(ky, (), 0, h), jax.random.randint(kx, (), 0, w)
  y0, y1 = jnp.clip(cy - ch // 2, 0, h), jnp.clip(cy + ch // 2, 0, h)
  x0, x1 = jnp.clip(cx - cw // 2, 0, w), jnp.clip(cx + cw // 2, 0, w)
  ys, xs = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  return (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)


def mix(key: jax.Array, video: jax.Array, labels: jax.Array, num_classes: int, mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0, prob: float = 1.0, switch_prob: float = 0.5, smoothing: float = 0.1
        ) -> tuple[jax.Array, jax.Array]:
  """video (B, T, H, W, C) float, labels (B,) int -> (mixed video, soft targets (B, num_classes))."""
  targets = smooth_one_hot(labels, num_classes, smoothing)
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    return video, targets
  k_apply, k_switch, k_mix, k_cut, k_box = jax.random.split(key, 5)
  use_cut = (cutmix_alpha > 0) & ((mixup_alpha <= 0) | (jax.random.uniform(k_switch) < switch_prob))
  lam_mix = jax.random.beta(k_mix, max(mixup_alpha, 1e-3), max(mixup_alpha, 1e-3))
  lam_cut = jax.random.beta(k_cut, max(cutmix_alpha, 1e-3), max(cutmix_alpha, 1e-3))
  h, w = video.shape[2:4]
  box = cutmix_box(k_box, h, w, lam_cut)
  lam_cut = 1.0 - box.mean()
  apply = jax.random.uniform(k_apply) < prob
  lam = jnp.where(apply, jnp.where(use_cut, lam_cut, lam_mix), 1.0)
  flipped = video[::-1]
  mixed = jnp.where(use_cut, jnp.where(box[None, None, :, :, None], flipped, video),
                    lam * video + (1.0 - lam) * flipped)
  mixed = jnp.where(apply, mixed, video).astype(video.dtype)
  return mixed, lam * targets + (1.0 - lam) * targets[::-1]


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """timm's SoftTargetCrossEntropy: mean over the batch of -Σ targets · log_softmax(logits)."""
  return jnp.mean(-jnp.sum(targets * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1))
