"""vid-TLDR token merging: parity with a PyTorch restatement of the official code (tests/torch_vidtldr.py) layer
by layer, mass and order of the merge, static shapes, the unmerged model unchanged, sharding, bad schedules, and
the merged classifier / UMT / VideoMAE encoders."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests import torch_vidtldr
from tests.helpers import init_params, randomize, to_torch_video
from umt_jax import config_lib
from umt_jax.convert import torch_export
from umt_jax.models import layers, merging
from umt_jax.models.heads import UMTPretrain, VideoClassifier, VideoMAEPretrain
from umt_jax.models.vit import VisionTransformer

TINY = dict(embed_dim=32, depth=4, num_heads=2, mlp_dim=64, patch_size=8)
FRAMES, IMG = 2, 32  # 2×4×4 = 32 tokens
N = 32
_merge = jax.jit(merging.bipartite_merge, static_argnums=2)  # eager dispatch compiles every op: slower
# (8, 0, 4): an r = 0 block between merges (proportional attention only); (16, 0.5, 4): r = N/2 in every merge.
SCHEDULES = [(8, 0, 4), (16, 0.5, 4)]


def _classifier(schedule=(), saliency=True, classes=5, pool="count"):
  return VideoClassifier(encoder={**TINY, "merge_schedule": tuple(schedule), "merge_saliency": saliency},
                         num_classes=classes, merge_pool=pool)


@pytest.fixture(scope="module")
def video():
  return np.random.RandomState(0).randn(2, FRAMES, IMG, IMG, 3).astype(np.float32)


@pytest.fixture(scope="module")
def params(video):
  """Random params (merging adds none), qkv scaled up for peaked attention as in trained models: near-uniform
  attention leaves the min-max normalised saliency ill-conditioned (an H spread of 1e-2 amplifies fp32
  rounding to 1e-5)."""
  p = randomize(flax.linen.meta.unbox(jax.jit(_classifier().init)(jax.random.key(0), video)["params"]), seed=1)
  for i in range(TINY["depth"]):
    qkv = p["encoder"][f"blocks_{i}"]["attn"]["qkv"]
    qkv["kernel"] = qkv["kernel"] * 4
  return p


def _torch(params, schedule, saliency, pool="count"):
  ref = torch_vidtldr.Classifier(32, 4, 2, 64, 8, FRAMES, IMG, 5, schedule, saliency, pool)
  sd = torch_export.classifier_state_dict(params, TINY, FRAMES, IMG)
  ref.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}, strict=True)
  return ref


def _block_out(intermediates, i):
  """Block i's captured output -> (x, size or None): blocks return x alone until the first merge."""
  out = intermediates[f"blocks_{i}"]["__call__"][0]
  return out[:2] if isinstance(out, tuple) else (out, None)


@pytest.mark.parametrize("saliency", [True, False], ids=["vidtldr", "tome"])
@pytest.mark.parametrize("schedule", SCHEDULES, ids=str)
def test_merged_classifier_matches_torch_layer_by_layer(params, video, schedule, saliency):
  """Each torch block runs on the JAX block's input (x and masses), so every block is compared on its own;
  then the whole forward, whose merges must pick the same tokens."""
  model = _classifier(schedule, saliency)
  fwd = jax.jit(lambda p, v: model.apply({"params": p}, v, capture_intermediates=True, mutable=["intermediates"]))
  logits, state = fwd(params, video)
  blocks = state["intermediates"]["encoder"]
  ref = _torch(params, schedule, saliency)
  with torch.no_grad():
    want = ref(to_torch_video(video)).numpy()
    x, size, n = ref.patch_embed(to_torch_video(video)) + ref.pos_embed, None, N
    counts = merging.merge_counts(schedule, N, 4)
    for i in range(4):
      ref.info["size"] = None if size is None else torch.from_numpy(np.array(size))[..., None]
      ref.info["count"] = None  # counts only feed the pool, compared below through the whole forward
      tx = ref.blocks[i](x)
      jx, size = _block_out(blocks, i)
      n -= counts[i]
      assert jx.shape == (2, n, 32) and tx.shape == jx.shape, i
      np.testing.assert_allclose(jx, tx.numpy(), rtol=1e-5, atol=1e-5, err_msg=f"block {i}")
      assert (size is None) == (ref.info["size"] is None), i
      if size is not None:
        np.testing.assert_allclose(size, ref.info["size"][..., 0].numpy(), atol=1e-5, err_msg=f"block {i}")
      x = torch.from_numpy(np.array(jx))
  for i, (tx, _) in enumerate(ref.trace):  # the whole forward: same tokens kept, small drift
    np.testing.assert_allclose(_block_out(blocks, i)[0], tx.numpy(), atol=1e-4)
  np.testing.assert_allclose(logits, want, atol=1e-5)
  unweighted = jax.jit(_classifier(schedule, saliency, pool="mean").apply)({"params": params}, video)
  with torch.no_grad():
    np.testing.assert_allclose(unweighted, _torch(params, schedule, saliency, "mean")(to_torch_video(video)).numpy(),
                               atol=1e-5)
  assert np.abs(np.asarray(unweighted) - np.asarray(logits)).max() > 1e-6  # the two pools differ under merging
  total = np.asarray(size).sum(axis=1)
  if saliency:  # background sources were dropped
    assert np.all(total < N), total
  else:  # every source's mass went into its destination
    np.testing.assert_allclose(total, N, rtol=1e-6)


def test_merge_masses_background_dropped_foreground_weighted():
  rng = np.random.RandomState(2)
  x = jnp.asarray(rng.randn(2, 12, 8), jnp.float32)
  size = jnp.asarray(rng.uniform(1, 3, (2, 12)), jnp.float32)
  r = 4
  # All A tokens background: destinations keep their features and masses, nothing is added.
  bx, bsize, bcount = _merge(x, size, r, jnp.zeros((2, 12)))
  np.testing.assert_array_equal(bcount.sum(1), 12)  # dropped sources still count, in their destinations
  np.testing.assert_allclose(bx[:, 6 - r:], x[:, 1::2], rtol=1e-6)
  np.testing.assert_allclose(bsize[:, 6 - r:], size[:, 1::2], rtol=1e-6)
  np.testing.assert_allclose(bsize.sum(1), size.sum(1) - (size[:, ::2].sum(1) - bsize[:, :6 - r].sum(1)), rtol=1e-6)
  # ŝ = 1 everywhere is the saliency-free merge, and mass is conserved exactly.
  ox, osize, _ = _merge(x, size, r, jnp.ones((2, 12)))
  tx, tsize, _ = _merge(x, size, r, None)
  np.testing.assert_array_equal(ox, tx)
  np.testing.assert_allclose(osize.sum(1), size.sum(1), rtol=1e-6)
  # ŝ = 0.5 on unit masses: each merged source adds half its mass.
  _, hsize, hcount = _merge(x, None, r, jnp.full((2, 12), 0.5))
  np.testing.assert_allclose(hsize.sum(1), 12 - 0.5 * r, rtol=1e-6)
  _, csize, ccount = _merge(x, None, r, None)  # without saliency, from unit masses, counts are the masses
  np.testing.assert_array_equal(hcount, ccount)
  np.testing.assert_array_equal(ccount, csize)
  _, _, count2 = _merge(x, size, r, jnp.zeros((2, 12)), jnp.full((2, 12), 2.0))  # counts in are carried on
  np.testing.assert_array_equal(count2, 2 * ccount)
  # A mixed score against the torch restatement of `merging` + `merge_wavg`.
  score = jnp.asarray(np.where(rng.rand(2, 12) < 0.5, 0.0, rng.rand(2, 12)), jnp.float32)
  mx, msize, _ = _merge(x, size, r, score)
  t = lambda a: torch.from_numpy(np.array(a))
  want_x, want_size = torch_vidtldr.merge_wavg(torch_vidtldr.merging(t(x), r, t(score)[..., None]), t(x),
                                               t(size)[..., None])
  np.testing.assert_allclose(mx, want_x.numpy(), atol=1e-6)
  np.testing.assert_allclose(msize, want_size[..., 0].numpy(), atol=1e-6)


def test_token_order_is_unmerged_a_ascending_then_b():
  x = np.random.RandomState(3).randn(1, 16, 8).astype(np.float32)
  r = 3
  out, _, _ = _merge(jnp.asarray(x), None, r)
  out = np.asarray(out)[0]
  a, b = x[0, ::2], x[0, 1::2]
  unm = [int(np.argmin(np.abs(a - row).sum(1))) for row in out[:8 - r]]
  np.testing.assert_allclose(out[:8 - r], a[unm], atol=1e-6)
  assert unm == sorted(unm) and len(set(unm)) == 8 - r
  same = np.all(np.isclose(out[8 - r:], b, atol=1e-6), axis=1)  # B keeps its order; r sources reach ≤ r of it
  assert same.sum() >= 8 - r and not same.all()


def test_tome_mode_equals_tome_reference():
  """Without saliency the merge is ToMe's `bipartite_soft_matching` + `merge_wavg` on x; ToMe leaves the
  unmerged A tokens in match order (it sorts them only with a class token), vid-TLDR in ascending order."""
  rng = np.random.RandomState(4)
  x, size = rng.randn(2, 20, 8).astype(np.float32), rng.uniform(1, 3, (2, 20)).astype(np.float32)
  r = 6
  out, osize, _ = _merge(jnp.asarray(x), jnp.asarray(size), r)
  tx, tsize = torch_vidtldr.tome_merge_wavg(torch_vidtldr.bipartite_soft_matching(torch.from_numpy(x), r),
                                            torch.from_numpy(x), torch.from_numpy(size)[..., None])
  tx, tsize = tx.numpy(), tsize[..., 0].numpy()
  k = 10 - r
  np.testing.assert_allclose(out[:, k:], tx[:, k:], atol=1e-5)
  np.testing.assert_allclose(osize[:, k:], tsize[:, k:], rtol=1e-6)
  for i in range(2):
    order = np.lexsort(tx[i, :k].T)
    np.testing.assert_allclose(np.asarray(out[i, :k])[np.lexsort(np.asarray(out[i, :k]).T)], tx[i, :k][order],
                               atol=1e-6)


def test_saliency_matches_get_objective_score():
  logits = np.random.RandomState(5).randn(2, 3, 10, 10).astype(np.float32) * 3
  attn = torch.from_numpy(logits).softmax(-1)
  want = torch_vidtldr.get_objective_score(attn)[..., 0].numpy()
  got = merging.saliency(jnp.asarray(attn.mean(1).numpy()))
  np.testing.assert_allclose(got, want, atol=1e-6)
  assert np.all((got == 0) | ((got > 0) & (got <= 1))) and np.any(got == 0) and np.any(got == 1)
  logits[0, :, 3, 7] = -np.inf  # an exact 0 in the head-mean attention: 0·log 0 = 0 (the official code gives NaN)
  attn = torch.from_numpy(logits).softmax(-1).mean(1)
  assert torch.isnan(torch_vidtldr.get_objective_score(attn[:, None])).any()
  assert np.isfinite(np.asarray(merging.saliency(jnp.asarray(attn.numpy())))).all()


def test_attention_return_attn_options():
  """'mean' (written-out softmax) and 'cls' give the fused path's output; 'mean' ignores the size bias."""
  x = jax.random.normal(jax.random.key(0), (2, 6, 16))
  bias = jnp.log(jax.random.uniform(jax.random.key(1), (2, 6), minval=1, maxval=3))[:, None, None, :]
  p = randomize(init_params(layers.Attention(2), x), seed=2)

  @jax.jit
  def run(b):
    return [layers.Attention(2, return_attn=kind).apply({"params": p}, x, b) for kind in (None, "mean", "cls")]

  (y0, (ym0, mean0), (yc0, cls0)), (y, (ym, mean), (yc, _)) = run(None), run(bias)
  for want, got in ((y0, ym0), (y0, yc0), (y, ym), (y, yc)):
    np.testing.assert_allclose(got, want, atol=1e-6)
  assert not np.allclose(y, y0, atol=1e-3)  # the bias matters for the output...
  np.testing.assert_allclose(mean, mean0, atol=1e-7)  # ...not for the returned probabilities
  assert mean.shape == (2, 6, 6) and mean.dtype == jnp.float32
  np.testing.assert_allclose(mean.sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(cls0, mean0[:, 0], atol=1e-6)
  with pytest.raises(ValueError, match="return_attn"):
    jax.eval_shape(lambda: layers.Attention(2, return_attn="all").apply({"params": p}, x))


def test_static_shapes_under_jit(params, video):
  schedule = SCHEDULES[0]
  enc = VisionTransformer(**TINY, merge_schedule=schedule)
  p = params["encoder"]
  traces = []

  def fwd(p, v):
    traces.append(1)
    return enc.apply({"params": p}, v)[0]

  n = N - sum(merging.merge_counts(schedule, N, 4))
  assert jax.eval_shape(fwd, p, video).shape == (2, n, 32)  # shapes follow from the schedule alone
  jitted = jax.jit(fwd)
  a = jitted(p, video)
  traced = len(traces)
  b = jitted(p, video[::-1] * 2)  # other values, other merges: the same program
  assert a.shape == b.shape == (2, n, 32) and len(traces) == traced


def test_empty_schedule_is_bit_identical(params, video):
  want = np.asarray(jax.jit(_classifier().apply)({"params": params}, video))
  plain = VideoClassifier(encoder=TINY, num_classes=5)
  np.testing.assert_array_equal(jax.jit(plain.apply)({"params": params}, video), want)
  np.testing.assert_array_equal(jax.jit(_classifier((0, 0, 0, 0)).apply)({"params": params}, video), want)
  assert "merge_schedule" not in config_lib.student_kwargs(config_lib.base("finetune").model)
  cfg = config_lib.base("finetune")
  cfg.model.merge.schedule = [8, 4]
  kw = config_lib.student_kwargs(cfg.model)
  assert kw["merge_schedule"] == (8, 4) and kw["merge_saliency"] is True
  from umt_jax.trainers import finetune
  cfg.model.merge.pool = "mean"
  assert finetune.build(cfg, 5).merge_pool == "mean"


def test_sharded_merged_classifier_equals_one_device(params, video):
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
  rules = (("activation_batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"),
           ("activation_heads", "tensor"), ("activation_mlp", "tensor"))
  model = _classifier(SCHEDULES[1])
  batch = np.concatenate([video, video[:, ::-1]])  # 4 clips over data × fsdp
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), batch))
  shardings = flax.linen.logical_to_mesh_sharding(flax.linen.get_partition_spec(boxed), mesh, rules)["params"]
  sharded = jax.device_put(params, shardings)
  assert sharded["encoder"]["blocks_0"]["attn"]["qkv"]["kernel"].sharding.spec == PartitionSpec(
      "fsdp", None, "tensor", None)

  def fwd(p, v):
    with flax.linen.logical_axis_rules(rules):
      return model.apply({"params": p}, v)

  with jax.set_mesh(mesh):
    out = jax.jit(fwd)(sharded, jax.device_put(batch, NamedSharding(mesh, PartitionSpec(("data", "fsdp")))))
  want = jax.jit(model.apply)({"params": params}, batch)
  np.testing.assert_allclose(out, want, atol=1e-5)


@pytest.mark.parametrize("schedule,match", [
    ((17,), "entry 0 is 17: block 0 can merge at most 16 of its 32"),
    ((8, 13), "entry 1 is 13: block 1 can merge at most 12 of its 24"),
    ((0.9,), "entry 0 is 0.9: block 0 can merge at most 16"),
    ((-1,), "entry 0 is -1: expected an int count"),
    ((2.5,), "entry 0 is 2.5: expected an int count"),
    ((1, 1, 1, 1, 1), "has 5 entries for a depth-4 encoder"),
])
def test_bad_schedule_is_reported(video, schedule, match):
  with pytest.raises(ValueError, match=match.replace(".", r"\.")):
    merging.merge_counts(schedule, N, 4)
  with pytest.raises(ValueError, match="model.merge.schedule"):
    VisionTransformer(**TINY, merge_schedule=schedule).init(jax.random.key(0), video)


def test_bad_pool_is_reported(params, video):
  with pytest.raises(ValueError, match=r"model.merge.pool 'max': expected one of \('count', 'mean'\)"):
    _classifier(SCHEDULES[0], pool="max").apply({"params": params}, video)


def test_merge_counts_official_semantics():
  assert merging.merge_counts([600, 200, 100], 2352, 12) == (600, 200, 100) + (0,) * 9
  assert merging.merge_counts([0.29, 0.5], 100, 3) == (28, 36, 0)  # int(N·r) of the block's current N
  assert merging.merge_counts([], 10, 2) == (0, 0)


def test_umt_encoders_run_merged(video):
  enc = {**TINY, "depth": 2, "merge_schedule": (8, 4)}
  for pool_norm in (False, True):  # stage-1 encoder (shapes), stage-2 vision tower (run)
    model = UMTPretrain(encoder=enc, clip_dim=16, num_align_layers=2, pool_norm=pool_norm)
    run = lambda v: model.init_with_output(jax.random.key(0), v, None, True, False, True)[0]
    aligned, tokens, pooled = jax.jit(run)(video) if pool_norm else jax.eval_shape(run, video)
    assert aligned is None and tokens.shape == (2, N - 12, 32) and pooled.shape == (2, 1, 32)
    if pool_norm:
      assert np.isfinite(np.asarray(pooled)).all()
    with pytest.raises(ValueError, match="alignment decoders"):
      jax.eval_shape(lambda v: model.init(jax.random.key(0), v, None, True, True, True), video)


def test_videomae_encoder_runs_merged(video):
  visible = jnp.tile(jnp.arange(0, N, 2)[None], (2, 1))  # 16 visible tokens
  enc = VisionTransformer(**{**TINY, "depth": 2}, use_norm=True, merge_schedule=(4, 0.25))
  x, _ = jax.jit(lambda v, i: enc.init_with_output(jax.random.key(0), v, i)[0])(video, visible)
  assert x.shape == (2, 16 - 4 - 3, 32) and np.isfinite(np.asarray(x)).all()
  model = VideoMAEPretrain(encoder={**TINY, "merge_schedule": (4,)}, decoder_dim=16, decoder_depth=1, decoder_heads=2)
  with pytest.raises(ValueError, match="VideoMAE decoder"):
    jax.eval_shape(lambda v, i: model.init(jax.random.key(0), v, i, i[:, :4]), video, visible)
