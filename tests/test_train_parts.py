"""The small modules trainers are built from: mesh and rules, optimizer recipe pieces, mixup, tokenizer."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from umt_jax import mixup, optim, sharding, tokenizer


def test_mesh_fill_and_errors():
  assert sharding.mesh_shape({"data": -1, "fsdp": 2}, 8) == (4, 2, 1)
  assert sharding.make_mesh({"fsdp": -1, "tensor": 2}).shape == {"data": 1, "fsdp": 4, "tensor": 2}
  with pytest.raises(ValueError, match="unknown axes"):
    sharding.mesh_shape({"model": 2}, 8)
  with pytest.raises(ValueError, match="needs 6 devices; 8 are available"):
    sharding.mesh_shape({"data": 3, "fsdp": 2}, 8)
  with pytest.raises(ValueError, match="at most one -1"):
    sharding.mesh_shape({"data": -1, "fsdp": -1}, 8)
  with pytest.raises(ValueError, match="mesh axes are"):
    sharding.rules_from_config([["embed", "model"]])


def test_small_params_replicated_and_indivisible_axes_dropped():
  mesh = sharding.make_mesh({"fsdp": 4, "tensor": 2})
  import flax.linen as nn
  boxed = {"big": nn.LogicallyPartitioned(jax.ShapeDtypeStruct((64, 256), jnp.float32), ("embed", "mlp")),
           "odd": nn.LogicallyPartitioned(jax.ShapeDtypeStruct((6, 256), jnp.float32), ("embed", "mlp")),
           "small": nn.LogicallyPartitioned(jax.ShapeDtypeStruct((64,), jnp.float32), ("embed",))}
  sh = sharding.param_shardings(boxed, mesh, sharding.DEFAULT_RULES, min_fsdp_size=1000)
  P = jax.sharding.PartitionSpec
  assert sh["big"].spec == P("fsdp", "tensor") and sh["odd"].spec == P(None, "tensor") and sh["small"].spec == P()


def test_layer_decay_matches_the_official_assignment():
  params = {"patch_embed": {"proj": {"kernel": jnp.zeros((2, 2))}}, "blocks_0": {"w": jnp.zeros((2, 2))},
            "blocks_11": {"w": jnp.zeros((2, 2))}, "fc_norm": {"scale": jnp.zeros(2)}, "head": {"kernel": jnp.zeros((2, 2))}}
  s = optim.layer_scales(params, 12, 0.75)
  assert s["patch_embed"]["proj"]["kernel"] == pytest.approx(0.75 ** 13)
  assert s["blocks_0"]["w"] == pytest.approx(0.75 ** 12) and s["blocks_11"]["w"] == pytest.approx(0.75)
  assert s["head"]["kernel"] == 1.0 and s["fc_norm"]["scale"] == 1.0
  mask = optim.decay_mask({"a": {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros(2)}, "pos_embed": jnp.zeros((3, 4))})
  assert mask == {"a": {"kernel": True, "bias": False}, "pos_embed": False}
  # Split-head biases are 1-D in torch (no decay); a 0-d param (stage 2's temp) is decayed, as officially.
  mask = optim.decay_mask({"attn": {"q_bias": jnp.zeros((2, 4)), "qkv": {"kernel": jnp.zeros((4, 3, 2, 2))}},
                           "query": {"bias": jnp.zeros((2, 4))}, "temp": jnp.zeros(())})
  assert mask == {"attn": {"q_bias": False, "qkv": {"kernel": True}}, "query": {"bias": False}, "temp": True}


def test_adamw_chain_equals_torch_adamw_semantics():
  """One step of our chain vs the closed form of torch.optim.AdamW (decoupled decay scaled by lr·lr_scale)."""
  import ml_collections
  cfg = ml_collections.ConfigDict(dict(lr=0.1, min_lr=0.1, warmup_lr=0.0, warmup_epochs=0.0, scale_lr_by_batch=False,
                                       b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.05, layer_decay=0.5, grad_clip=0.0,
                                       batch_size=256))
  p = {"blocks_0": {"kernel": jnp.full((2, 2), 2.0)}, "head": {"bias": jnp.ones(2)}}
  g = {"blocks_0": {"kernel": jnp.full((2, 2), 0.3)}, "head": {"bias": jnp.full(2, -0.2)}}
  tx, _ = optim.make_optimizer(cfg, p, 10, 1.0, depth=1)
  u, _ = tx.update(g, tx.init(p), p)
  lr0 = 0.1 * 0.5 ** 1  # blocks_0: layer id 1 of depth 1 -> 0.5^(1+1-1)
  np.testing.assert_allclose(u["blocks_0"]["kernel"], -lr0 * (1.0 + 0.05 * 2.0), rtol=1e-5)  # m̂/√v̂ = sign(g) = 1
  np.testing.assert_allclose(u["head"]["bias"], 0.1 * 1.0, rtol=1e-5)  # no decay on 1-D params


def test_mixup_and_cutmix_targets():
  video = jnp.stack([jnp.zeros((2, 8, 8, 3)), jnp.ones((2, 8, 8, 3))])
  labels = jnp.array([0, 1])
  for key in range(6):
    mixed, t = mixup.mix(jax.random.key(key), video, labels, 4, smoothing=0.1)
    np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-6)
    # the mixed clip 0 holds (1 - λ) of clip 1; its target weight on class 1 says the same
    frac = float(mixed[0].mean())
    lam1 = (float(t[0, 1]) - 0.1 / 4) / 0.9
    assert frac == pytest.approx(lam1, abs=1e-5)
  same, t = mixup.mix(jax.random.key(0), video, labels, 4, mixup_alpha=0, cutmix_alpha=0, smoothing=0.0)
  np.testing.assert_array_equal(same, video)
  np.testing.assert_array_equal(t, jax.nn.one_hot(labels, 4))


def test_word_tokenizer_conventions():
  tok = tokenizer.WordTokenizer(["a", "red", "square"], context_length=6)
  ids = tok("A red square moving")
  assert ids.tolist() == [1, tok.index["a"], tok.index["red"], tok.index["square"], tok.eot, 0]
  assert int(np.argmax(ids)) == 4  # CLIP finds end-of-text with argmax
  assert tok("a a a a a a a a")[-1] == tok.eot


@pytest.mark.parametrize("recipe,arg", [("umt_k710", "B"), ("umt_k710", "L"), ("finetune_kinetics", "B,k710"),
                                        ("finetune_kinetics", "L,k400"), ("finetune_kinetics", "B,ssv2"),
                                        ("demo", "clip"), ("demo", "umt"), ("demo", "finetune"), ("demo", "scratch"),
                                        ("demo", "umt_stage2"), ("umt_stage2", "B,5m"), ("umt_stage2", "L,25m"),
                                        ("retrieval", "B,zeroshot"), ("retrieval", "L,msrvtt")])
def test_recipes_load_and_name_real_fields(recipe, arg):
  import importlib.util
  import os
  from umt_jax import config_lib
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", f"{recipe}.py")
  spec = importlib.util.spec_from_file_location(recipe, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(arg)
  ref = config_lib.base(c.trainer)
  extra = set(c.to_dict()) - set(ref.to_dict()) - {"clip"}
  assert not extra, f"{recipe}:{arg} adds unknown top-level fields {extra}"
  config_lib.student_kwargs(c.model)
  with pytest.raises(ValueError):
    module.get_config("nonsense")
