"""PyTorch restatement of vid-TLDR (mlvlab/vid-TLDR a25051d) and ToMe's matching, for parity tests (test-only).

Function names follow the official code: `get_objective_score`, `merging`, `merge_wavg`, `vidTLDR` (from
multi_modality/utils/vid_TLDR.py), the attention and block of multi_modality/models/backbones/vit/vit.py, and
ToMe's `bipartite_soft_matching` (facebookresearch/ToMe tome/merge.py). Semantics are restated, not copied.
`Classifier` is the official fine-tune ViT (key names of tests/torch_ref.py) with the vid-TLDR hook in every block
and mean pooling over the (merged) tokens (`pool='count'`: each weighted by the input patches it holds,
umt_jax's classifier default, counted with ToMe's matching on the same x; 'mean': unweighted, the official
retrieval pooling); it records each block's (x, size) in `trace`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests import torch_ref
from tests.torch_ref import Mlp, PatchEmbed, finetune_table


def get_objective_score(score_attn: torch.Tensor) -> torch.Tensor:
  """Attention (B, H, N, N) -> sharpened saliency (B, N, 1): Σ A log A of the head-mean, min-max normalised,
  background (below the mean) zeroed, foreground (s - mean) / max."""
  a = score_attn.mean(dim=1)
  s = (a * torch.log(a)).sum(dim=2, keepdim=True)
  s = s - s.amin(dim=1, keepdim=True)
  s = s / s.amax(dim=1, keepdim=True)
  background = s < s.mean(dim=1, keepdim=True)
  s = s - s.mean(dim=1, keepdim=True)
  s = s / s.amax(dim=1, keepdim=True)
  return s.masked_fill(background, 0.0)


def merging(metric: torch.Tensor, r_merge: int, score_obj: torch.Tensor | None):
  """Bipartite matching on x (B, N, C) -> a `merge(x, mode)` function; sources weighted by score_obj (B, N, 1)."""
  with torch.no_grad():
    m = metric / metric.norm(dim=-1, keepdim=True)
    sim = (m[:, ::2] @ m[:, 1::2].transpose(-1, -2) + 1) / 2
    best, best_idx = sim.max(dim=-1)
    ranked = best.argsort(dim=-1, descending=True)[..., None]
    src_idx, unm_idx = ranked[:, :r_merge], ranked[:, r_merge:].sort(dim=1)[0]
    dst_idx = best_idx[..., None].gather(1, src_idx)
    src_score = None if score_obj is None else score_obj[:, ::2].gather(1, src_idx)

  def merge(x: torch.Tensor, mode: str = "sum") -> torch.Tensor:
    dtype = x.dtype
    x = x.float()
    a, b = x[:, ::2], x[:, 1::2]
    c = x.shape[-1]
    unm = a.gather(1, unm_idx.expand(-1, -1, c))
    src = a.gather(1, src_idx.expand(-1, -1, c))
    if src_score is not None:
      src = src * src_score
    b = b.scatter_reduce(1, dst_idx.expand(-1, -1, c), src, reduce=mode)
    return torch.cat([unm, b], dim=1).to(dtype)

  return merge


def merge_wavg(merge, x: torch.Tensor, size: torch.Tensor | None):
  """Mass-weighted merge (masses divided by their per-sample max) -> (x', size' (B, N', 1))."""
  size = torch.ones_like(x[..., :1]) if size is None else size
  size_max = size.amax(dim=1, keepdim=True)
  x = merge(x * (size / size_max))
  size = merge(size)
  return x / (size / size_max), size


def vidTLDR(x: torch.Tensor, attn: torch.Tensor, info: dict, layer: int) -> torch.Tensor:
  """The hook: merge info['r'][layer] tokens (a fraction of N when < 1, at most N//2); info['saliency'] False
  drops the saliency weights (the ToMe mode of umt_jax)."""
  n = x.shape[1]
  r = info["r"][layer] if layer < len(info["r"]) else 0
  r = int(n * r) if r < 1 else int(r)
  r = max(min(r, n // 2), 0)
  if not r:
    return x
  score = get_objective_score(attn) if info["saliency"] else None
  count = torch.ones_like(x[..., :1]) if info.get("count") is None else info["count"]
  info["count"] = merging(x, r, None)(count)  # the matching ignores the score: the same pairs, unweighted
  x, info["size"] = merge_wavg(merging(x, r, score), x, info["size"])
  return x


def bipartite_soft_matching(metric: torch.Tensor, r: int):
  """ToMe's matching (no protected tokens): cosine scores, the r best-matched A tokens go to their best B.
  Unmerged A tokens stay in match order (ToMe sorts them only with a class token). -> merge(x, mode)."""
  r = min(r, metric.shape[1] // 2)
  with torch.no_grad():
    m = metric / metric.norm(dim=-1, keepdim=True)
    best, best_idx = (m[:, ::2] @ m[:, 1::2].transpose(-1, -2)).max(dim=-1)
    ranked = best.argsort(dim=-1, descending=True)[..., None]
    src_idx, unm_idx = ranked[:, :r], ranked[:, r:]
    dst_idx = best_idx[..., None].gather(1, src_idx)

  def merge(x: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    a, b = x[:, ::2], x[:, 1::2]
    c = x.shape[-1]
    b = b.scatter_reduce(1, dst_idx.expand(-1, -1, c), a.gather(1, src_idx.expand(-1, -1, c)), reduce=mode)
    return torch.cat([a.gather(1, unm_idx.expand(-1, -1, c)), b], dim=1)

  return merge


def tome_merge_wavg(merge, x: torch.Tensor, size: torch.Tensor | None):
  """ToMe's `merge_wavg`: size-weighted average, sizes summed -> (x', size')."""
  size = torch.ones_like(x[..., :1]) if size is None else size
  x = merge(x * size, mode="sum")
  size = merge(size, mode="sum")
  return x / size, size


class Attention(torch_ref.Attention):
  """The vid-TLDR attention (the student's params): logits += log size of each key; also returns the
  probabilities without it."""

  def forward(self, x, size=None):
    b, n, c = x.shape
    bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
    q, k, v = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
    logits = (q * self.scale) @ k.transpose(-2, -1)
    plain = logits.softmax(-1).detach()
    if size is not None:
      logits = logits + size.log()[:, None, None, :, 0]
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)
    return self.proj(out), plain


class Block(nn.Module):
  def __init__(self, dim: int, heads: int, hidden: int, i: int, info: dict):
    super().__init__()
    self.i, self.info = i, info
    self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
    self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, hidden)

  def forward(self, x):
    y, attn = self.attn(self.norm1(x), self.info["size"])
    x = vidTLDR(x + y, attn, self.info, self.i)
    return x + self.mlp(self.norm2(x))


class Classifier(nn.Module):
  """Fine-tune ViT + vid-TLDR: patch_embed, pos_embed (when N ≠ 8·14·14), blocks.i, fc_norm, head."""

  def __init__(self, dim, depth, heads, hidden, patch, frames, img, classes, schedule, saliency=True,
               pool="count"):
    super().__init__()
    self.pool = pool
    self.info = {"r": list(schedule), "saliency": saliency, "size": None}
    self.patch_embed = PatchEmbed(dim, patch, 1)
    n = frames * (img // patch) ** 2
    table = finetune_table(n, dim, frames)
    self.pos_embed = table if n == 8 * 14 * 14 else nn.Parameter(table)
    self.blocks = nn.ModuleList([Block(dim, heads, hidden, i, self.info) for i in range(depth)])
    self.fc_norm = nn.LayerNorm(dim, eps=1e-6)
    self.head = nn.Linear(dim, classes)
    self.trace: list[tuple[torch.Tensor, torch.Tensor | None]] = []

  def forward(self, video):  # (B, C, T, H, W)
    self.info["size"], self.info["count"], self.trace = None, None, []  # the official resetInfo
    x = self.patch_embed(video) + self.pos_embed.detach()
    for blk in self.blocks:
      x = blk(x)
      self.trace.append((x, self.info["size"]))
    count = self.info["count"]
    if self.pool == "count" and count is not None:
      return self.head(self.fc_norm((x * count).sum(1) / count.sum(1)))
    return self.head(self.fc_norm(x.mean(1)))
