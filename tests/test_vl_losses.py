"""Stage-2 video-text objectives (VTC, VTM, MLM) against formulas written independently here (criterions.py)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import torch
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from umt_jax import losses


def _np_vtc(vision, text, idx, temp):
  v = vision / np.linalg.norm(vision, axis=-1, keepdims=True)
  t = text / np.linalg.norm(text, axis=-1, keepdims=True)
  sim = np.einsum("bte,ne->btn", v, t).mean(1) / temp
  pos = (idx[:, None] == idx[None, :]).astype(np.float64)
  targets = pos / pos.sum(1, keepdims=True)

  def ce(s):
    logp = s - s.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    return -(logp * targets).sum(1).mean()

  return (ce(sim) + ce(sim.T)) / 2


def _inputs(b=16, t=2, e=8, seed=0):
  rng = np.random.RandomState(seed)
  idx = rng.permutation(np.arange(b) // 2)  # every video twice, the duplicates on different shards
  return rng.randn(b, t, e).astype(np.float32), rng.randn(b, e).astype(np.float32), idx.astype(np.int32)


def test_vtc_matches_formula_and_torch_gradients():
  vision, text, idx = _inputs()
  temp = 0.07
  fn = jax.jit(jax.value_and_grad(losses.vtc_loss, argnums=(0, 1, 3)))
  got, grads = fn(vision, text, idx, jnp.float32(temp))
  assert got.dtype == jnp.float32 and got.shape == ()
  sim_v2t, sim_t2v = losses.vtc_similarity(vision, text, temp)
  np.testing.assert_allclose(sim_t2v, np.asarray(sim_v2t).T)
  np.testing.assert_allclose(got, _np_vtc(vision.astype(np.float64), text.astype(np.float64), idx, temp), rtol=1e-5)

  # gradients against torch autograd of the official formula (one rank, so no AllGather scaling)
  tv, tt, ttemp = (torch.tensor(x, requires_grad=True) for x in (vision, text, np.float32(temp)))
  nv, nt = torch.nn.functional.normalize(tv, dim=-1), torch.nn.functional.normalize(tt, dim=-1)
  sim = torch.einsum("mld,nd->mln", nv, nt).mean(1) / ttemp
  ti = torch.from_numpy(idx).view(-1, 1)
  tgt = torch.eq(ti, ti.T).float()
  tgt = tgt / tgt.sum(1, keepdim=True)
  loss = (-(torch.log_softmax(sim, 1) * tgt).sum(1).mean() - (torch.log_softmax(sim.T, 1) * tgt).sum(1).mean()) / 2
  loss.backward()
  for g, want in zip(grads, (tv.grad, tt.grad, ttemp.grad)):
    np.testing.assert_allclose(g, want.numpy(), rtol=1e-4, atol=1e-6)


def test_vtc_sharded_equals_single_device():
  vision, text, idx = _inputs()
  temp = jnp.float32(0.05)
  fn = jax.jit(jax.value_and_grad(losses.vtc_loss, argnums=(0, 1, 3)))
  one = jax.devices()[0]
  want_loss, want_grads = fn(*(jax.device_put(x, one) for x in (vision, text, idx, temp)))

  mesh = Mesh(np.array(jax.devices()).reshape(8), ("data",))
  batch = NamedSharding(mesh, P("data"))
  args = [jax.device_put(x, batch) for x in (vision, text, idx)]
  loss, grads = fn(*args, jax.device_put(temp, NamedSharding(mesh, P())))
  assert len(args[0].sharding.device_set) == 8
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  for g, w in zip(grads, want_grads):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)


def test_clamp_temp_value_and_straight_through_gradient():
  for t, want in ((0.0001, 0.001), (0.07, 0.07), (2.0, 0.5)):
    value, grad = jax.value_and_grad(lambda x: 3.0 * losses.clamp_temp(x))(jnp.float32(t))
    np.testing.assert_allclose(value, 3.0 * want, rtol=1e-6)
    assert float(grad) == 3.0  # not zeroed at the bound, as the official's in-place clamp


_DRAWS = jax.jit(jax.vmap(losses.vtm_negatives, in_axes=(0, None, None, None)))  # one compile for both tests


def _weights(sim, idx):
  """The official sampling weights: softmax(sim + 1e-4) per row, same-idx entries 0, rows renormalised."""
  w = np.exp(sim + 1e-4 - sim.max(1, keepdims=True))
  w = w / w.sum(1, keepdims=True)
  w[idx[:, None] == idx[None, :]] = 0
  return w / w.sum(1, keepdims=True)


def test_vtm_negatives_never_positive_and_follow_weights():
  rng = np.random.RandomState(0)
  idx = np.array([0, 1, 1, 2, 3], np.int32)
  sim_v2t, sim_t2v = rng.randn(5, 5).astype(np.float32) * 1.5, rng.randn(5, 5).astype(np.float32) * 1.5
  n = 4000
  neg_video, neg_text = _DRAWS(jax.random.split(jax.random.key(0), n), sim_v2t, sim_t2v, idx)
  assert neg_video.dtype == neg_text.dtype == jnp.int32 and neg_video.shape == (n, 5)
  for neg, sim in ((neg_video, sim_t2v), (neg_text, sim_v2t)):  # video per text from sim_t2v, text per video v2t
    neg = np.asarray(neg)
    assert (idx[neg] != idx[None, :]).all()
    w = _weights(sim, idx)
    for r in range(5):
      counts = np.bincount(neg[:, r], minlength=5)
      expected = n * w[r]
      assert (np.abs(counts - expected) <= 5 * np.sqrt(expected * (1 - w[r])) + 1).all(), (r, counts, expected)
  # the two draws use different keys: independent, not the same column pattern
  assert not np.array_equal(neg_video, neg_text)


def test_vtm_negatives_without_candidates_and_nan():
  key, negatives = jax.random.key(1), jax.jit(losses.vtm_negatives)
  sim = jnp.zeros((3, 3))
  neg_v, neg_t = negatives(key, sim, sim, jnp.array([7, 7, 7]))  # every entry a positive
  assert neg_v.tolist() == neg_t.tolist() == [-1, -1, -1]
  assert negatives(key, sim[:1, :1], sim[:1, :1], jnp.array([0]))[0].tolist() == [-1]  # B = 1
  neg_v, _ = negatives(key, sim, sim, jnp.array([7, 7, 8]))
  assert neg_v[:2].tolist() == [2, 2] and int(neg_v[2]) in (0, 1)  # the only candidates

  nan_row = np.random.RandomState(1).randn(5, 5).astype(np.float32)
  nan_row[0, 1] = np.nan  # NaN -> uniform over the allowed columns (the official's nan_to_num 1e-2)
  neg, _ = _DRAWS(jax.random.split(key, 4000), nan_row, nan_row, np.arange(5, dtype=np.int32))
  counts = np.bincount(np.asarray(neg[:, 0]), minlength=5)
  assert counts[0] == 0 and (np.abs(counts[1:] - 1000) < 120).all(), counts


def test_vtm_loss():
  rng = np.random.RandomState(2)
  logits = rng.randn(12, 2).astype(np.float32)
  labels = np.array([1] * 4 + [0] * 8)
  logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  nll = -logp[np.arange(12), labels]
  np.testing.assert_allclose(losses.vtm_loss(jnp.asarray(logits)), nll.mean(), rtol=1e-6)
  valid = np.ones(12, bool)
  valid[[5, 10]] = False  # e.g. rows vtm_negatives returned -1 for
  np.testing.assert_allclose(losses.vtm_loss(jnp.asarray(logits), jnp.asarray(valid)), nll[valid].mean(), rtol=1e-6)
  total, _ = losses.combine({"vtm": losses.vtm_loss(jnp.asarray(logits))}, {"vtm": 1.0})
  assert total.dtype == jnp.float32


def test_mlm_mask_statistics():
  b, l, vocab, pad, cls, sep, mask_id = 512, 32, 20, 0, 2, 3, 4
  rng = np.random.RandomState(3)
  lengths = rng.randint(3, l + 1, b)
  ids = rng.randint(5, vocab, (b, l)).astype(np.int32)
  ids[:, 0] = cls
  ids[np.arange(b), lengths - 1] = sep
  attn = (np.arange(l)[None] < lengths[:, None]).astype(np.int32)
  ids[attn == 0] = pad
  fn = jax.jit(functools.partial(losses.mlm_mask, vocab_size=vocab, mask_id=mask_id, exempt_ids=(pad, cls)))
  inp, labels = (np.asarray(x) for x in fn(jax.random.key(4), jnp.asarray(ids), jnp.asarray(attn)))

  masked = labels != -100
  maskable = (attn == 1) & (ids != cls)
  assert not masked[~maskable].any() and (inp[~maskable] == ids[~maskable]).all()  # [PAD], [CLS], padding
  assert masked[ids == sep].any()  # [SEP] is not exempt
  np.testing.assert_array_equal(labels[masked], ids[masked])
  assert (inp[~masked] == ids[~masked]).all()
  assert abs(masked.sum() / maskable.sum() - 0.5) < 0.02
  to_mask, kept = inp[masked] == mask_id, inp[masked] == ids[masked]
  randomized = ~to_mask & ~kept
  n = masked.sum()
  assert abs(to_mask.sum() / n - 0.8) < 0.02
  assert abs(kept.sum() / n - (0.1 + 0.1 / vocab)) < 0.015  # a random draw may hit the original id
  assert abs(randomized.sum() / n - 0.1 * (1 - 2 / vocab)) < 0.015  # ...or [MASK]
  rand_ids = inp[masked][randomized]
  assert rand_ids.min() >= 0 and rand_ids.max() < vocab and np.isin([pad, cls, sep], rand_ids).all()


def test_mlm_loss():
  rng = np.random.RandomState(5)
  logits = rng.randn(2, 6, 11).astype(np.float32)
  labels = np.full((2, 6), -100, np.int32)
  labels[0, 1], labels[0, 4], labels[1, 2] = 3, 10, 0
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  want = -np.mean([logp[0, 1, 3], logp[0, 4, 10], logp[1, 2, 0]])
  fn = jax.jit(jax.value_and_grad(losses.mlm_loss))
  np.testing.assert_allclose(fn(logits, labels)[0], want, rtol=1e-6)
  value, grad = fn(logits, np.full((2, 6), -100, np.int32))
  assert float(value) == 0.0 and np.isfinite(grad).all() and not np.asarray(grad).any()
