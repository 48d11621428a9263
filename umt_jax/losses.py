"""Training objectives. Each returns a scalar fp32 loss; `combine` forms the weighted total and metrics, so
stage 2 adds VTC / VTM / MLM terms beside UTA without touching these."""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from umt_jax.masking import visible_to_mask
from umt_jax.models.layers import gather_tokens
from umt_jax.models.vit import patchify


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


def distill_loss(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float = 1.0) -> jax.Array:
  """Logit distillation (Hinton et al.): T² · mean over the batch of KL(softmax(t / T) ‖ softmax(s / T)), fp32.

  student_logits, teacher_logits (B, C); the T² keeps the gradient's scale independent of T."""
  if student_logits.shape != teacher_logits.shape:
    raise ValueError(f"distill_loss: student logits {student_logits.shape} and teacher logits "
                     f"{teacher_logits.shape} differ in shape")
  log_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
  log_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
  return temperature ** 2 * jnp.mean(jnp.sum(jnp.exp(log_t) * (log_t - log_s), axis=-1))


def clamp_temp(temp: jax.Array, min_val: float = 0.001, max_val: float = 0.5) -> jax.Array:
  """The contrastive temperature the forward uses: clip(temp) in value, identity in gradient (fp32 scalar).

  The official clamps the `temp` parameter in place at the start of every forward, so its loss sees the clamped
  value while the gradient still reaches `temp` at the bound (a `clip` inside the loss would zero it there). A
  JAX forward cannot edit its parameters, so this straight-through `temp + stop_gradient(clip(temp) - temp)`
  gives the same value and gradient. The stored parameter, though, may drift past the bound (and weight decay
  acts on the drifted value); for the official trajectory exactly, also clip the parameter after each update.
  """
  temp = jnp.asarray(temp, jnp.float32)
  return temp + jax.lax.stop_gradient(jnp.clip(temp, min_val, max_val) - temp)


def vtc_similarity(vision: jax.Array, text: jax.Array,
                   temp: jax.Array | float = 1.0) -> tuple[jax.Array, jax.Array]:
  """(sim_v2t, sim_t2v = sim_v2t.T), each (B, B): sim_v2t[i, j] = mean over t of cos(vision[i, t], text[j]) / temp.

  vision (B, T', E), text (B, E); both are L2-normalised here."""
  sim = jnp.einsum("bte,ne->bn", _l2n(vision), _l2n(text)) / vision.shape[1] / temp
  return sim, sim.T


def vtc_loss(vision: jax.Array, text: jax.Array, idx: jax.Array, temp: jax.Array) -> jax.Array:
  """Video-text contrastive loss ½(CE(sim_v2t) + CE(sim_t2v)) with soft targets: the rows of eq(idx, idx)
  normalised to sum 1 (same video index = several positives), CE averaged over rows.

  vision (B, T', E) and text (B, E) projected features (L2-normalised here); idx (B,) int; temp the clamped
  temperature (`clamp_temp`). Under jit with batch-sharded global arrays B is the global batch, so this is the
  exact global loss and its exact gradient. (The official all-gathers with an autograd op whose backward returns
  only the local slice, so under DDP averaging its embedding gradient is 1/world of this one; temp's is not.)
  """
  sim, _ = vtc_similarity(vision, text, temp)
  pos = (idx[:, None] == idx[None, :]).astype(jnp.float32)
  targets = pos / jnp.sum(pos, axis=1, keepdims=True)  # symmetric: row i and column i have the same count
  v2t = -jnp.mean(jnp.sum(jax.nn.log_softmax(sim, axis=1) * targets, axis=1))
  t2v = -jnp.mean(jnp.sum(jax.nn.log_softmax(sim.T, axis=1) * targets, axis=1))
  return (v2t + t2v) / 2


def vtm_negatives(key: jax.Array, sim_v2t: jax.Array, sim_t2v: jax.Array,
                  idx: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Hard negatives for video-text matching -> (neg_video_for_text (B,) int32, neg_text_for_video (B,) int32).

  sim_v2t, sim_t2v (B, B) similarities already divided by temp; idx (B,). Row r draws column c with weight
  softmax(sim[r])[c], every same-idx column zeroed; a NaN row gets weight 1e-2 on each allowed column (uniform),
  as the official's `nan_to_num`. (The official's `+1e-4` before the softmax cancels and is left out.) The video
  per text is drawn first (from sim_t2v), then the text per video (from sim_v2t). A row whose every column shares
  its idx (B = 1, or one video in the batch) has no negative: the official's `torch.multinomial` raises there;
  this returns -1 (gathering with it wraps to the last row; harmless once `vtm_loss`'s `valid` drops the pair).
  """
  pos = idx[:, None] == idx[None, :]
  none = jnp.all(pos, axis=1)

  def draw(k: jax.Array, sim: jax.Array) -> jax.Array:
    logw = jax.nn.log_softmax(sim.astype(jnp.float32), axis=1)
    logw = jnp.where(jnp.isnan(logw), jnp.log(1e-2), logw)
    pick = jax.random.categorical(k, jnp.where(pos, -jnp.inf, logw), axis=1)
    return jnp.where(none, -1, pick).astype(jnp.int32)

  k_video, k_text = jax.random.split(key)
  return draw(k_video, sim_t2v), draw(k_text, sim_v2t)


def vtm_loss(logits: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """Video-text matching CE. logits (3B, 2) for [pos; (neg video, text); (video, neg text)], labels
  [1]*B + [0]*2B; mean over 3B, or over the pairs where `valid` (3B,) bool holds (e.g. `concatenate([ones,
  neg_video_for_text >= 0, neg_text_for_video >= 0])`)."""
  if logits.shape[0] % 3:
    raise ValueError(f"vtm_loss: logits {logits.shape} do not hold 3 groups of pairs")
  b = logits.shape[0] // 3
  labels = jnp.concatenate([jnp.ones(b, jnp.int32), jnp.zeros(2 * b, jnp.int32)])
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), labels[:, None], axis=-1)[:, 0]
  if valid is None:
    return jnp.mean(nll)
  return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def mlm_mask(key: jax.Array, ids: jax.Array, mask: jax.Array, *, vocab_size: int, mask_id: int,
             exempt_ids: Sequence[int], prob: float = 0.5) -> tuple[jax.Array, jax.Array]:
  """BERT masking -> (input_ids (B, L), labels (B, L): the original id where masked, else -100).

  ids (B, L) int, mask (B, L) attention mask. Each token is masked with probability `prob` unless it is padding
  (mask == 0) or one of `exempt_ids` (the official exempts [PAD] and [CLS] only; [SEP] can be masked). Of the
  masked: 80% -> mask_id, 10% -> a uniform id in [0, vocab_size) (special ids included, as the official), 10% kept.
  """
  k_mask, k_replace, k_random, k_word = jax.random.split(key, 4)
  exempt = jnp.any(ids[..., None] == jnp.asarray(exempt_ids, ids.dtype).reshape(-1), axis=-1)
  masked = jax.random.bernoulli(k_mask, prob, ids.shape) & (mask != 0) & ~exempt
  replaced = jax.random.bernoulli(k_replace, 0.8, ids.shape) & masked
  randomized = jax.random.bernoulli(k_random, 0.5, ids.shape) & masked & ~replaced  # half the remaining 20%
  words = jax.random.randint(k_word, ids.shape, 0, vocab_size, ids.dtype)
  input_ids = jnp.where(replaced, jnp.asarray(mask_id, ids.dtype), jnp.where(randomized, words, ids))
  return input_ids, jnp.where(masked, ids, jnp.asarray(-100, ids.dtype))


def mlm_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean CE over the tokens whose label is not -100 (0 when none is). logits (B, L, V), labels (B, L)."""
  valid = labels != -100
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
  return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def consistency_loss(classes: jax.Array, spatial: jax.Array, temporal: jax.Array) -> jax.Array:
  """MSTA's description-guided consistency: mean over classes c of 2 − cos(w_c, D_s^c) − cos(w_c, D_t^c).

  classes (C, E): the adapted text tower's template embeddings; spatial, temporal (C, E): each class's mean
  frozen-tower description embedding (normalised here; the mean of unit vectors is not unit)."""
  w = _l2n(classes)
  return jnp.mean(2.0 - jnp.sum(w * _l2n(spatial), -1) - jnp.sum(w * _l2n(temporal), -1))


def combine(terms: Mapping[str, jax.Array], weights: Mapping[str, float]) -> tuple[jax.Array, dict]:
  """Weighted total of named loss terms -> (total, {'loss': total, 'loss_<name>': term}).

  Every term needs a weight (a missing weight is an error, not a silent 1.0)."""
  missing = sorted(set(terms) - set(weights))
  if missing:
    raise ValueError(f"loss terms {missing} have no weight; weights given for {sorted(weights)}")
  total = sum(weights[k] * v.astype(jnp.float32) for k, v in terms.items())
  return total, {"loss": total, **{f"loss_{k}": v for k, v in terms.items()}}
