"""Retrieval machinery against brute-force numpy: full score matrix, stable argsort of -s."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from umt_jax import retrieval, sharding

T = 4  # frames; the mean over them of small-int dot products is exact in f32, so ties are exact ties


def _data(seed=0, nv=37, e=4):
  """Small-int videos (Nv, T, E) and captions (Nt, E), 1-3 captions per video: scores full of ties."""
  rng = np.random.default_rng(seed)
  txt2vid = np.repeat(np.arange(nv), rng.integers(1, 4, nv)).astype(np.int32)
  video = rng.integers(-1, 2, (nv, T, e)).astype(np.float32)
  text = rng.integers(-1, 2, (len(txt2vid), e)).astype(np.float32)
  return video, text, txt2vid


def _dot(q, g):  # (b, [T,] E) x (n, [T,] E) -> (b, n): mean over frames of dot products
  q, g = (x.mean(1) if x.ndim == 3 else x for x in (q, g))
  return q @ g.T


def _pair_dot(text, video):  # (b, E), (b, T, E) -> (b,)
  return jnp.einsum("be,bte->b", text, video) / T


def _np_ranks(s, gt):
  pos = np.argsort(np.argsort(-s, axis=1, kind="stable"), axis=1)  # each item's position in the stable sort
  return np.array([min(pos[i, g] for g in row if g >= 0) for i, row in enumerate(gt)])


def _mesh8():
  return sharding.make_mesh({"data": 2, "fsdp": 4})


def _mesh1():
  return sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])


def test_mean_cosine_time_axis_on_either_side():
  rng = np.random.default_rng(1)
  v, t = rng.normal(size=(5, T, 8)).astype(np.float32), rng.normal(size=(6, 8)).astype(np.float32)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  ref = np.einsum("vte,ne->vnt", unit(v), unit(t)).mean(-1)  # official get_sim
  np.testing.assert_allclose(retrieval.mean_cosine(v, t), ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(retrieval.mean_cosine(t, v), ref.T, rtol=1e-5, atol=1e-6)
  both = np.einsum("ase,bte->abst", unit(v), unit(v)).mean((-1, -2))
  np.testing.assert_allclose(retrieval.mean_cosine(v, v), both, rtol=1e-5, atol=1e-6)


def test_gt_helpers():
  np.testing.assert_array_equal(retrieval.as_gt(np.array([2, 0])), [[2], [0]])
  np.testing.assert_array_equal(retrieval.as_gt([[1, 2], 3, np.array([4])]), [[1, 2], [3, -1], [4, -1]])
  np.testing.assert_array_equal(retrieval.invert_gt(np.array([0, 0, 1, 0]), 3), [[0, 1, 3], [2, -1, -1],
                                                                              [-1, -1, -1]])


def test_ranks_topk_and_recall_equal_brute_force():
  video, text, txt2vid = _data()
  vid2txt = retrieval.invert_gt(txt2vid, len(video))
  mesh, k = _mesh8(), 7
  for q, g, gt in ((text, video, txt2vid[:, None]), (video, text, vid2txt)):  # t2v; v2t: any caption counts
    s = np.asarray(_dot(q, g))
    assert len(np.unique(s)) < s.size // 4  # plenty of ties
    ti, ts, ranks = retrieval.blocked_topk_and_ranks(q, g, gt, mesh, score=_dot, k=k, block=16)
    assert len(q) % 16 and len(g) % 8  # a partial last block and a padded gallery
    np.testing.assert_array_equal(ranks, _np_ranks(s, gt))
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(ts, np.take_along_axis(s, order, 1))
    np.testing.assert_array_equal(ti, order)  # stable: ties by lower index, the same as numpy's stable sort
    assert ti.dtype == np.int32 and ts.dtype == np.float32 and ranks.dtype == np.int32
    assert ti.max() < len(g)  # padding never selected
    r = retrieval.recall_at_k(ranks)
    ref = _np_ranks(s, gt)
    assert r["r5"] == pytest.approx(100 * np.mean(ref < 5))
    assert r["r_mean"] == pytest.approx(np.mean([100 * np.mean(ref < x) for x in (1, 5, 10)]))


def test_padding_never_wins():
  """All real scores negative: the zero-padded gallery rows would win if they were scored."""
  rng = np.random.default_rng(2)
  g = -rng.integers(1, 4, (11, 3)).astype(np.float32)
  q = np.ones((5, 3), np.float32)
  gt = rng.integers(0, 11, (5, 1)).astype(np.int32)
  ti, ts, ranks = retrieval.blocked_topk_and_ranks(q, jnp.asarray(g), gt, _mesh8(), score=lambda a, b: a @ b.T,
                                                   k=11, block=4)  # a device gallery is padded on device
  s = q @ g.T
  np.testing.assert_array_equal(ranks, _np_ranks(s, gt))
  assert np.isfinite(ts).all() and sorted(ti[0]) == list(range(11))


def test_one_and_eight_devices_agree():
  """Exact scores: identical results. Float cosines: the per-shard matmuls may round differently in the last bit,
  the selections and ranks agree."""
  video, text, txt2vid = _data(seed=3)
  pair = lambda p, a, b: p * _pair_dot(a, b)
  outs, rer = [], []
  for m in (_mesh1(), _mesh8(), sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})):  # tensor: replicas
    outs.append(retrieval.blocked_topk_and_ranks(text, video, txt2vid[:, None], m, score=_dot, k=10, block=8))
    rer.append(retrieval.rerank(pair, jnp.float32(-1), text, video, outs[0][0], m, batch=24))
  for out, r in zip(outs[1:], rer[1:]):
    for a, b in zip(outs[0] + (rer[0],), out + (r,)):
      np.testing.assert_array_equal(a, b)
  rng = np.random.default_rng(3)
  v, t = rng.normal(size=(29, T, 16)).astype(np.float32), rng.normal(size=(45, 16)).astype(np.float32)
  gt = rng.integers(0, 29, (45, 1)).astype(np.int32)
  (i1, s1, r1), (i8, s8, r8) = (retrieval.blocked_topk_and_ranks(t, v, gt, m, k=10, block=8)
                                for m in (_mesh1(), _mesh8()))
  np.testing.assert_array_equal(i1, i8)
  np.testing.assert_array_equal(r1, r8)
  np.testing.assert_allclose(s1, s8, rtol=1e-6, atol=1e-7)


def test_rerank_reverses_topk_and_misses_get_k():
  video, text, txt2vid = _data(seed=4)
  vid2txt = retrieval.invert_gt(txt2vid, len(video))
  mesh, k = _mesh8(), 5
  neg = lambda p, a, b: p * _pair_dot(a, b)
  for q, g, gt, pair in ((text, video, txt2vid[:, None], neg),
                         (video, text, vid2txt, lambda p, a, b: neg(p, b, a))):
    s = np.asarray(_dot(q, g))
    ti, ts, full = retrieval.blocked_topk_and_ranks(q, g, gt, mesh, score=_dot, k=k, block=32)
    new = retrieval.rerank(pair, jnp.float32(-1), q, g, ti, mesh, batch=40)
    np.testing.assert_array_equal(new, -ts)  # the pairs scored are exactly the top-k candidates
    ranks = retrieval.rerank_ranks(ti, new, gt)
    for i in range(len(q)):
      cand = ti[i][np.argsort(-new[i], kind="stable")]  # reversed top-k, ties kept in top-k order
      hits = np.flatnonzero(np.isin(cand, gt[i][gt[i] >= 0]))
      assert ranks[i] == (hits[0] if len(hits) else k)
    assert set(np.flatnonzero(ranks == k)) == set(np.flatnonzero(full >= k))  # misses: GT outside the top-k
    assert (ranks == k).any() and (ranks < k).any()
    assert (ranks != np.minimum(full, k)).any()  # the order inside the top-k did change


def test_rerank_ranks_tie_rule():
  ti = np.array([[3, 1, 2], [0, 1, 2]])
  ranks = retrieval.rerank_ranks(ti, np.array([[0.1, 0.5, 0.5], [1.0, 0.0, 0.0]]), np.array([[2, -1], [7, 8]]))
  np.testing.assert_array_equal(ranks, [1, 3])  # 1 before 2 on the tie; no GT in the top-3 -> k


def test_metrics_names_and_table():
  t2v, v2t = np.array([0, 3, 7, 20]), np.array([0, 0, 12, 4])
  assert retrieval.recall_at_k(t2v) == {"r1": 25.0, "r5": 50.0, "r10": 75.0, "r_mean": 50.0}
  m = retrieval.retrieval_metrics(t2v, v2t)
  assert m["img_r1"] == 25.0 and m["txt_r1"] == 50.0 and m["txt_r5"] == 75.0  # txt_*: video -> text
  assert m["r_mean"] == pytest.approx((50.0 + (50 + 75 + 75) / 3) / 2)
  table = retrieval.eval_table(m, m).splitlines()
  assert len(table) == 4 and table[2].startswith("| VTC similarity | 25.00 | 50.00 | 75.00 | 50.00 |")
  assert "ITM re-ranked top-128" in table[3]
