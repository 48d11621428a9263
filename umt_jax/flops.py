"""Analytic FLOPs of one training step, per stage: what TFLOP/s and MFU divide by (MaxText's convention).

Matmuls only, 2 FLOPs per multiply-add; a trained layer costs 3× its forward (forward, gradient w.r.t. its input,
gradient w.r.t. its weights), a frozen one 1×, and the patch embedding 2× (its input, the pixels, needs no
gradient). Elementwise work (norms, softmax, GELU, the optimizer) and remat recomputation are left out, so
these are "model FLOPs": a remat run does more work for the same count. `tests/test_flops.py` checks every
stage against XLA's `cost_analysis()` of the compiled step.

  UMT stage 1   student on the visible tokens only (its patch embedding too: the tubelets are gathered first),
                K alignment decoders on the visible tokens, the teacher forward on every frame, its last block
                after the attention's keys and values on the CLS token and the visible tokens only.
  fine-tuning   the classifier on all tokens.
  VideoMAE      encoder on the Nv tube-visible tokens (patch embedding too), enc→dec on Nv, decoder blocks
                on Nv + Nd (Nd decoder-kept mask tokens), norm + head on the Nd predictions.
  CLIP stage 0  image tower on one frame, text tower, and the B×B similarity matrix.

Under a vid-TLDR / ToMe merge schedule (`enc["merge_schedule"]`) block i attends over its N_i tokens, merges
r_i of them (the |A|×|B| cosine similarities of the matching, once: it has no gradient) and runs its MLP on
N_i - r_i; `classifier_forward` is the inference cost per clip that the merging benchmark reports.
"""
from __future__ import annotations

from umt_jax.masking import num_visible
from umt_jax.models.merging import merge_counts

TRAIN, FROZEN, EMBED = 3.0, 1.0, 2.0  # passes of a trained layer, a frozen one, a trained input embedding


def linear(tokens: int, d_in: int, d_out: int) -> float:
  return 2.0 * tokens * d_in * d_out


def attention(n: int, d: int, queries: int | None = None) -> float:
  """qkv on n tokens of width d; QKᵀ, AV and the output projection for `queries` of them (default all)."""
  q = n if queries is None else queries
  return linear(n, d, 3 * d) + 2 * linear(q, d, n) + linear(q, d, d)


def blocks(tokens: int, width: int, depth: int, mlp_dim: int) -> float:
  """Forward FLOPs of `depth` transformer blocks on one sequence: qkv, QKᵀ, AV, output projection, MLP."""
  return depth * (attention(tokens, width) + 2 * linear(tokens, width, mlp_dim))


def merged_blocks(tokens: int, width: int, mlp_dim: int, counts: tuple[int, ...]) -> tuple[float, float]:
  """Forward FLOPs of len(counts) blocks merging counts[i] tokens in block i -> (blocks, matching): block i's
  attention on its N_i tokens and MLP on N_i - r_i; matching = the ⌈N_i/2⌉×⌊N_i/2⌋ similarities of merge
  blocks."""
  total, match, n = 0.0, 0.0, tokens
  for r in counts:
    total += attention(n, width) + 2 * linear(n - r, width, mlp_dim)
    match += linear((n + 1) // 2, width, n // 2) if r else 0.0
    n -= r
  return total, match


def encoder_blocks(tokens: int, enc: dict, passes: float) -> float:
  """The encoder's blocks on `tokens` tokens, merge-aware (the matching is a forward-only pass)."""
  counts = merge_counts(enc.get("merge_schedule", ()), tokens, enc["depth"])
  blk, match = merged_blocks(tokens, enc["embed_dim"], enc["mlp_dim"], counts)
  return passes * blk + FROZEN * match


def student(tokens: int, enc: dict, tubelet: int = 1) -> float:
  """Train FLOPs of the video ViT on the `tokens` it embeds (the visible ones) for one clip, merge-aware."""
  p = enc["patch_size"]
  return encoder_blocks(tokens, enc, TRAIN) + EMBED * linear(tokens, tubelet * p * p * 3, enc["embed_dim"])


def clip_image(cfg, passes: float, project: int, kept: int | None = None) -> float:
  """FLOPs of the CLIP image tower on one image; `project` tokens go through the output projection. `kept`:
  the patches the last block finishes after its keys and values (the UMT teacher's visible ones)."""
  n, w = cfg.grid ** 2, cfg.vision_width
  q = n + 1 if kept is None else kept + 1
  last = attention(n + 1, w, q) + 2 * linear(q, w, 4 * w)
  return (EMBED if passes == TRAIN else FROZEN) * linear(n, cfg.patch_size ** 2 * 3, w) + passes * (
      blocks(n + 1, w, cfg.vision_layers - 1, 4 * w) + last + linear(project, w, cfg.embed_dim))


def umt_step(batch: int, frames: int, grid: int, mask_ratio: float, enc: dict, clip_dim: int, align_layers: int,
             teacher_cfg) -> float:
  """One stage-1 step: `batch` clips of `frames` frames, grid×grid tokens per frame."""
  kept = num_visible(grid * grid, mask_ratio)
  visible = kept * frames
  decoders = TRAIN * align_layers * linear(visible, enc["embed_dim"], clip_dim)
  teacher = frames * clip_image(teacher_cfg, FROZEN, align_layers * kept, kept)
  return batch * (student(visible, enc) + decoders + teacher)


def finetune_step(batch: int, frames: int, grid: int, enc: dict, num_classes: int, tubelet: int = 1) -> float:
  n = frames // tubelet * grid * grid
  return batch * (student(n, enc, tubelet) + TRAIN * linear(1, enc["embed_dim"], num_classes))


def classifier_forward(tokens: int, enc: dict, num_classes: int, tubelet: int = 1) -> float:
  """Forward FLOPs of the video classifier on one clip of `tokens` tokens (inference, a frozen teacher),
  merge-aware."""
  p = enc["patch_size"]
  return (encoder_blocks(tokens, enc, FROZEN)
          + linear(tokens, tubelet * p * p * 3, enc["embed_dim"]) + linear(1, enc["embed_dim"], num_classes))


def clip_step(batch: int, cfg) -> float:
  text = blocks(cfg.context_length, cfg.text_width, cfg.text_layers, 4 * cfg.text_width) + \
      linear(1, cfg.text_width, cfg.embed_dim)
  return batch * (clip_image(cfg, TRAIN, 1) + TRAIN * text) + TRAIN * linear(batch, cfg.embed_dim, batch)


def videomae_step(batch: int, visible: int, decoded: int, enc: dict, decoder_dim: int, decoder_depth: int,
                  decoder_mlp: int, tubelet: int) -> float:
  """One dual-masked step on `batch` samples (repeated views counted): `visible` encoder tokens and `decoded`
  decoder mask tokens per sample."""
  out = 3 * tubelet * enc["patch_size"] ** 2
  decoder = (linear(visible, enc["embed_dim"], decoder_dim)
             + blocks(visible + decoded, decoder_dim, decoder_depth, decoder_mlp) + linear(decoded, decoder_dim, out))
  return batch * (student(visible, enc, tubelet) + TRAIN * decoder)
