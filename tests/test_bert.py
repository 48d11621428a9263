"""BERT text encoder with fusion layers: HF BertForMaskedLM and official fusion-layer parity < 1e-4, import, dropout."""
import dataclasses

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch

from tests import torch_ref
from tests.helpers import randomize
from umt_jax.convert import bert_import, layout
from umt_jax.models import layers
from umt_jax.models.bert import BERT_PRESETS, BertConfig, BertForMaskedLM

ATOL = 1e-4
TINY = BertConfig(vocab_size=99, hidden_size=32, num_layers=4, num_heads=4, intermediate_size=64,
                  max_position_embeddings=40, fusion_layer=2, encoder_width=24)


def _perturb(module: torch.nn.Module, seed: int = 0) -> None:
  """Random values everywhere (HF inits biases at 0 and LayerNorms at 1, which would hide mistakes)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      p.add_(0.05 * torch.randn(p.shape, generator=g))


def _inputs(b=3, length=9, nv=5, seed=0):
  rng = np.random.RandomState(seed)
  ids = rng.randint(1, 99, size=(b, length)).astype(np.int32)
  mask = np.ones((b, length), np.int32)
  mask[1, 5:] = 0  # padded texts
  mask[2, 2:] = 0
  ids[mask == 0] = 0
  vision = rng.randn(b, nv, TINY.encoder_width).astype(np.float32)
  vmask = np.ones((b, nv), np.int32)
  vmask[0, 3:] = 0
  return ids, mask, vision, vmask


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
  from transformers import BertConfig as HFConfig, BertForMaskedLM as HFBert
  cfg = HFConfig(vocab_size=99, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=40, hidden_act="gelu")
  cfg._attn_implementation = "eager"
  model = HFBert(cfg).eval()
  _perturb(model)
  folder = tmp_path_factory.mktemp("hf_bert")
  model.save_pretrained(folder)
  return model, str(folder)


@pytest.fixture(scope="module")
def tiny_params():
  return randomize(bert_import.init_params(TINY), seed=1)  # (numpy init: `model.init` compiles for seconds)


def test_hf_text_pass_and_mlm_logits_match(hf_folder, capsys):
  hf, folder = hf_folder
  cfg, params = bert_import.import_bert(folder, fusion_layer=4, encoder_width=32)
  assert (cfg.num_layers, cfg.num_heads, cfg.intermediate_size, cfg.fusion_layer) == (4, 4, 64, 4)
  assert "initialised" not in capsys.readouterr().out  # text-only: nothing fresh
  ids, mask, _, _ = _inputs()
  model = BertForMaskedLM(cfg)
  hidden = model.apply({"params": params}, ids, mask, method=BertForMaskedLM.text)
  logits = model.apply({"params": params}, hidden, method=BertForMaskedLM.mlm_logits)
  assert logits.dtype == jnp.float32 and logits.shape == (3, 9, 99)
  with torch.no_grad():
    out = hf(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long(),
             output_hidden_states=True)
  np.testing.assert_allclose(hidden, out.hidden_states[-1].numpy(), atol=ATOL)
  np.testing.assert_allclose(logits, out.logits.numpy(), atol=ATOL)


def test_fresh_cross_attention_and_single_safetensors_file(hf_folder, capsys):
  _, folder = hf_folder
  cfg, a = bert_import.import_bert(folder, fusion_layer=2, encoder_width=24, seed=3)
  printed = capsys.readouterr().out
  assert "bert.encoder.layer.2.crossattention" in printed and "bert.encoder.layer.3.crossattention" in printed
  assert a["bert"]["encoder"]["layer_2"]["crossattention"]["self"]["key"]["kernel"].shape == (24, 4, 8)
  assert "crossattention" not in a["bert"]["encoder"]["layer_1"]
  # a lone file: sizes from the tensors, heads given (32 / 64 would be 0)
  with pytest.raises(ValueError, match="pass num_heads"):
    bert_import.read_hf_bert(f"{folder}/model.safetensors")
  cfg_b, b = bert_import.import_bert(f"{folder}/model.safetensors", fusion_layer=2, encoder_width=24, seed=3,
                                     num_heads=4)
  assert cfg_b == cfg
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_bert_model_keys_without_prefix_and_legacy_layernorm_names(hf_folder, tmp_path, capsys):
  hf, folder = hf_folder
  sd = {k.removeprefix("bert.").replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias",
                                                                                       "LayerNorm.beta"): v
        for k, v in hf.state_dict().items() if k.startswith("bert.")}  # a BertModel file, TF-era names
  sd["pooler.dense.weight"] = torch.zeros(32, 32)
  torch.save(sd, tmp_path / "pytorch_model.bin")
  cfg, params = bert_import.import_bert(str(tmp_path / "pytorch_model.bin"), fusion_layer=4, encoder_width=32,
                                        num_heads=4)
  assert "cls.predictions" in capsys.readouterr().out  # the MLM head starts fresh
  _, ref = bert_import.import_bert(folder, fusion_layer=4, encoder_width=32)
  jax.tree.map(np.testing.assert_array_equal, params["bert"], ref["bert"])


def test_bad_checkpoints_name_every_offending_key(hf_folder, tmp_path):
  hf, _ = hf_folder
  sd = {k: v.clone() for k, v in hf.state_dict().items()}
  del sd["bert.encoder.layer.1.output.dense.bias"]
  sd["bert.encoder.layer.2.intermediate.dense.weight"] = torch.zeros(65, 32)
  sd["bert.encoder.extra.weight"] = torch.zeros(3)
  sd["cls.predictions.decoder.weight"] = sd["bert.embeddings.word_embeddings.weight"].clone()  # tied: fine
  path = str(tmp_path / "broken.safetensors")
  safetensors.torch.save_file(sd, path)
  with pytest.raises(ValueError) as e:
    bert_import.import_bert(path, fusion_layer=4, encoder_width=32, num_heads=4)
  msg = str(e.value)
  assert "broken.safetensors" in msg and "missing keys (1): bert.encoder.layer.1.output.dense.bias" in msg
  assert "unexpected keys (1): bert.encoder.extra.weight" in msg
  assert "bert.encoder.layer.2.intermediate.dense.weight: shape (32, 65)" in msg  # (torch [65, 32] transposed)
  sd = {k: v.clone() for k, v in hf.state_dict().items()}
  sd["cls.predictions.decoder.weight"] = torch.zeros(99, 32)
  torch.save(sd, tmp_path / "untied.bin")
  with pytest.raises(ValueError, match="differs from the word embeddings"):
    bert_import.read_hf_bert(str(tmp_path / "untied.bin"), num_heads=4)
  with pytest.raises(ValueError, match="fusion_layer 5 outside"):
    bert_import.import_bert(path, fusion_layer=5, encoder_width=32, num_heads=4)


def test_fusion_layers_match_the_official_layer(tiny_params):
  ids, mask, vision, vmask = _inputs()
  model = BertForMaskedLM(TINY)
  v = {"params": tiny_params}
  hidden = model.apply(v, ids, mask, method=BertForMaskedLM.text)
  got = model.apply(v, hidden, mask, vision, vmask, method=BertForMaskedLM.fusion)
  sd = {k: torch.from_numpy(x) for k, x in layout.to_state_dict(tiny_params).items()}
  x = torch.from_numpy(np.array(hidden))
  for i in range(TINY.fusion_layer, TINY.num_layers):
    ref = torch_ref.BertFusionLayer(32, 4, 64, TINY.encoder_width).eval()
    prefix = f"bert.encoder.layer.{i}."
    ref.load_state_dict({k.removeprefix(prefix): t for k, t in sd.items() if k.startswith(prefix)}, strict=True)
    with torch.no_grad():
      x = ref(x, torch.from_numpy(mask), torch.from_numpy(vision), torch.from_numpy(vmask))
  np.testing.assert_allclose(got, x.numpy(), atol=ATOL)
  # no vision mask = all tokens valid
  np.testing.assert_allclose(model.apply(v, hidden, mask, vision, None, method=BertForMaskedLM.fusion),
                             model.apply(v, hidden, mask, vision, np.ones_like(vmask), method=BertForMaskedLM.fusion),
                             atol=1e-6)


def test_layout_round_trip_and_official_names(tiny_params):
  sd = layout.to_state_dict(tiny_params)
  assert sd["bert.encoder.layer.3.crossattention.self.key.weight"].shape == (32, 24)
  assert sd["bert.encoder.layer.0.attention.output.dense.weight"].shape == (32, 32)
  assert sd["bert.encoder.layer.0.attention.self.query.bias"].shape == (32,)
  assert sd["bert.embeddings.word_embeddings.weight"].shape == (99, 32)
  assert not any("decoder" in k or "pooler" in k for k in sd)
  assert len(sd) == 5 + 4 * 16 + 2 * 10 + 5
  back = layout.from_state_dict(sd, tiny_params)
  jax.tree.map(np.testing.assert_array_equal, back, tiny_params)
  # q/k/v head split matches torch's view(B, L, H, Dh)
  q = tiny_params["bert"]["encoder"]["layer_0"]["attention"]["self"]["query"]["kernel"]
  np.testing.assert_array_equal(sd["bert.encoder.layer.0.attention.self.query.weight"][8:16].T, q[:, 1])


def test_logical_axes_on_every_param():
  ids, mask, vision, _ = _inputs()
  variables = jax.eval_shape(lambda: BertForMaskedLM(TINY).init(jax.random.key(0), ids, mask, vision))
  specs = flax.traverse_util.flatten_dict(nn.get_partition_spec(variables)["params"])
  shapes = flax.traverse_util.flatten_dict(flax.linen.meta.unbox(variables["params"]))
  assert set(specs) == set(shapes)
  for path, spec in specs.items():
    assert len(spec) == len(shapes[path].shape), path
  layer = ("bert", "encoder", "layer_3")
  assert tuple(specs[layer + ("crossattention", "self", "key", "kernel")]) == ("embed", "heads", "kv")
  assert tuple(specs[layer + ("attention", "output", "dense", "kernel")]) == ("heads", "kv", "embed")
  assert tuple(specs[("bert", "embeddings", "word_embeddings", "embedding")]) == ("vocab", "embed")


class _Parent(nn.Module):
  cfg: BertConfig

  def setup(self):
    self.text_encoder = BertForMaskedLM(self.cfg)

  def __call__(self, ids, mask, vision, vmask):
    h = self.text_encoder.text(ids, mask)
    return self.text_encoder.mlm_logits(self.text_encoder.fusion(h, mask, vision, vmask)), h


def test_methods_from_a_parent_module_and_dropout(tiny_params):
  ids, mask, vision, vmask = _inputs()
  parent = _Parent(TINY)
  pv = jax.eval_shape(lambda: parent.init(jax.random.key(0), ids, mask, vision, vmask))
  assert jax.tree.structure(flax.linen.meta.unbox(pv["params"]["text_encoder"])) == jax.tree.structure(tiny_params)
  logits, h = parent.apply({"params": {"text_encoder": tiny_params}}, ids, mask, vision, vmask)
  model = BertForMaskedLM(TINY)
  v = {"params": tiny_params}
  want_h = model.apply(v, ids, mask, method=BertForMaskedLM.text)
  want = model.apply(v, model.apply(v, want_h, mask, vision, vmask, method=BertForMaskedLM.fusion),
                     method=BertForMaskedLM.mlm_logits)
  np.testing.assert_allclose(h, want_h, atol=1e-6)
  np.testing.assert_allclose(logits, want, atol=1e-5)

  # (rbg keys: threefry's random bits take seconds to compile on CPU)
  run = lambda m, det, seed: m.apply(v, ids, mask, vision, det, rngs={"dropout": jax.random.key(seed, impl="rbg")})
  np.testing.assert_array_equal(run(model, True, 0), run(model, True, 1))
  np.testing.assert_allclose(run(model, True, 0), model.apply(v, ids, mask, vision), atol=1e-6)
  assert not np.allclose(run(model, False, 0), run(model, False, 1), atol=1e-3)
  # attention-probability dropout alone (the explicit-softmax path)
  only_attn = BertForMaskedLM(dataclasses.replace(TINY, hidden_dropout=0.0, attention_dropout=0.3))
  assert not np.allclose(run(only_attn, False, 0), run(only_attn, False, 1), atol=1e-3)
  no_drop = BertForMaskedLM(dataclasses.replace(TINY, hidden_dropout=0.0, attention_dropout=0.0))
  np.testing.assert_allclose(run(no_drop, False, 0), run(model, True, 0), atol=1e-5)


def test_explicit_softmax_path_equals_dot_product_attention():
  """The path taken when attention dropout is active, at a vanishing rate, against jax.nn.dot_product_attention."""
  rng = np.random.RandomState(0)
  q, k, v = (rng.randn(2, n, 4, 8).astype(np.float32) for n in (5, 7, 7))
  mask = (rng.rand(2, 1, 1, 7) > 0.4)
  mask[1] = False  # a fully masked row: uniform, as in the official additive -10000 mask
  want = layers.multihead_attention(q, k, v, mask)
  got = layers.multihead_attention(q, k, v, mask, dropout_rate=1e-9, dropout_rng=jax.random.key(0, impl="rbg"),
                                   deterministic=False)
  np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_allclose(want[1], np.broadcast_to(v[1].mean(0), want[1].shape), atol=1e-6)


def test_cli_writes_a_loadable_file_and_bf16_runs(hf_folder, tmp_path):
  _, folder = hf_folder
  out = str(tmp_path / "bert.npz")
  bert_import.main(["--src", folder, "--out", out, "--fusion_layer", "3", "--encoder_width", "24"])
  cfg, params = bert_import.load_bert(out)
  assert (cfg.fusion_layer, cfg.encoder_width, cfg.num_layers) == (3, 24, 4)
  ref_cfg, ref = bert_import.import_bert(folder, fusion_layer=3, encoder_width=24)
  assert cfg == ref_cfg
  jax.tree.map(np.testing.assert_array_equal, params, ref)
  # bf16 compute with remat (jit: eager bf16 ops compile one by one) against fp32
  ids, mask, vision, _ = _inputs()
  v = {"params": params}
  out16 = jax.jit(BertForMaskedLM(cfg, dtype=jnp.bfloat16, remat_policy="full").apply)(v, ids, mask, vision)
  out32 = BertForMaskedLM(cfg).apply(v, ids, mask, vision)
  assert out16.dtype == jnp.float32 and out16.shape == (3, 9, 99)
  assert np.isfinite(out16).all() and np.abs(out16 - out32).max() < 0.5


def test_presets():
  assert BERT_PRESETS["bert-base"] == BertConfig()
  large = BERT_PRESETS["bert-large"]
  assert (large.hidden_size, large.num_layers, large.num_heads, large.intermediate_size, large.fusion_layer,
          large.encoder_width) == (1024, 24, 16, 4096, 19, 1024)


def test_sharded_apply_on_a_mesh_with_rules():
  """Under a (data=2, fsdp=2, tensor=2) mesh with the default rules (heads, mlp, vocab over 'tensor'): same numbers."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  from umt_jax.sharding import DEFAULT_RULES
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
  cfg = dataclasses.replace(TINY, vocab_size=100)
  model = BertForMaskedLM(cfg)
  ids, mask, vision, vmask = _inputs(b=4)
  params = randomize(bert_import.init_params(cfg), seed=2)
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), ids, mask, vision))
  shardings = flax.linen.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, DEFAULT_RULES)["params"]
  placed = jax.device_put(params, shardings)
  key = placed["bert"]["encoder"]["layer_3"]["crossattention"]["self"]["key"]["kernel"]
  assert key.sharding.spec == P("fsdp", "tensor", None)

  def fwd(p, ids, mask, vision, vmask):
    with flax.linen.logical_axis_rules(DEFAULT_RULES):
      h = model.apply({"params": p}, ids, mask, method=BertForMaskedLM.text)
      h = model.apply({"params": p}, h, mask, vision, vmask, method=BertForMaskedLM.fusion)
      return model.apply({"params": p}, h, method=BertForMaskedLM.mlm_logits)

  batch = NamedSharding(mesh, P(("data", "fsdp")))
  with jax.set_mesh(mesh):
    out = jax.jit(fwd)(placed, *(jax.device_put(x, batch) for x in (ids, mask, vision, vmask)))
  np.testing.assert_allclose(out, fwd(params, ids, mask, vision, vmask), atol=1e-5)
