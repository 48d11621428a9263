"""CLIP import (Hugging Face folders, OpenAI-layout and UMT visual-only files) with fp32 parity < 1e-4."""
import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests import torch_ref
from umt_jax import masking
from umt_jax.convert import clip_import
from umt_jax.models.clip import CLIP, CLIPTeacher

ATOL = 1e-4


def _perturb(module: torch.nn.Module, seed: int = 0) -> None:
  """Random values everywhere (HF and torch init biases at 0 and norms at 1, which would hide mistakes)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      p.add_(0.05 * torch.randn(p.shape, generator=g))


def _hf_model():
  from transformers import CLIPConfig, CLIPModel
  cfg = CLIPConfig(
      text_config=dict(vocab_size=100, hidden_size=48, intermediate_size=192, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=16, eos_token_id=2, bos_token_id=1,
                       pad_token_id=0),
      vision_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                         image_size=32, patch_size=8),
      projection_dim=32)
  cfg._attn_implementation = "eager"
  model = CLIPModel(cfg).eval()
  _perturb(model)
  return model


def _video(b=2, t=3, side=32, seed=0):
  return np.random.RandomState(seed).randn(b, t, side, side, 3).astype(np.float32)


def _nchw(images):
  return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
  model = _hf_model()
  folder = tmp_path_factory.mktemp("hf_clip")
  model.save_pretrained(folder)
  return model, str(folder)


def test_hf_clip_embeddings_match(hf_folder):
  hf, folder = hf_folder
  params, cfg = clip_import.import_clip(folder)
  assert (cfg.vision_layers, cfg.vision_heads, cfg.text_layers, cfg.text_heads) == (3, 4, 2, 4)
  images = _video()[:, 0]
  ids = np.random.RandomState(1).randint(3, 100, size=(2, 16))
  model = CLIP(cfg)
  img = model.apply({"params": params}, images, method=CLIP.encode_image)
  txt = model.apply({"params": params}, ids, method=CLIP.encode_text)
  with torch.no_grad():
    want_img = hf.visual_projection(hf.vision_model(_nchw(images)).pooler_output).numpy()
    want_txt = hf.text_projection(hf.text_model(torch.from_numpy(ids)).pooler_output).numpy()
  np.testing.assert_allclose(img, want_img, atol=ATOL)
  np.testing.assert_allclose(txt, want_txt, atol=ATOL)
  np.testing.assert_allclose(params["logit_scale"], hf.logit_scale.item(), atol=1e-6)


def test_hf_teacher_layers_and_attention_match(hf_folder):
  hf, folder = hf_folder
  params, cfg = clip_import.import_clip(folder, visual_only=True)
  video = _video()
  feats, attn, _ = CLIPTeacher(cfg, num_layers=2).apply({"params": {"visual": params}}, video)
  b, t = video.shape[:2]
  with torch.no_grad():
    out = hf.vision_model(_nchw(video.reshape(b * t, 32, 32, 3)), output_hidden_states=True, output_attentions=True)
    for k, layer in enumerate((1, 2)):  # blocks 1, 2 of 3, ascending
      x = hf.visual_projection(hf.vision_model.post_layernorm(out.hidden_states[layer + 1][:, 1:]))
      x = (x / x.norm(dim=-1, keepdim=True)).reshape(b, -1, 32).numpy()
      np.testing.assert_allclose(feats[k], x, atol=ATOL)
    want_attn = out.attentions[-1].mean(1)[:, 0, 1:].reshape(b, t, -1).numpy()
  np.testing.assert_allclose(attn, want_attn, atol=1e-5)

  # With the semantic mask as `select`, the last block runs on the kept tokens alone: same mask, same
  # attention, the same features at those tokens.
  key = jax.random.key(5)
  seen = []
  select = lambda a: seen.append(a) or masking.semantic_frame_mask(key, a, 0.5)
  got, got_attn, visible = CLIPTeacher(cfg, num_layers=2).apply({"params": {"visual": params}}, video, select)
  want_visible = masking.semantic_mask(key, attn, 0.5)
  np.testing.assert_array_equal(visible, want_visible)
  assert got.shape == (2, b, t * 8, 32) and seen[0].shape == attn.shape
  np.testing.assert_allclose(got, np.take_along_axis(feats, np.asarray(want_visible)[None, :, :, None], 2),
                             atol=1e-6)
  np.testing.assert_allclose(got_attn, attn, atol=1e-7)


def test_hf_bare_safetensors_file_imports_the_same(hf_folder):
  _, folder = hf_folder
  a, _ = clip_import.import_clip(folder)
  b, _ = clip_import.import_clip(f"{folder}/model.safetensors")
  jax.tree.map(np.testing.assert_array_equal, a, b)


def _openai_model(seed=0):
  torch.manual_seed(seed)
  m = torch_ref.CLIP(embed=32, img=32, patch=8, vw=128, vl=2, vh=2, ctx=12, vocab=90, tw=128, tl=2, th=2).eval()
  _perturb(m, seed)
  return m


def test_openai_layout_state_dict_matches(tmp_path):
  ref = _openai_model()
  torch.save(ref.state_dict(), tmp_path / "clip.pt")
  params, cfg = clip_import.import_clip(str(tmp_path / "clip.pt"))
  assert (cfg.vision_heads, cfg.text_heads, cfg.context_length) == (2, 2, 12)
  images, ids = _video()[:, 0], np.random.RandomState(2).randint(0, 90, size=(3, 12))
  model = CLIP(cfg)
  with torch.no_grad():
    np.testing.assert_allclose(model.apply({"params": params}, images, method=CLIP.encode_image),
                               ref.visual(_nchw(images)).numpy(), atol=ATOL)
    np.testing.assert_allclose(model.apply({"params": params}, ids, method=CLIP.encode_text),
                               ref.encode_text(torch.from_numpy(ids)).numpy(), atol=ATOL)


def test_openai_torchscript_archive_is_read(tmp_path):
  ref = _openai_model(1)
  images = _video()[:, 0]
  torch.jit.save(torch.jit.trace(ref.visual, _nchw(images)), tmp_path / "visual_jit.pt")
  params, cfg = clip_import.import_clip(str(tmp_path / "visual_jit.pt"), visual_only=True)
  from umt_jax.models.clip import CLIPVision
  got = CLIPVision(cfg).apply({"params": params}, images)[0]
  with torch.no_grad():
    np.testing.assert_allclose(got, ref.visual(_nchw(images)).numpy(), atol=ATOL)


def test_umt_visual_only_teacher_at_another_resolution(tmp_path):
  """UMT's extracted visual file (Conv3d conv1), position table resized 32→24 px at import (like CLIP-L/14 at
  196), and the teacher resizing 32-px frames bicubically on device, exactly as UMT's engine does."""
  torch.manual_seed(3)
  ref = torch_ref.VisualTransformer(32, 8, 128, 3, 2, 32, conv3d=True).eval()
  _perturb(ref, 3)
  torch.save(ref.state_dict(), tmp_path / "vit_b16.pth")
  clip_import.main(["--src", str(tmp_path / "vit_b16.pth"), "--out", str(tmp_path / "teacher.npz"),
                    "--image_size", "24", "--visual_only"])
  cfg, params = clip_import.load_teacher(str(tmp_path / "teacher.npz"))
  assert cfg.image_size == 24
  video = _video(seed=4)
  feats, attn, _ = CLIPTeacher(cfg, num_layers=2).apply({"params": params}, video)
  assert feats.shape == (2, 2, 3 * 9, 32) and attn.shape == (2, 3, 9)

  # The official side: resize the table at load (bicubic), resize frames with F.interpolate (bicubic).
  small = torch_ref.VisualTransformer(24, 8, 128, 3, 2, 32, conv3d=True).eval()
  sd = ref.state_dict()
  pos = sd["positional_embedding"]
  grid = pos[1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
  grid = F.interpolate(grid, size=(3, 3), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).flatten(0, 2)
  sd["positional_embedding"] = torch.cat([pos[:1], grid])
  small.load_state_dict(sd, strict=True)
  frames = torch.from_numpy(video).permute(0, 4, 1, 2, 3)  # B, C, T, H, W
  b, c, t, h, w = frames.shape
  frames = frames.transpose(1, 2).reshape(b * t, c, h, w)
  frames = F.interpolate(frames, size=(24, 24), mode="bicubic", align_corners=False)
  frames = frames.reshape(b, t, c, 24, 24).transpose(1, 2)
  with torch.no_grad():
    want_feats, want_attn = small.teacher(frames, 2)
  np.testing.assert_allclose(feats, want_feats.numpy(), atol=ATOL)
  np.testing.assert_allclose(attn, want_attn.reshape(b, t, -1).numpy(), atol=1e-5)


def test_bad_checkpoints_give_clear_errors(tmp_path):
  sd = _openai_model().state_dict()
  broken = dict(sd)
  del broken["visual.ln_post.weight"]
  broken["visual.extra.weight"] = torch.zeros(3)
  torch.save(broken, tmp_path / "broken.pt")
  with pytest.raises(ValueError, match=r"missing keys \(1\): visual.ln_post.weight") as e:
    clip_import.import_clip(str(tmp_path / "broken.pt"))
  assert "unexpected keys (1): visual.extra.weight" in str(e.value) and "broken.pt" in str(e.value)
  bad_shape = dict(sd)
  bad_shape["visual.ln_pre.bias"] = torch.zeros(7)
  torch.save(bad_shape, tmp_path / "shape.pt")
  with pytest.raises(ValueError, match=r"visual.ln_pre.bias: shape \(7,\) in the checkpoint does not fit"):
    clip_import.import_clip(str(tmp_path / "shape.pt"))
  torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "other.pt")
  with pytest.raises(ValueError, match="not a CLIP state_dict"):
    clip_import.import_clip(str(tmp_path / "other.pt"))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    clip_import.import_clip(str(tmp_path / "nope.pt"))
  with pytest.raises(ValueError, match="not a multiple of the patch size"):
    torch.save(sd, tmp_path / "ok.pt")
    clip_import.import_clip(str(tmp_path / "ok.pt"), image_size=30)
