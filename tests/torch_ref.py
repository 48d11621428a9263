"""Independent PyTorch references with the official key names and forward semantics (test-only).

Written from the official UMT code's behaviour (single_modality/models/{modeling_finetune,
modeling_pretrain_umt,clip}.py), VideoMAE V2's pretraining model and OpenAI CLIP, so that exports load with
strict=True and numerics can be compared: student classifier and stage-1 model, VideoMAE V2 pretraining model,
OpenAI-layout CLIP, and UMT's frame-wise CLIP teacher.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# ----------------------------------------------------------------------------- position tables
def sinusoid(n: int, d: int) -> torch.Tensor:
  angle = np.array([[p / np.power(10000, 2 * (j // 2) / d) for j in range(d)] for p in range(n)])
  angle[:, 0::2] = np.sin(angle[:, 0::2])
  angle[:, 1::2] = np.cos(angle[:, 1::2])
  return torch.tensor(angle, dtype=torch.float).unsqueeze(0)


def finetune_table(n: int, d: int, frames: int, ref_t: int = 8, ref_p: int = 14) -> torch.Tensor:
  """The official fine-tune table: the 8×14×14 table, bicubic over space then linear over time."""
  table = sinusoid(ref_t * ref_p * ref_p, d)
  new_p = int((n // frames) ** 0.5)
  if new_p != ref_p:
    table = table.reshape(-1, ref_p, ref_p, d).permute(0, 3, 1, 2)
    table = F.interpolate(table, size=(new_p, new_p), mode="bicubic", align_corners=False)
    table = table.permute(0, 2, 3, 1).reshape(1, -1, d)
  if frames != ref_t:
    table = table.reshape(1, ref_t, new_p, new_p, d).permute(0, 2, 3, 4, 1).reshape(-1, d, ref_t)
    table = F.interpolate(table, size=frames, mode="linear")
    table = table.reshape(1, new_p, new_p, d, frames).permute(0, 4, 1, 2, 3).flatten(1, 3)
  return table


# ----------------------------------------------------------------------------- student
class Attention(nn.Module):
  def __init__(self, dim, heads):
    super().__init__()
    self.heads, self.scale = heads, (dim // heads) ** -0.5
    self.qkv = nn.Linear(dim, dim * 3, bias=False)
    self.q_bias = nn.Parameter(torch.zeros(dim))
    self.v_bias = nn.Parameter(torch.zeros(dim))
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    b, n, c = x.shape
    bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
    qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
    attn = (q @ k.transpose(-2, -1)).softmax(-1)
    return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
  def __init__(self, dim, hidden):
    super().__init__()
    self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
  def __init__(self, dim, heads, hidden):
    super().__init__()
    self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
    self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, hidden)

  def forward(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
  def __init__(self, dim, patch, tubelet):
    super().__init__()
    self.proj = nn.Conv3d(3, dim, (tubelet, patch, patch), (tubelet, patch, patch))

  def forward(self, x):  # (B, C, T, H, W)
    return self.proj(x).flatten(2).transpose(1, 2)


class Classifier(nn.Module):
  """`VisionTransformer` of modeling_finetune.py with mean pooling."""

  def __init__(self, dim, depth, heads, hidden, patch, tubelet, frames, img, classes):
    super().__init__()
    self.patch_embed = PatchEmbed(dim, patch, tubelet)
    n = (frames // tubelet) * (img // patch) ** 2
    table = finetune_table(n, dim, frames // tubelet)
    if n == 8 * 14 * 14:
      self.pos_embed = table  # plain tensor: absent from the state_dict
    else:
      self.pos_embed = nn.Parameter(table)
    self.blocks = nn.ModuleList([Block(dim, heads, hidden) for _ in range(depth)])
    self.fc_norm = nn.LayerNorm(dim, eps=1e-6)
    self.head = nn.Linear(dim, classes)

  def forward(self, x):
    x = self.patch_embed(x)
    x = x + self.pos_embed.detach()
    for blk in self.blocks:
      x = blk(x)
    return self.head(self.fc_norm(x.mean(1)))


class PretrainUMT(nn.Module):
  """`PretrainVisionTransformer` of modeling_pretrain_umt.py (encoder + clip_decoder)."""

  def __init__(self, dim, depth, heads, hidden, patch, frames, img, clip_dim, k, dec_eps=1e-6):
    super().__init__()
    self.encoder = nn.Module()
    self.encoder.patch_embed = PatchEmbed(dim, patch, 1)
    self.encoder.blocks = nn.ModuleList([Block(dim, heads, hidden) for _ in range(depth)])
    self.encoder.norm = nn.LayerNorm(dim, eps=1e-6)
    n = frames * (img // patch) ** 2
    self.pos_embed = sinusoid(n, dim)
    self.clip_pos_embed = sinusoid(n, dim)
    self.clip_decoder = nn.ModuleList()
    for _ in range(k):
      m = nn.Module()
      m.head, m.norm = nn.Linear(dim, clip_dim), nn.LayerNorm(clip_dim, eps=dec_eps)
      self.clip_decoder.append(m)
    self.return_index = [depth - i - 1 for i in range(k)]

  def forward(self, x, mask):  # mask (B, N) bool, True = masked
    x = self.encoder.patch_embed(x) + self.pos_embed
    b, _, c = x.shape
    x = x[~mask].reshape(b, -1, c)
    outs = []
    for i, blk in enumerate(self.encoder.blocks):
      x = blk(x)
      if i in self.return_index:
        outs.append(x)
    feats = self.encoder.norm(torch.stack(outs))
    pos = self.clip_pos_embed.repeat(b, 1, 1)[~mask].view(b, -1, c)
    feats = feats + pos.unsqueeze(0)
    res = []
    for i, dec in enumerate(self.clip_decoder):
      y = dec.norm(dec.head(feats[i]))
      res.append(y / y.norm(dim=-1, keepdim=True))
    return torch.stack(res)


class PretrainVideoMAE(nn.Module):
  """`PretrainVisionTransformer` of VideoMAE V2's models/modeling_pretrain.py (keys and forward semantics).

  forward(x, mask, decode_mask): mask (B, N) bool True = hidden from the encoder; decode_mask (B, N) bool True =
  dropped by the decoder, None = VideoMAE v1 (the decoder reconstructs every encoder-masked token).
  """

  def __init__(self, dim, depth, heads, mlp_ratio, patch, tubelet, frames, img, dec_dim, dec_depth, dec_heads):
    super().__init__()
    self.encoder = nn.Module()
    self.encoder.patch_embed = PatchEmbed(dim, patch, tubelet)
    self.encoder.blocks = nn.ModuleList([Block(dim, heads, int(dim * mlp_ratio)) for _ in range(depth)])
    self.encoder.norm = nn.LayerNorm(dim, eps=1e-6)
    n = (frames // tubelet) * (img // patch) ** 2
    self.encoder.pos_embed = sinusoid(n, dim)  # plain tensors: absent from the state_dict
    self.encoder_to_decoder = nn.Linear(dim, dec_dim, bias=False)
    self.mask_token = nn.Parameter(torch.randn(1, 1, dec_dim) * 0.02)
    self.pos_embed = sinusoid(n, dec_dim)
    self.decoder = nn.Module()
    self.decoder.blocks = nn.ModuleList([Block(dec_dim, dec_heads, int(dec_dim * mlp_ratio)) for _ in range(dec_depth)])
    self.decoder.norm = nn.LayerNorm(dec_dim, eps=1e-6)
    self.decoder.head = nn.Linear(dec_dim, 3 * tubelet * patch ** 2)

  def forward(self, x, mask, decode_mask=None):
    decode_vis = mask if decode_mask is None else ~decode_mask
    x = self.encoder.patch_embed(x) + self.encoder.pos_embed
    b, _, c = x.shape
    x = x[~mask].reshape(b, -1, c)
    for blk in self.encoder.blocks:
      x = blk(x)
    x = self.encoder_to_decoder(self.encoder.norm(x))
    pos = self.pos_embed.expand(b, -1, -1)
    d = pos.shape[-1]
    pos_vis, pos_dec = pos[~mask].reshape(b, -1, d), pos[decode_vis].reshape(b, -1, d)
    x = torch.cat([x + pos_vis, self.mask_token + pos_dec], dim=1)
    for blk in self.decoder.blocks:
      x = blk(x)
    return self.decoder.head(self.decoder.norm(x[:, -pos_dec.shape[1]:]))


# ----------------------------------------------------------------------------- CLIP (OpenAI layout)
class QuickGELU(nn.Module):
  def forward(self, x):
    return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
  def __init__(self, d, heads, causal_len=0):
    super().__init__()
    self.attn = nn.MultiheadAttention(d, heads)
    self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
    self.mlp = nn.Sequential()
    self.mlp.add_module("c_fc", nn.Linear(d, 4 * d))
    self.mlp.add_module("gelu", QuickGELU())
    self.mlp.add_module("c_proj", nn.Linear(4 * d, d))
    self.mask = torch.full((causal_len, causal_len), float("-inf")).triu_(1) if causal_len else None

  def forward(self, x, need_attn=False):  # x: (L, B, D)
    y, attn = self.attn(*(self.ln_1(x),) * 3, need_weights=need_attn, attn_mask=self.mask)
    x = x + y
    return x + self.mlp(self.ln_2(x)), attn


class VisualTransformer(nn.Module):
  """OpenAI CLIP's image tower; `umt_teacher` mode mirrors UMT's teacher (Conv3d conv1, K layers, CLS attn)."""

  def __init__(self, img, patch, width, layers, heads, out_dim, conv3d=False):
    super().__init__()
    self.conv1 = (nn.Conv3d(3, width, (1, patch, patch), (1, patch, patch), bias=False) if conv3d
                  else nn.Conv2d(3, width, patch, patch, bias=False))
    s = width ** -0.5
    self.class_embedding = nn.Parameter(s * torch.randn(width))
    self.positional_embedding = nn.Parameter(s * torch.randn((img // patch) ** 2 + 1, width))
    self.ln_pre, self.ln_post = nn.LayerNorm(width), nn.LayerNorm(width)
    self.transformer = nn.Module()
    self.transformer.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])
    self.proj = nn.Parameter(s * torch.randn(width, out_dim))

  def tokens(self, x):  # x: (N, C, H, W) -> (L, N, D)
    x = self.conv1(x).flatten(2).transpose(1, 2)
    cls = self.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1])
    return self.ln_pre(torch.cat([cls, x], 1) + self.positional_embedding).permute(1, 0, 2)

  def forward(self, x):
    x = self.tokens(x)
    for blk in self.transformer.resblocks:
      x, _ = blk(x)
    return self.ln_post(x[0]) @ self.proj

  def teacher(self, video, k):  # video: (B, C, T, H, W) -> (K, B, T·N, E) L2-normed, attn (B·T, N)
    b, c, t, h, w = video.shape
    x = self.conv1(video)
    _, d, t, gh, gw = x.shape
    x = x.permute(0, 2, 3, 4, 1).reshape(b * t, gh * gw, d)
    cls = self.class_embedding + torch.zeros(x.shape[0], 1, d)
    x = self.ln_pre(torch.cat([cls, x], 1) + self.positional_embedding).permute(1, 0, 2)
    z, attn, layers = [], None, len(self.transformer.resblocks)
    for i, blk in enumerate(self.transformer.resblocks):
      x, a = blk(x, need_attn=(i == layers - 1))
      attn = a if a is not None else attn
      if i >= layers - k:
        z.append(x)
    x = self.ln_post(torch.stack(z)[:, 1:])
    hw = gh * gw
    x = x.view(k, hw, b, t, d).permute(0, 2, 3, 1, 4).reshape(k, b, t * hw, d) @ self.proj
    return x / x.norm(dim=-1, keepdim=True), attn[:, 0, 1:]


class CLIP(nn.Module):
  def __init__(self, embed, img, patch, vw, vl, vh, ctx, vocab, tw, tl, th):
    super().__init__()
    self.visual = VisualTransformer(img, patch, vw, vl, vh, embed)
    self.token_embedding = nn.Embedding(vocab, tw)
    self.positional_embedding = nn.Parameter(0.01 * torch.randn(ctx, tw))
    self.transformer = nn.Module()
    self.transformer.resblocks = nn.ModuleList([ResidualAttentionBlock(tw, th, ctx) for _ in range(tl)])
    self.ln_final = nn.LayerNorm(tw)
    self.text_projection = nn.Parameter(tw ** -0.5 * torch.randn(tw, embed))
    self.logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / 0.07))

  def encode_text(self, ids):
    x = (self.token_embedding(ids) + self.positional_embedding).permute(1, 0, 2)
    for blk in self.transformer.resblocks:
      x, _ = blk(x)
    x = self.ln_final(x.permute(1, 0, 2))
    return x[torch.arange(x.shape[0]), ids.argmax(-1)] @ self.text_projection


# ----------------------------------------------------------------------------- BERT fusion layer (UMT stage 2)
class BertSelfAttention(nn.Module):
  """query from `x`; key/value from `kv` (cross-attention, width `kv_dim`) or `x`; additive -10000 mask."""

  def __init__(self, dim, heads, kv_dim):
    super().__init__()
    self.heads = heads
    self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(kv_dim, dim), nn.Linear(kv_dim, dim)

  def forward(self, x, mask, kv=None):  # mask (B, S) {0,1}
    kv = x if kv is None else kv
    split = lambda t: t.reshape(t.shape[0], t.shape[1], self.heads, -1).transpose(1, 2)
    q, k, v = split(self.query(x)), split(self.key(kv)), split(self.value(kv))
    scores = q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5) + (1.0 - mask[:, None, None, :].float()) * -10000.0
    out = scores.softmax(-1) @ v
    return out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)


class BertDenseNorm(nn.Module):
  def __init__(self, d_in, dim, eps):
    super().__init__()
    self.dense, self.LayerNorm = nn.Linear(d_in, dim), nn.LayerNorm(dim, eps=eps)

  def forward(self, x, residual):
    return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
  def __init__(self, dim, heads, kv_dim, eps):
    super().__init__()
    self.self, self.output = BertSelfAttention(dim, heads, kv_dim), BertDenseNorm(dim, dim, eps)

  def forward(self, x, mask, kv=None):
    return self.output(self.self(x, mask, kv), x)


class BertFusionLayer(nn.Module):
  """xbert's BertLayer with `layer_num >= fusion_layer` (eval mode): self-attn, cross-attn to vision, FFN."""

  def __init__(self, dim, heads, hidden, encoder_width, eps=1e-12):
    super().__init__()
    self.attention = BertAttention(dim, heads, dim, eps)
    self.crossattention = BertAttention(dim, heads, encoder_width, eps)
    self.intermediate = nn.Module()
    self.intermediate.dense = nn.Linear(dim, hidden)
    self.output = BertDenseNorm(hidden, dim, eps)

  def forward(self, x, mask, vision, vision_mask):
    x = self.attention(x, mask)
    x = self.crossattention(x, vision_mask, vision)
    return self.output(F.gelu(self.intermediate.dense(x)), x)


class BertTextLayer(nn.Module):
  """xbert's BertLayer below `fusion_layer`: self-attention, FFN (post-LN)."""

  def __init__(self, dim, heads, hidden, eps=1e-12):
    super().__init__()
    self.attention = BertAttention(dim, heads, dim, eps)
    self.intermediate = nn.Module()
    self.intermediate.dense = nn.Linear(dim, hidden)
    self.output = BertDenseNorm(hidden, dim, eps)

  def forward(self, x, mask):
    x = self.attention(x, mask)
    return self.output(F.gelu(self.intermediate.dense(x)), x)


class UMTStage2(nn.Module):
  """multi_modality/models/umt.py (eval mode, no teacher): vision_encoder (encoder, clip_decoder, pool_norm),
  text_encoder (bert with the position-ids buffer, cls.predictions with the decoder tied to the word
  embeddings), vision_proj, text_proj, itm_head, temp."""

  def __init__(self, dim, depth, heads, hidden, patch, frames, img, clip_dim, k, vocab, t_dim, t_layers, t_heads,
               t_hidden, fusion, max_pos, embed):
    super().__init__()
    self.vision_encoder = PretrainUMT(dim, depth, heads, hidden, patch, frames, img, clip_dim, k, dec_eps=1e-5)
    self.vision_encoder.pool_norm = nn.LayerNorm(dim, eps=1e-6)
    self.frames, self.fusion = frames, fusion
    self.text_encoder = nn.Module()
    bert = self.text_encoder.bert = nn.Module()
    emb = bert.embeddings = nn.Module()
    emb.word_embeddings, emb.position_embeddings = nn.Embedding(vocab, t_dim), nn.Embedding(max_pos, t_dim)
    emb.token_type_embeddings, emb.LayerNorm = nn.Embedding(2, t_dim), nn.LayerNorm(t_dim, eps=1e-12)
    emb.register_buffer("position_ids", torch.arange(max_pos)[None])
    bert.encoder = nn.Module()
    bert.encoder.layer = nn.ModuleList([BertTextLayer(t_dim, t_heads, t_hidden) if i < fusion else
                                        BertFusionLayer(t_dim, t_heads, t_hidden, dim) for i in range(t_layers)])
    self.text_encoder.cls = nn.Module()
    pred = self.text_encoder.cls.predictions = nn.Module()
    pred.transform = nn.Module()
    pred.transform.dense, pred.transform.LayerNorm = nn.Linear(t_dim, t_dim), nn.LayerNorm(t_dim, eps=1e-12)
    pred.bias = nn.Parameter(torch.zeros(vocab))
    pred.decoder = nn.Linear(t_dim, vocab)
    pred.decoder.weight, pred.decoder.bias = emb.word_embeddings.weight, pred.bias  # tied, as HF ties them
    self.vision_proj, self.text_proj = nn.Linear(dim, embed), nn.Linear(t_dim, embed)
    self.itm_head, self.temp = nn.Linear(t_dim, 2), nn.Parameter(torch.tensor(0.07))

  def vision(self, video):  # (B, C, T, H, W) -> (all normed tokens (B, N, D), per-frame embedding (B, T, E))
    enc = self.vision_encoder.encoder
    x = enc.patch_embed(video) + self.vision_encoder.pos_embed
    for blk in enc.blocks:
      x = blk(x)
    x = enc.norm(x)
    b, n, d = x.shape
    pooled = self.vision_encoder.pool_norm(x.view(b, self.frames, -1, d).mean(2))
    return x, self.vision_proj(pooled)

  def text(self, ids, mask):  # -> (hidden (B, L, Dt) of the text-only layers, [CLS] embedding (B, E))
    emb = self.text_encoder.bert.embeddings
    pos = emb.position_ids[:, :ids.shape[1]]
    x = emb.LayerNorm(emb.word_embeddings(ids) + emb.position_embeddings(pos) + emb.token_type_embeddings(0 * ids))
    for layer in self.text_encoder.bert.encoder.layer[:self.fusion]:
      x = layer(x, mask)
    return x, self.text_proj(x[:, 0])

  def fuse(self, hidden, mask, tokens):
    ones = torch.ones(tokens.shape[:2])
    for layer in self.text_encoder.bert.encoder.layer[self.fusion:]:
      hidden = layer(hidden, mask, tokens, ones)
    return hidden

  def itm(self, hidden, mask, tokens):
    return self.itm_head(self.fuse(hidden, mask, tokens)[:, 0])

  def mlm(self, hidden, mask, tokens):
    pred = self.text_encoder.cls.predictions
    t = pred.transform.LayerNorm(F.gelu(pred.transform.dense(self.fuse(hidden, mask, tokens))))
    return pred.decoder(t)
