"""Zero-shot retrieval evaluation (model-agnostic): blocked, sharded similarity with top-k and ground-truth ranks,
re-ranking of the top-k candidates by a pair scorer, R@1/5/10 with the official `itm_eval` key names.

Setting: Nv videos, Nt captions, caption j belongs to video txt2vid[j]; a video has one or more captions. Queries
are scored against the whole gallery one block at a time; the gallery sits on the devices sharded over the mesh's
batch axes and never gathers, and only (Nq, k) results reach the host, so the same code serves 1k x 1k and
100k x 100k galleries. Ranks are 0-based positions in a *stable* descending sort of the scores (ties: lower gallery
index first). The official ranks with `np.argsort(score)[::-1]`, whose tie order is that of quicksort, i.e.
undefined; ours is deterministic and equals it wherever the scores have no ties.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from umt_jax import sharding

Score = Callable[[Any, Any], jax.Array]


def mean_cosine(q: jax.Array, g: jax.Array) -> jax.Array:
  """q (bq, [T,] E), g (Ng, [T,] E) -> (bq, Ng) f32: the mean over frames of per-frame cosines, no temperature
  (the official test-time VTC score, `get_sim`); a time axis on both sides averages over all frame pairs."""
  def pooled(x):  # mean_t <x̂_t, ŷ> = <mean_t x̂_t, ŷ>: pool the unit vectors, one matmul instead of T
    x = x.astype(jnp.float32)
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)  # F.normalize's eps
    return x.mean(axis=1) if x.ndim == 3 else x
  return jnp.matmul(pooled(q), pooled(g).T, precision=lax.Precision.HIGHEST)


def as_gt(groups: Any) -> np.ndarray:
  """Correct gallery items per query -> (N, G) int32, padded with -1. Accepts (N,) ints (txt2vid), an already
  padded (N, G) array, or a sequence of ints / index arrays (vid2txt)."""
  if isinstance(groups, np.ndarray) and groups.dtype.kind in "iu" and groups.ndim <= 2:
    return groups.reshape(len(groups), -1).astype(np.int32)
  rows = [np.atleast_1d(np.asarray(r, np.int32)) for r in groups]
  out = np.full((len(rows), max(map(len, rows))), -1, np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


def invert_gt(txt2vid: np.ndarray, num_videos: int) -> np.ndarray:
  """txt2vid (Nt,) -> vid2txt (Nv, G) int32: each video's captions, padded with -1."""
  txt2vid = np.asarray(txt2vid)
  return as_gt([np.flatnonzero(txt2vid == v) for v in range(num_videos)])


def _axes(mesh: Mesh) -> tuple[str, ...]:
  return tuple(a for a in sharding.BATCH_AXES if a in mesh.axis_names)


def _num_shards(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in _axes(mesh))


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _num_rows(tree: Any) -> int:
  return jax.tree.leaves(tree)[0].shape[0]


def _put(tree: Any, n: int, mesh: Mesh) -> Any:
  """Rows padded to n (repeating the last row) and sharded over the batch axes; host or device input."""
  sh = sharding.batch_sharding(mesh)

  def one(x):
    pad = lambda xp, x: xp.pad(x, [(0, n - x.shape[0])] + [(0, 0)] * (x.ndim - 1), mode="edge")
    if isinstance(x, jax.Array):
      return jax.jit(lambda x: pad(jnp, x), out_shardings=sh)(x)
    x = pad(np, np.asarray(x))
    return jax.make_array_from_callback(x.shape, sh, lambda i: x[i])
  return jax.tree.map(one, tree)


def _replicated(x: np.ndarray, mesh: Mesh) -> jax.Array:
  return jax.make_array_from_callback(x.shape, sharding.replicated(mesh), lambda i: x[i])


def _take(tree: Any, idx: jax.Array, mesh: Mesh, scatter: bool) -> Any:
  """Rows idx (b,) of row-sharded arrays without gathering the arrays: each shard contributes the rows it holds,
  zeros elsewhere, and a sum assembles them -> (b, ...) sharded over the batch axes if scatter, else replicated."""
  axes = _axes(mesh)

  def local(x, idx):
    n = x.shape[0]
    off = lax.axis_index(axes) * n
    own = ((idx >= off) & (idx < off + n)).reshape((-1,) + (1,) * (x.ndim - 1))
    rows = jnp.where(own, x[jnp.clip(idx - off, 0, n - 1)], 0)
    rows = rows.astype(jnp.int32) if x.dtype == jnp.bool_ else rows  # psum has no bool
    rows = lax.psum_scatter(rows, axes, tiled=True) if scatter else lax.psum(rows, axes)
    return rows.astype(x.dtype)

  return jax.shard_map(lambda t, i: jax.tree.map(lambda x: local(x, i), t), mesh=mesh,
                       in_specs=(P(axes), P()), out_specs=P(axes) if scatter else P())(tree, idx)


def _bar(total: int, desc: str) -> tqdm.tqdm:
  """Progress with ETA on process 0; tqdm's disable=None turns it off without a TTY."""
  return tqdm.tqdm(total=total, desc=desc, disable=None if jax.process_index() == 0 else True)


def _drain(step: Callable[[int], Any], starts: Sequence[int], bar: tqdm.tqdm, sizes: Sequence[int]) -> list:
  """step(start) for every start, one call in flight while the previous one's result comes to the host."""
  out, pending = [], None
  for start, size in zip(starts, sizes):
    nxt = step(start)
    if pending is not None:
      out.append(jax.device_get(pending))
    pending = nxt
    bar.update(size)
  out.append(jax.device_get(pending))
  bar.close()
  return out


def blocked_topk_and_ranks(queries: Any, gallery: Any, gt: np.ndarray, mesh: Mesh, score: Score = mean_cosine,
                           k: int = 128, block: int = 256, desc: str = "retrieval"
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Scores of every query against the whole gallery, one (block, Ng) slab at a time.

  queries (Nq, ...) and gallery (Ng, ...): arrays or pytrees of them, host or device; `score(q (b, ...),
  g (n, ...)) -> (b, n)` is jittable and local (it sees one gallery shard). gt (Nq, G) int32: the correct gallery
  items of each query, padded with -1, at least one per query. Returns topk_idx (Nq, k) int32, topk_scores (Nq, k)
  f32 (descending, ties by lower index) and ranks (Nq,) int32: min over the query's GT items g of
  #(s > s_g) + #(s == s_g and index < g), the best GT's position in a stable descending sort.
  """
  gt = as_gt(gt)
  if (gt < 0).all(axis=1).any():
    raise ValueError("every query needs at least one ground-truth gallery item")
  nq, ng = _num_rows(queries), _num_rows(gallery)
  k, d, axes = min(k, ng), _num_shards(mesh), _axes(mesh)
  qs, gs = _put(queries, _round_up(nq, d), mesh), _put(gallery, _round_up(ng, d), mesh)

  def local(q, g, gt):  # q (b, ...), gt (b, G) replicated; g (n, ...) this shard's gallery rows
    s = score(q, g).astype(jnp.float32)
    n = s.shape[1]
    off = lax.axis_index(axes) * n
    idx = off + jnp.arange(n)
    s = jnp.where(idx < ng, s, -jnp.inf)  # padding never ranks ahead nor gets selected
    # GT scores read from this very matrix: a recomputed score may differ in the last bit and misplace ties
    own = (gt >= off) & (gt < off + n)
    s_gt = lax.pmax(jnp.where(own, jnp.take_along_axis(s, jnp.clip(gt - off, 0, n - 1), 1), -jnp.inf), axes)
    # positions are monotone in (score desc, index asc), so the min over GTs is the best GT's position
    best = s_gt.max(axis=1, keepdims=True)
    g_best = jnp.where((gt >= 0) & (s_gt == best), gt, jnp.iinfo(jnp.int32).max).min(axis=1, keepdims=True)
    ahead = (s > best) | ((s == best) & (idx < g_best))
    ranks = lax.psum(ahead.sum(axis=1, dtype=jnp.int32), axes)
    # per-shard top-k, then the k best of the D·k; shards are concatenated in index order, top_k keeps it on ties
    ts, ti = lax.top_k(s, min(k, n))
    ts = lax.all_gather(ts, axes, axis=1, tiled=True, to="invarying")
    ti = lax.all_gather(idx[ti], axes, axis=1, tiled=True, to="invarying")
    ts, j = lax.top_k(ts, k)
    return jnp.take_along_axis(ti, j, 1).astype(jnp.int32), ts, ranks

  @jax.jit
  def run(qs, gs, rows, gt):
    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(axes), P()), out_specs=P())(
        _take(qs, rows, mesh, scatter=False), gs, gt)

  def step(start):
    rows = np.minimum(np.arange(start, start + block), nq - 1).astype(np.int32)  # last block: repeat the last query
    return run(qs, gs, _replicated(rows, mesh), _replicated(gt[rows], mesh))

  starts = range(0, nq, block)
  out = _drain(step, starts, _bar(nq, desc), [min(block, nq - s) for s in starts])
  ti, ts, ranks = (np.concatenate(x)[:nq] for x in zip(*out))
  return ti, ts, ranks


def rerank(pair_score: Callable[[Any, Any, Any], jax.Array], params: Any, queries: Any, gallery: Any,
           topk_idx: np.ndarray, mesh: Mesh, batch: int = 256, desc: str = "rerank") -> np.ndarray:
  """Re-scores every (query i, candidate topk_idx[i, j]) pair: `pair_score(params, query_items (b, ...),
  gallery_items (b, ...)) -> (b,)` (UMT: the ITM head's logit[1]), jitted, in batches of pairs sharded over the
  mesh's batch axes; params is a jit argument (not a baked-in constant). queries (Nq, ...) and gallery (Ng, ...):
  arrays or pytrees, host or device, kept sharded by rows. -> (Nq, k) f32."""
  nq, k = topk_idx.shape
  d = _num_shards(mesh)
  batch = _round_up(min(batch, nq * k), d)
  qs, gs = _put(queries, _round_up(nq, d), mesh), _put(gallery, _round_up(_num_rows(gallery), d), mesh)
  n = _round_up(nq * k, batch)
  qi = np.zeros(n, np.int32)  # padding pairs (0, 0): scored, then dropped
  gi = np.zeros(n, np.int32)
  qi[:nq * k], gi[:nq * k] = np.repeat(np.arange(nq), k), topk_idx.reshape(-1)

  run = jax.jit(lambda params, qs, gs, qi, gi: pair_score(
      params, _take(qs, qi, mesh, scatter=True), _take(gs, gi, mesh, scatter=True)).astype(jnp.float32),
      out_shardings=sharding.replicated(mesh))

  step = lambda s: run(params, qs, gs, _replicated(qi[s:s + batch], mesh), _replicated(gi[s:s + batch], mesh))
  starts = range(0, n, batch)
  out = _drain(step, starts, _bar(nq * k, desc), [min(batch, nq * k - s) for s in starts])
  return np.concatenate(out)[:nq * k].reshape(nq, k)


def rerank_ranks(topk_idx: np.ndarray, rerank_scores: np.ndarray, gt: np.ndarray) -> np.ndarray:
  """topk_idx (Nq, k), rerank_scores (Nq, k), gt (Nq, G) -> ranks (Nq,) int32: the best GT's position among the
  re-scored top-k (stable descending by the new scores, ties by top-k order); k when no GT is in the top-k.

  Such a miss counts as a miss for every R@K with K <= k; R@K for K > k is not meaningful (the official puts -100
  on the non-candidates, so there it depends on the tie order of many -100s).
  """
  gt = as_gt(gt)
  nq, k = topk_idx.shape
  order = np.argsort(-rerank_scores, axis=1, kind="stable")
  cand = np.take_along_axis(topk_idx, order, 1).astype(np.int64)
  n = int(max(cand.max(), gt.max())) + 1  # pair keys q·n + g: membership by one sorted search, linear memory
  q = np.arange(nq, dtype=np.int64)[:, None]
  hit = np.isin(q * n + cand, (q * n + gt)[gt >= 0])
  return np.where(hit.any(1), hit.argmax(1), k).astype(np.int32)


def recall_at_k(ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
  """0-based ranks -> {"r1", "r5", "r10", "r_mean"} in percent."""
  ranks = np.asarray(ranks)
  out = {f"r{k}": 100.0 * float((ranks < k).mean()) for k in ks}
  out["r_mean"] = float(np.mean(list(out.values())))
  return out


def retrieval_metrics(t2v_ranks: np.ndarray, v2t_ranks: np.ndarray) -> dict[str, float]:
  """The official `itm_eval` keys (not rounded): txt_* = video->text (the text is retrieved), img_* = text->video,
  r_mean = the mean of txt_r_mean and img_r_mean."""
  txt, img = recall_at_k(v2t_ranks), recall_at_k(t2v_ranks)
  out = {f"txt_{m}": v for m, v in txt.items()} | {f"img_{m}": v for m, v in img.items()}
  out["r_mean"] = (txt["r_mean"] + img["r_mean"]) / 2
  return out


def eval_table(emb_metrics: dict[str, float], rerank_metrics: dict[str, float], k: int = 128) -> str:
  """The two official rows (`*_emb/`: VTC similarity alone; `test/`: ITM re-ranked top-k) as a markdown table."""
  cols = ["img_r1", "img_r5", "img_r10", "txt_r1", "txt_r5", "txt_r10", "r_mean"]
  lines = ["| | t2v R@1 | t2v R@5 | t2v R@10 | v2t R@1 | v2t R@5 | v2t R@10 | mean |", "|---" * 8 + "|"]
  for name, m in (("VTC similarity", emb_metrics), (f"ITM re-ranked top-{k}", rerank_metrics)):
    lines.append(f"| {name} | " + " | ".join(f"{m[c]:.2f}" for c in cols) + " |")
  return "\n".join(lines)
