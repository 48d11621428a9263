"""The stage-2 model in the official layout: export loads with strict=True into a PyTorch module with the official
key names and gives the same embeddings, similarities, ITM and MLM logits; official-style checkpoints
(`{'model': ...}`, with `clip_teacher.*`) import back exactly; bad files fail with one error naming every key."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests import torch_ref
from tests.helpers import randomize, to_torch_video
from umt_jax import params_io
from umt_jax.convert import layout, torch_export, umt_import
from umt_jax.models.bert import BertConfig
from umt_jax.models.umt_stage2 import UMTStage2

ENC = dict(embed_dim=32, depth=2, num_heads=2, mlp_dim=64, patch_size=16)
BERT = BertConfig(vocab_size=40, hidden_size=32, num_layers=3, num_heads=2, intermediate_size=48,
                  max_position_embeddings=16, fusion_layer=1, encoder_width=32)
FRAMES, IMG, K, CLIP_DIM, EMBED = 2, 32, 2, 16, 12
ATOL = 1e-4


def _model() -> UMTStage2:
  return UMTStage2(vision=dict(encoder=ENC, clip_dim=CLIP_DIM, num_align_layers=K), text=BERT, embed_dim=EMBED)


def _torch_model() -> torch_ref.UMTStage2:
  return torch_ref.UMTStage2(32, 2, 2, 64, 16, FRAMES, IMG, CLIP_DIM, K, BERT.vocab_size, 32, 3, 2, 48, 1, 16, EMBED)


def _inputs():
  rng = np.random.RandomState(0)
  video = rng.randn(3, FRAMES, IMG, IMG, 3).astype(np.float32)
  ids = rng.randint(5, BERT.vocab_size, size=(3, 7)).astype(np.int32)
  mask = np.ones((3, 7), np.int32)
  mask[1, 5:] = 0  # padding
  return video, ids, mask


def _ours(model: UMTStage2, params) -> dict:
  video, ids, mask = _inputs()
  p = {"params": params}
  _, tokens, v = model.apply(p, video, None, align=False, method=UMTStage2.encode_vision)
  hidden, t = model.apply(p, ids, mask, method=UMTStage2.encode_text)
  itm = model.apply(p, hidden, mask, tokens, method=UMTStage2.itm_logits)
  mlm = model.apply(p, hidden, mask, tokens, method=UMTStage2.mlm_logits)
  return {k: np.asarray(x) for k, x in dict(tokens=tokens, v=v, t=t, itm=itm, mlm=mlm).items()}


def _theirs(ref: torch_ref.UMTStage2) -> dict:
  video, ids, mask = _inputs()
  with torch.no_grad():
    tokens, v = ref.vision(to_torch_video(video))
    hidden, t = ref.text(torch.from_numpy(ids).long(), torch.from_numpy(mask))
    m = torch.from_numpy(mask)
    out = dict(tokens=tokens, v=v, t=t, itm=ref.itm(hidden, m, tokens), mlm=ref.mlm(hidden, m, tokens))
  return {k: x.numpy() for k, x in out.items()}


def _similarity(v: np.ndarray, t: np.ndarray) -> np.ndarray:
  """The official test-time score: the mean over frames of cos(frame embedding, text embedding)."""
  v = v / np.linalg.norm(v, axis=-1, keepdims=True)
  t = t / np.linalg.norm(t, axis=-1, keepdims=True)
  return np.einsum("bte,ne->bn", v, t) / v.shape[1]


def _compare(ours: dict, theirs: dict) -> None:
  for k in ours:
    np.testing.assert_allclose(ours[k], theirs[k], atol=ATOL, err_msg=k)
  np.testing.assert_allclose(_similarity(ours["v"], ours["t"]), _similarity(theirs["v"], theirs["t"]), atol=ATOL)


@pytest.fixture(scope="module")
def exported():
  model = _model()
  video, ids, mask = _inputs()
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.asarray(video), jnp.arange(8)[None],
                                               jnp.asarray(ids), jnp.asarray(mask)))["params"]
  abstract = nn.meta.unbox(abstract)
  noise = randomize(jax.tree.map(lambda x: np.zeros(x.shape, np.float32), abstract), seed=1, scale=0.2)
  # LayerNorm scales around 1 and the temperature at its init, noise everywhere else (a fast stand-in for init)
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 1.0 if path[-1].key == "scale" else (np.float32(0.07) if path[-1].key == "temp" else x),
      noise)
  return model, params, torch_export.stage2_state_dict(params)


def test_export_loads_strict_and_matches(exported):
  model, params, sd = exported
  ref = _torch_model()
  assert set(sd) == set(ref.state_dict())
  assert sd["text_encoder.bert.embeddings.position_ids"].dtype == np.int64
  ref.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}, strict=True)
  _compare(_ours(model, params), _theirs(ref.eval()))


@pytest.mark.parametrize("wrap", ["model", "module", "safetensors"])
def test_official_checkpoint_imports_exactly(tmp_path, wrap):
  ref = _torch_model().eval()
  g = torch.Generator().manual_seed(2)
  with torch.no_grad():
    for p in ref.parameters():
      p.add_(0.05 * torch.randn(p.shape, generator=g))
  sd = ref.state_dict()
  teacher = torch_ref.VisualTransformer(IMG, 16, 64, 2, 1, CLIP_DIM, conv3d=True).state_dict()  # heads: width/64
  full = {**sd, **{f"clip_teacher.{k}": v for k, v in teacher.items()}}
  if wrap == "safetensors":
    import safetensors.torch
    src = str(tmp_path / "b16_25m.safetensors")
    tied = ("text_encoder.cls.predictions.decoder.weight", "text_encoder.cls.predictions.decoder.bias")
    safetensors.torch.save_file({k: v.contiguous() for k, v in full.items() if k not in tied}, src)  # no shared
  else:
    src = str(tmp_path / "b16_25m.pth")
    torch.save({wrap: full, "epoch": 3}, src)
  out, t_out = str(tmp_path / "s2.npz"), str(tmp_path / "teacher.npz")
  umt_import.main(["--src", src, "--out", out, "--num_frames", str(FRAMES), "--img_size", str(IMG),
                   "--teacher_out", t_out, "--head_dim", "16"])
  params, meta = params_io.load_params(out)
  assert (meta["kind"], meta["align_layers"], meta["clip_dim"], meta["embed_dim"]) == ("umt_stage2", K, CLIP_DIM, EMBED)
  assert (meta["bert_config"]["fusion_layer"], meta["bert_config"]["num_layers"]) == (1, 3)
  model = UMTStage2(vision=dict(encoder={**meta["encoder"]}, clip_dim=meta["clip_dim"], num_align_layers=K),
                    text=BertConfig(**meta["bert_config"]), embed_dim=meta["embed_dim"])
  _compare(_ours(model, params), _theirs(ref))
  back = torch_export.stage2_state_dict(params)
  assert set(back) == set(sd)
  for k, v in sd.items():
    np.testing.assert_array_equal(back[k], v.numpy(), err_msg=k)
  tparams, tmeta = params_io.load_params(t_out)
  assert tmeta["kind"] == "clip_visual"
  np.testing.assert_array_equal(layout.to_state_dict(tparams)["conv1.weight"],
                                teacher["conv1.weight"].numpy()[:, :, 0])  # UMT's Conv3d conv1, one frame deep


def test_bad_checkpoints_fail_naming_every_key(tmp_path, exported):
  _, _, sd = exported
  bad = dict(sd)
  bad.pop("itm_head.bias")
  bad["vision_proj.weight"] = np.zeros((EMBED, 31), np.float32)
  bad["text_decoder.weight"] = np.zeros(3, np.float32)  # stray keys, as a released file once had (issue #26)
  src = str(tmp_path / "bad.pth")
  torch.save({"model": {k: torch.from_numpy(np.asarray(v)) for k, v in bad.items()}}, src)
  out = tmp_path / "never.npz"
  with pytest.raises(ValueError) as e:
    umt_import.main(["--src", src, "--out", str(out), "--num_frames", str(FRAMES), "--img_size", str(IMG),
                     "--head_dim", "16"])
  msg = str(e.value)
  assert src in msg and "itm_head.bias" in msg and "text_decoder.weight" in msg and "vision_proj.weight" in msg
  assert not out.exists()
  stage1 = str(tmp_path / "stage1.pth")
  torch.save({"model": {k: torch.zeros(1) for k in ("encoder.patch_embed.proj.weight", "clip_decoder.0.head.weight")}},
             stage1)
  with pytest.raises(ValueError, match="vision_encoder.encoder.patch_embed.proj.weight.*not an official UMT"):
    umt_import.import_stage2(stage1)
