"""Zero-shot video-text retrieval of a UMT stage-2 model (the official `evaluation` of `tasks/retrieval_utils.py`).

Gallery: every clip of the split (middle frames, center crop) -> per-frame vision embeddings (Nv, T, E) and, for
re-ranking, all T·HW normed tokens (kept on the host: Nv·T·HW·D floats, 2.4 GB for 1k clips at B/16; a 100k
gallery evaluates with `rerank=False`, whose memory is only the embeddings); queries: every caption of every clip (several per clip). Two rows, as the official reports:
VTC similarity alone (mean of per-frame cosines, no temperature), and the top-k VTC candidates of each query
re-scored by the ITM head (logit of "match") on the fusion encoder. Both directions (t2v, v2t); embeddings and
the blocked similarity are sharded over the mesh (umt_jax.retrieval).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from data import records
from umt_jax import evaluation, input_pipeline as ip, retrieval, sharding
from umt_jax.models.umt_stage2 import UMTStage2


@dataclasses.dataclass
class Gallery:
  """What one retrieval evaluation needs from the data: captions, caption -> clip, clip labels."""
  captions: list[str]
  txt2vid: np.ndarray  # (Nt,) int32
  labels: np.ndarray  # (Nv,) int32 (-1 without labels)


def read_captions(source: ip.Source) -> Gallery:
  """Every caption of every clip of `source`, in record order."""
  src = ip.open_source(source.path, source.split, source.data_dir)
  caps, owner, labels = [], [], []
  for i in range(len(src)):
    rec = records.unpack(src[i])
    if not rec["captions"]:
      raise ValueError(f"{source.path} split {source.split!r}: record {i} ({rec['id']}) has no caption; "
                       "retrieval needs at least one per clip")
    caps += rec["captions"]
    owner += [i] * len(rec["captions"])
    labels.append(rec["label"])
  return Gallery(caps, np.asarray(owner, np.int32), np.asarray(labels, np.int32))


def embed_texts(fn, params: Any, ids: np.ndarray, mask: np.ndarray, batch: int, mesh) -> list[np.ndarray]:
  """fn(params, ids (b,L), mask (b,L)) -> tuple of (b, ...) outputs, in batches sharded over the mesh -> host."""
  n = ids.shape[0]
  batch = -(-batch // mesh.size) * mesh.size
  padded = -(-n // batch) * batch
  ids, mask = (np.concatenate([x, np.repeat(x[:1], padded - n, 0)]) for x in (ids, mask))
  jitted = jax.jit(fn, in_shardings=(None, sharding.batch_sharding(mesh), sharding.batch_sharding(mesh)),
                   out_shardings=sharding.replicated(mesh))
  outs = [jax.device_get(jitted(params, ids[s:s + batch], mask[s:s + batch])) for s in range(0, padded, batch)]
  return [np.concatenate(parts)[:n] for parts in zip(*outs)]


def zero_shot(model: UMTStage2, params: Any, tokenizer, source: ip.Source, mesh, *, k: int = 128,
              batch: int = 64, dtype=jnp.float32, rerank: bool = True) -> dict:
  """-> {'emb': metrics of VTC similarity, 'rerank': metrics after ITM re-ranking (if `rerank`), 'table',
  'ranks': {'emb': (t2v, v2t)[, 'rerank': (t2v, v2t)]} (0-based, per query), 'gallery', 'video_emb' (clips, P, E):
  the gallery's embeddings}; metric keys as the official `itm_eval`."""
  gallery = read_captions(source)

  def encode_video(p, video):  # (N, T, S, S, 3) uint8 -> (embeddings (N, P, E), tokens (N, N_tok, D))
    _, tokens, v = model.apply({"params": p}, ip.normalize(video, dtype), None, align=False,
                               method=UMTStage2.encode_vision)
    return v, tokens.astype(jnp.float32)

  # P pooled rows per clip (a time step each, or one mean under token merging) and N_tok tokens, from the model.
  clip = source.clip
  v_shape, tok_shape = (x.shape[1:] for x in jax.eval_shape(
      encode_video, params, jax.ShapeDtypeStruct((1, clip.num_frames, clip.size, clip.size, 3), jnp.uint8)))

  def embed_video(p, video):  # -> (N, P·E [+ N_tok·D]): embeddings [and tokens], flattened
    v, tokens = encode_video(p, video)
    return jnp.concatenate([v.reshape(v.shape[0], -1)] + ([tokens.reshape(v.shape[0], -1)] if rerank else []), -1)

  flat, _ = evaluation.predict(embed_video, params, source, batch, mesh)
  n_emb = int(np.prod(v_shape))
  v_emb = flat[:, :n_emb].reshape((-1,) + v_shape)
  tokens = flat[:, n_emb:].reshape((-1,) + tok_shape) if rerank else None

  ids, mask = tokenizer.batch(gallery.captions)
  encode = lambda p, i, m: model.apply({"params": p}, i, m, method=UMTStage2.encode_text)
  hidden, t_emb = embed_texts(encode, params, ids, mask, batch, mesh)

  t2v_gt, v2t_gt = gallery.txt2vid, retrieval.invert_gt(gallery.txt2vid, v_emb.shape[0])
  t2v_top, _, t2v_ranks = retrieval.blocked_topk_and_ranks(t_emb, v_emb, t2v_gt, mesh, k=k, desc="t2v")
  v2t_top, _, v2t_ranks = retrieval.blocked_topk_and_ranks(v_emb, t_emb, v2t_gt, mesh, k=k, desc="v2t")
  out = {"emb": retrieval.retrieval_metrics(t2v_ranks, v2t_ranks), "gallery": gallery, "video_emb": v_emb,
         "ranks": {"emb": (t2v_ranks, v2t_ranks)}}
  if rerank:
    texts = {"hidden": hidden, "mask": mask}
    itm = lambda p, txt, vid: model.apply({"params": p}, txt["hidden"], txt["mask"], vid,
                                          method=UMTStage2.itm_logits)[:, 1]
    s_t2v = retrieval.rerank(itm, params, texts, tokens, t2v_top, mesh, batch=batch, desc="rerank t2v")
    s_v2t = retrieval.rerank(lambda p, vid, txt: itm(p, txt, vid), params, tokens, texts, v2t_top, mesh,
                             batch=batch, desc="rerank v2t")
    ranks = retrieval.rerank_ranks(t2v_top, s_t2v, t2v_gt), retrieval.rerank_ranks(v2t_top, s_v2t, v2t_gt)
    out["rerank"], out["ranks"]["rerank"] = retrieval.retrieval_metrics(*ranks), ranks
    out["table"] = retrieval.eval_table(out["emb"], out["rerank"], min(k, v_emb.shape[0]))
  return out
