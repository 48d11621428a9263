"""Student ViT: official parameter counts, token subsets, layer outputs, dtypes, remat, logical axes."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import count, init_params
from umt_jax.models.heads import UMTPretrain, VideoClassifier, VideoMAEPretrain
from umt_jax.models.vit import VARIANTS, VisionTransformer, vit_kwargs

TINY = dict(embed_dim=32, depth=3, num_heads=2, mlp_dim=64, patch_size=8)


def _abstract(model, *args):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), *args))["params"]


@pytest.mark.parametrize("variant,classes,expected", [("B", 400, 85_944_976), ("B", 710, 86_183_366),
                                                      ("B", 174, 85_771_182), ("L", 400, 303_484_304)])
def test_classifier_param_count_matches_official(variant, classes, expected):
  model = VideoClassifier(encoder=vit_kwargs(variant), num_classes=classes)
  assert count(_abstract(model, jnp.zeros((1, 8, 224, 224, 3)))) == expected


def test_umt_pretrain_param_count_matches_official():
  model = UMTPretrain(encoder=vit_kwargs("B"), clip_dim=512)
  assert count(_abstract(model, jnp.zeros((1, 8, 224, 224, 3)), jnp.zeros((1, 320), jnp.int32))) == 88_005_888


def test_variant_table():
  assert {k: (v.embed_dim, v.depth, v.num_heads) for k, v in VARIANTS.items()} == {
      "Ti": (192, 12, 3), "S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "H": (1280, 32, 16),
      "g": (1408, 40, 16)}
  assert VARIANTS["g"].patch_size == 14 and VARIANTS["g"].mlp_dim == 6144
  with pytest.raises(ValueError, match="unknown ViT variant"):
    vit_kwargs("XL")


def test_all_tokens_subset_equals_full_and_layers_are_returned():
  vit = VisionTransformer(**TINY, use_norm=True)
  video = jax.random.normal(jax.random.key(1), (2, 2, 16, 16, 3))
  params = init_params(vit, video)
  full, feats = vit.apply({"params": params}, video, None, (1, 2))
  idx = jnp.tile(jnp.arange(8)[None], (2, 1))
  sub, feats_sub = vit.apply({"params": params}, video, idx, (1, 2))
  np.testing.assert_allclose(full, sub, atol=1e-6)
  assert feats.shape == (2, 2, 8, 32)
  np.testing.assert_allclose(feats[1], full, atol=1e-6)  # block 2 is the last block, both normed
  part, _ = vit.apply({"params": params}, video, idx[:, :3], ())
  assert part.shape == (2, 3, 32)
  with pytest.raises(ValueError, match="return_layers"):
    vit.apply({"params": params}, video, None, (5,))


def test_bad_video_shape_is_reported():
  vit = VisionTransformer(**TINY)
  with pytest.raises(ValueError, match="not divisible into tubelets"):
    vit.init(jax.random.key(0), jnp.zeros((1, 2, 20, 16, 3)))


def test_bf16_compute_fp32_params_and_remat():
  video = jax.random.normal(jax.random.key(2), (2, 2, 16, 16, 3))
  ref = VisionTransformer(**TINY)
  params = init_params(ref, video)
  out32, _ = ref.apply({"params": params}, video)
  bf16 = VisionTransformer(**TINY, dtype=jnp.bfloat16)
  out16, _ = bf16.apply({"params": params}, video)
  assert out16.dtype == jnp.bfloat16
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(init_params(bf16, video)))
  np.testing.assert_allclose(np.asarray(out16, np.float32), out32, atol=0.15, rtol=0.05)

  def loss(p, model):
    return jnp.sum(model.apply({"params": p}, video)[0] ** 2)

  g_ref = jax.grad(loss)(params, ref)
  for policy in ("full", "dots"):
    g = jax.grad(loss)(params, VisionTransformer(**TINY, remat_policy=policy))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g, g_ref)


def test_drop_path_is_stochastic_in_training_only():
  vit = VisionTransformer(**TINY, drop_path_rate=0.5)
  video = jax.random.normal(jax.random.key(3), (4, 2, 16, 16, 3))
  params = init_params(vit, video)
  det1, _ = vit.apply({"params": params}, video)
  det2, _ = vit.apply({"params": params}, video)
  np.testing.assert_array_equal(det1, det2)
  tr_a, _ = vit.apply({"params": params}, video, deterministic=False, rngs={"dropout": jax.random.key(0)})
  tr_b, _ = vit.apply({"params": params}, video, deterministic=False, rngs={"dropout": jax.random.key(0)})
  tr_c, _ = vit.apply({"params": params}, video, deterministic=False, rngs={"dropout": jax.random.key(1)})
  np.testing.assert_array_equal(tr_a, tr_b)
  assert not np.allclose(tr_a, det1) and not np.allclose(tr_a, tr_c)


@pytest.mark.parametrize("model,args", [
    (UMTPretrain(encoder=TINY, clip_dim=16, num_align_layers=2),
     (jnp.zeros((1, 2, 16, 16, 3)), jnp.zeros((1, 4), jnp.int32))),
    (VideoMAEPretrain(encoder={**TINY, "tubelet_size": 2}, decoder_dim=16, decoder_depth=1, decoder_heads=2),
     (jnp.zeros((1, 4, 16, 16, 3)), jnp.zeros((1, 2), jnp.int32), jnp.zeros((1, 4), jnp.int32))),
    (VideoClassifier(encoder=TINY, num_classes=5), (jnp.zeros((1, 2, 16, 16, 3)),)),
])
def test_every_param_has_logical_axes(model, args):
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), *args))["params"]
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, flax.linen.LogicallyPartitioned))
  assert leaves and all(isinstance(x, flax.linen.LogicallyPartitioned) for x in leaves)
  for x in leaves:
    assert len(x.names) == len(x.value.shape)


def test_sharded_apply_on_a_mesh_with_rules():
  """Init and apply under a (data=2, fsdp=2, tensor=2) mesh with logical rules: same numbers as unsharded."""
  from jax.sharding import Mesh, NamedSharding
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
  rules = (("activation_batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"),
           ("activation_heads", "tensor"), ("activation_mlp", "tensor"))
  vit = VisionTransformer(**{**TINY, "num_heads": 2})
  video = jax.random.normal(jax.random.key(4), (4, 2, 16, 16, 3))
  boxed = jax.eval_shape(lambda: vit.init(jax.random.key(0), video))
  specs = flax.linen.get_partition_spec(boxed)
  shardings = flax.linen.logical_to_mesh_sharding(specs, mesh, rules)
  params = flax.linen.meta.unbox(jax.jit(lambda: vit.init(jax.random.key(0), video), out_shardings=shardings)())
  qkv = params["params"]["blocks_0"]["attn"]["qkv"]["kernel"]
  assert qkv.sharding.spec == jax.sharding.PartitionSpec("fsdp", None, "tensor", None)

  def fwd(p, v):
    with flax.linen.logical_axis_rules(rules):
      return vit.apply(p, v)[0]

  with jax.set_mesh(mesh):
    out = jax.jit(fwd)(params, jax.device_put(video, NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))))
  want = vit.apply(jax.device_get(params), video)[0]
  np.testing.assert_allclose(out, want, atol=1e-5)


def test_block_stack_backward_does_not_fuse_across_layers():
  """Guards the LayerNorm op order (issue 15): with the two-pass variance XLA:CPU fused each layer's
  weight-grad input with the residual cotangents of all later layers (~100 operands at 6 blocks),
  making the backward pass quadratic in depth. A linear-cost backward keeps fusions small."""
  import re
  from umt_jax.models import vit

  class Stack(flax.linen.Module):
    @flax.linen.compact
    def __call__(self, x):
      for i in range(6):
        x = vit.Block(num_heads=2, mlp_dim=64, name=f"b{i}")(x)
      return x

  x = jnp.ones((2, 16, 32))
  params = Stack().init(jax.random.PRNGKey(0), x)
  grad = jax.jit(jax.grad(lambda p: Stack().apply(p, x).sum()))
  hlo = grad.lower(params).compile().as_text()
  operands = [len(re.findall(r"%[\w.-]+", line.split("fusion(", 1)[1].split(")", 1)[0]))
              for line in hlo.splitlines() if " fusion(" in line]
  assert operands and max(operands) < 40, max(operands)


def test_cudnn_operands_pass_jax_cudnn_layout_check():
  """On GPU the 'cudnn'/'auto' path must take per-key biases and masks (B, 1, 1, S): BERT's padding mask,
  vid-TLDR's log-mass. jax's cuDNN attention accepts a bias only at full query and key lengths, so
  `layers.cudnn_bias` broadcasts; its output passes jax's own layout check (which runs without a GPU) where
  the raw (B, 1, 1, S) operand does not, and attends exactly as the unbroadcast one."""
  from jax._src.cudnn import fused_attention_stablehlo as fa
  from umt_jax.models import layers

  q, k, v = (jax.random.normal(jax.random.key(i), (2, 6, 4, 16), jnp.bfloat16) for i in range(3))
  layout = fa._normalize_layout("BTNH")
  mass = jnp.log(jnp.arange(1.0, 7.0))[None, None, None, :].repeat(2, 0)  # (B, 1, 1, S) fp32
  mask = (jnp.arange(6) < 4)[None, None, None, :].repeat(2, 0)
  def check(x):  # what jax's cuDNN attention does with a bias (float) or a mask (bool) before the kernel
    bias, msk = (None, x) if x.dtype == bool else (x, None)
    fa.check_layout(q, k, v, fa.combine_bias_and_mask(bias, msk, q.dtype), *[None] * 6, layout)

  for raw in (mass, mask):
    with pytest.raises(ValueError, match="same seq length"):
      check(raw)
    full = layers.cudnn_bias(raw, q, k)
    assert full.shape == (2, 1, 6, 6) and full.dtype == (jnp.bool_ if raw.dtype == bool else q.dtype)
    check(full)
  qf, kf, vf = (x.astype(jnp.float32) for x in (q, k, v))
  want = layers.dot_attention(qf, kf, vf, mass, 0.25)
  got = layers.dot_attention(qf, kf, vf, layers.cudnn_bias(mass, qf, kf), 0.25)
  np.testing.assert_allclose(got, want, atol=1e-6)
  assert layers.cudnn_bias(None, q, k) is None


def test_auto_attention_picks_cudnn_only_where_it_runs(monkeypatch):
  from umt_jax.models import layers
  auto = lambda *a, **k: layers.attention_impl("auto", *a, **k)
  assert auto(jnp.bfloat16, 64) == "blocked"  # this CPU
  assert layers.attention_impl("cudnn", jnp.float32, 7) == "cudnn"  # explicit choices pass through
  assert layers.attention_impl(None, jnp.bfloat16, 64) is None

  class Hopper:
    platform, compute_capability = "gpu", "9.0"
  monkeypatch.setattr(jax, "devices", lambda *a: [Hopper()])
  assert auto(jnp.bfloat16, 64) == "cudnn"
  assert auto(jnp.bfloat16, 64, (968, 968), bias=True) == "cudnn"
  assert auto(jnp.bfloat16, 64, (967, 967), bias=True) == "xla"  # cuDNN's biased backward needs even lengths
  assert auto(jnp.bfloat16, 64, (967, 967)) == "cudnn"
  assert auto(jnp.float32, 64) == "xla" and auto(jnp.bfloat16, 136) == "xla" and auto(jnp.bfloat16, 60) == "xla"


def test_cpu_attention_in_blocks_of_heads_equals_one_block(monkeypatch):
  """'blocked' attention ('auto' on CPU), beyond BLOCK_ABOVE bytes of fp32 logits, runs a few heads at a time
  (blocks whose logits stay in cache): the same values and gradients as the batched dots, with a per-key
  bias, a full one with causal masking, and a last block smaller than the others."""
  from umt_jax.models import layers
  assert layers.head_block(4, 6, 1568, 1568) == 2  # S/16 at 8×224²: 236 MB of logits
  assert layers.head_block(192, 1, 197, 197) == 27  # the CLIP teacher's frames at 224², heads of 155 kB
  assert layers.head_block(4, 6, 392, 392) is None  # 15 MB: one block
  q, k, v = (jax.random.normal(jax.random.key(i), (2, 12, 5, 8)) for i in range(3))  # B·H = 10 heads
  per_key = jax.random.normal(jax.random.key(3), (2, 1, 1, 12))
  full = jax.random.normal(jax.random.key(4), (2, 5, 12, 12))

  def run(bias, causal):
    f = lambda q, k, v: layers.dot_attention(q, k, v, bias, 0.3, causal, "blocked")
    grads = jax.grad(lambda *a: (f(*a) ** 2).sum(), argnums=(0, 1, 2))(q, k, v)
    return f(q, k, v), grads, str(jax.make_jaxpr(f)(q, k, v))

  for bias, causal in ((None, False), (per_key, False), (full, True)):
    want, want_grads, want_jaxpr = run(bias, causal)  # 10 heads of 12×12 logits: one block
    monkeypatch.setattr(layers, "BLOCK_ABOVE", 0)
    monkeypatch.setattr(layers, "BLOCK_BYTES", 3 * 4 * 12 * 12)  # 3 heads a block: 3, 3, 3 and 1
    got, got_grads, got_jaxpr = run(bias, causal)
    assert "scan" in got_jaxpr and "scan" not in want_jaxpr
    np.testing.assert_allclose(got, want, atol=1e-6)
    for g, w in zip(got_grads, want_grads):
      np.testing.assert_allclose(g, w, atol=1e-5)
    monkeypatch.undo()


def test_attention_check_benchmark_runs_every_case_and_reports_cudnn_absent_on_cpu():
  """benchmarks/attention_check.py (the GPU check of cuDNN against XLA attention): on CPU the XLA rows run
  and equal the fp32 reference exactly in fp32; the cudnn rows say why they did not run."""
  from benchmarks import attention_check
  lines = attention_check.main(["--shapes", "2x8x2x8", "--runs", "1", "--dtype", "float32"])
  rows = [line.split(" | ") for line in lines if line.startswith("| 2x8x2x8")]
  assert [(r[1], r[2]) for r in rows] == [(c, i) for c in attention_check.CASES for i in ("xla", "cudnn")]
  for r in rows:
    if r[2] == "xla":
      assert r[3] == "no" and float(r[4]) == 0.0 and float(r[5]) == 0.0
    else:
      assert r[3].startswith("did not run")
  with pytest.raises(SystemExit, match="batch x tokens"):
    attention_check.main(["--shapes", "2x8x2"])
