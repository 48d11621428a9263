"""Training objectives. Each returns a scalar fp32 loss; `combine` forms the weighted total and metrics, so
stage 2 adds VTC / VTM / MLM terms beside UTA without touching these."""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from umt_jax.masking import visible_to_mask
from umt_jax.models.vit import gather_tokens, patchify


def _l2n(x: jax.Array) -> jax.Array:
  x = x.astype(jnp.float32)
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def uta_loss(student: jax.Array, teacher: jax.Array) -> jax.Array:
  """Unmasked-token alignment: mean over (layers, batch, visible tokens) of 2 - 2·cos(s, t).

  student, teacher: (K, B, Nv, C); both are L2-normalised here (idempotent for already-normalised inputs).
  """
  if student.shape != teacher.shape:
    raise ValueError(f"uta_loss: student {student.shape} and teacher {teacher.shape} features differ in shape")
  return jnp.mean(2.0 - 2.0 * jnp.sum(_l2n(student) * _l2n(teacher), axis=-1))


def pixel_targets(video: jax.Array, tubelet_size: int, patch_size: int, normalize: bool = True) -> jax.Array:
  """VideoMAE targets. video (B, T, H, W, 3) in [0, 1] (un-normalised) -> (B, N, kt·p·p·3) in (p0 p1 p2 c) order.

  With `normalize`, each patch is normalised per channel: (x - mean) / (unbiased std + 1e-6), in fp32.
  """
  x = patchify(video.astype(jnp.float32), tubelet_size, patch_size)  # (B, N, kt, p, p, C)
  b, n, c = x.shape[0], x.shape[1], x.shape[-1]
  x = x.reshape(b, n, -1, c)
  if normalize:
    x = (x - x.mean(axis=2, keepdims=True)) / (jnp.sqrt(x.var(axis=2, ddof=1, keepdims=True)) + 1e-6)
  return x.reshape(b, n, -1)


def pixel_loss(pred: jax.Array, targets: jax.Array, visible_idx: jax.Array, decode_idx: jax.Array) -> jax.Array:
  """MSE over tokens the decoder reconstructs AND the encoder did not see.

  pred (B, Nd, P) predictions for `decode_idx` (B, Nd); targets (B, N, P); visible_idx (B, Nv) encoder tokens.
  """
  labels = gather_tokens(targets, decode_idx)
  mse = jnp.mean(jnp.square(pred.astype(jnp.float32) - labels), axis=-1)  # (B, Nd)
  weight = jnp.take_along_axis(visible_to_mask(visible_idx, targets.shape[1]), decode_idx, axis=1)
  weight = weight.astype(jnp.float32)
  return jnp.sum(mse * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def combine(terms: Mapping[str, jax.Array], weights: Mapping[str, float]) -> tuple[jax.Array, dict]:
  """Weighted total of named loss terms -> (total, {'loss': total, 'loss_<name>': term}).

  Every term needs a weight (a missing weight is an error, not a silent 1.0)."""
  missing = sorted(set(terms) - set(weights))
  if missing:
    raise ValueError(f"loss terms {missing} have no weight; weights given for {sorted(weights)}")
  total = sum(weights[k] * v.astype(jnp.float32) for k, v in terms.items())
  return total, {"loss": total, **{f"loss_{k}": v for k, v in terms.items()}}
