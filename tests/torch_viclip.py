"""PyTorch restatement of InternVid's ViCLIP (OpenGVLab/InternVideo `viclip`) with its state_dict key names:
`vision_encoder` (clip_joint_*: Conv3d conv1, spatial + temporal tables, joint attention over all frames' tokens in
(n, t) order, CLS from frame 0), `text_encoder` (CLIP's causal text tower), `temp`. Forward semantics only
(eval: no drop path, no dropout). `adapters` (one per block or None) add a(ln_1(x)) after attention + MLP, the
MMA / MSTA insertion point."""
from __future__ import annotations

import torch
from torch import nn

from tests.torch_ref import ResidualAttentionBlock


class Block(ResidualAttentionBlock):
  def forward(self, x, adapter=None):  # x: (L, B, D)
    z = self.ln_1(x)
    y = x + self.attn(z, z, z, need_weights=False, attn_mask=self.mask)[0]
    y = y + self.mlp(self.ln_2(y))
    return y if adapter is None else y + adapter(z)


def _blocks(width, layers, heads, causal_len=0):
  t = nn.Module()
  t.resblocks = nn.ModuleList([Block(width, heads, causal_len) for _ in range(layers)])
  return t


def _run(transformer, x, adapters):
  for i, blk in enumerate(transformer.resblocks):
    x = blk(x, None if adapters is None else adapters[i])
  return x


class VisionEncoder(nn.Module):
  def __init__(self, img, patch, width, layers, heads, out_dim, num_frames):
    super().__init__()
    self.conv1 = nn.Conv3d(3, width, (1, patch, patch), (1, patch, patch), bias=False)
    s = width ** -0.5
    self.class_embedding = nn.Parameter(s * torch.randn(width))
    self.positional_embedding = nn.Parameter(s * torch.randn((img // patch) ** 2 + 1, width))
    self.ln_pre = nn.LayerNorm(width)
    self.temporal_positional_embedding = nn.Parameter(torch.zeros(1, num_frames, width))
    self.transformer = _blocks(width, layers, heads)
    self.ln_post = nn.LayerNorm(width)
    self.proj = nn.Parameter(s * torch.randn(width, out_dim))

  def forward(self, x, keep=None, adapters=None):  # x: (B, C, T, H, W); keep (B, K) kept patch-token indices
    x = self.conv1(x)
    b, c, t, h, w = x.shape
    x = x.permute(0, 2, 3, 4, 1).reshape(b * t, h * w, c)
    x = torch.cat([self.class_embedding + torch.zeros(x.shape[0], 1, c), x], 1) + self.positional_embedding
    cls, x = x[:b, :1], x[:, 1:]
    x = x.reshape(b, t, h * w, c).permute(0, 2, 1, 3).reshape(b * h * w, t, c)  # (b t) n m -> (b n) t m
    tpos = self.temporal_positional_embedding
    x = x + (tpos.mean(1) if t == 1 else tpos)
    x = x.reshape(b, h * w * t, c)  # (b n) t m -> b (n t) m
    if keep is not None:
      x = x[torch.arange(b)[:, None], keep]
    x = self.ln_pre(torch.cat([cls, x], 1)).permute(1, 0, 2)
    x = _run(self.transformer, x, adapters)
    return self.ln_post(x[0]) @ self.proj


class TextEncoder(nn.Module):
  def __init__(self, embed, ctx, vocab, width, layers, heads):
    super().__init__()
    self.token_embedding = nn.Embedding(vocab, width)
    self.positional_embedding = nn.Parameter(0.01 * torch.randn(ctx, width))
    self.transformer = _blocks(width, layers, heads, ctx)
    self.ln_final = nn.LayerNorm(width)
    self.text_projection = nn.Parameter(width ** -0.5 * torch.randn(width, embed))

  def forward(self, ids, adapters=None):
    x = (self.token_embedding(ids) + self.positional_embedding).permute(1, 0, 2)
    x = self.ln_final(_run(self.transformer, x, adapters).permute(1, 0, 2))
    return x[torch.arange(x.shape[0]), ids.argmax(-1)] @ self.text_projection


class ViCLIP(nn.Module):
  def __init__(self, cfg):
    super().__init__()
    c = cfg
    self.vision_encoder = VisionEncoder(c.image_size, c.patch_size, c.vision_width, c.vision_layers,
                                        c.vision_heads, c.embed_dim, c.num_frames)
    self.text_encoder = TextEncoder(c.embed_dim, c.context_length, c.vocab_size, c.text_width, c.text_layers,
                                    c.text_heads)
    self.temp = nn.Parameter(torch.ones([]) / 100.0)
