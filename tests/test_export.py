"""Export to the official PyTorch layouts: strict=True loading and forward parity with PyTorch references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch

from tests import torch_ref
from tests.helpers import init_params, randomize, to_torch_video
from umt_jax import params_io
from umt_jax.convert import torch_export
from umt_jax.masking import semantic_mask, visible_to_mask
from umt_jax.models.heads import UMTPretrain, VideoClassifier

ENC = dict(embed_dim=32, depth=2, num_heads=2, mlp_dim=64, patch_size=16)


@pytest.mark.parametrize("frames,img,depth", [(4, 32, 2), (8, 224, 1)])
def test_classifier_export_loads_strict_and_matches(tmp_path, frames, img, depth):
  enc = {**ENC, "depth": depth}
  model = VideoClassifier(encoder=enc, num_classes=5)
  video = np.random.RandomState(0).randn(2, frames, img, img, 3).astype(np.float32)
  params = randomize(init_params(model, jnp.asarray(video)))
  logits = np.asarray(jax.jit(model.apply)({"params": params}, video))

  path = str(tmp_path / "cls.pth")
  params_io.save_params(str(tmp_path / "cls.npz"), params,
                        {"kind": "classifier", "encoder": enc, "num_frames": frames, "img_size": img})
  torch_export.main(["--params", str(tmp_path / "cls.npz"), "--out", path])
  sd = torch.load(path, weights_only=True)
  assert ("pos_embed" in sd) == (frames * (img // 16) ** 2 != 1568)
  ref = torch_ref.Classifier(32, depth, 2, 64, 16, 1, frames, img, 5)
  ref.load_state_dict(sd, strict=True)
  with torch.no_grad():
    want = ref(to_torch_video(video)).numpy()
  np.testing.assert_allclose(logits, want, atol=1e-4)


def test_official_key_names_for_b16():
  model = VideoClassifier(encoder=dict(embed_dim=768, depth=12, num_heads=12, mlp_dim=3072), num_classes=400)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 224, 224, 3))))["params"]
  params = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), jax.tree.map(lambda x: x, abstract))
  sd = torch_export.classifier_state_dict(params, {"embed_dim": 768}, 8, 224)
  assert len(sd) == 162
  assert sd["patch_embed.proj.weight"].shape == (768, 3, 1, 16, 16)
  assert sd["blocks.11.attn.qkv.weight"].shape == (2304, 768)
  assert sd["blocks.0.attn.q_bias"].shape == (768,) and "blocks.0.attn.qkv.bias" not in sd
  assert sd["head.weight"].shape == (400, 768) and "pos_embed" not in sd and "norm.weight" not in sd


def test_umt_pretrain_export_matches_official_forward(tmp_path):
  enc = {**ENC, "depth": 3}
  model = UMTPretrain(encoder=enc, clip_dim=16, num_align_layers=2)
  frames, img = 4, 32
  video = np.random.RandomState(1).randn(2, frames, img, img, 3).astype(np.float32)
  attn = jax.nn.softmax(jax.random.normal(jax.random.key(0), (2, frames, 4)), -1)
  visible = semantic_mask(jax.random.key(1), attn, 0.5)
  params = randomize(init_params(model, jnp.asarray(video), visible), seed=3)
  feats = np.asarray(jax.jit(model.apply)({"params": params}, video, visible))

  path = str(tmp_path / "umt.safetensors")
  torch_export.write_state_dict(torch_export.state_dict_for("umt_pretrain", params, {}), path)
  sd = safetensors.torch.load_file(path)
  ref = torch_ref.PretrainUMT(32, 3, 2, 64, 16, frames, img, 16, 2)
  ref.load_state_dict(sd, strict=True)
  mask = torch.from_numpy(np.array(visible_to_mask(visible, frames * 4)))
  with torch.no_grad():
    want = ref(to_torch_video(video), mask).numpy()
  np.testing.assert_allclose(feats, want, atol=1e-4)


def test_export_errors(tmp_path):
  params_io.save_params(str(tmp_path / "p.npz"), {"a": np.zeros(2)}, {"kind": "teacher"})
  with pytest.raises(ValueError, match="not exportable"):
    torch_export.main(["--params", str(tmp_path / "p.npz"), "--out", str(tmp_path / "x.pth")])
  with pytest.raises(ValueError, match="must end in"):
    torch_export.write_state_dict({"a": np.zeros(2)}, str(tmp_path / "x.txt"))
  assert not list(tmp_path.glob("x.*"))  # nothing half-written
  params_io.save_params(str(tmp_path / "c.npz"), {"a": np.zeros(2)}, {"kind": "classifier"})
  with pytest.raises(ValueError, match="lacks"):
    torch_export.main(["--params", str(tmp_path / "c.npz"), "--out", str(tmp_path / "x.pth")])
  with pytest.raises(FileNotFoundError, match="does not exist"):
    params_io.load_params(str(tmp_path / "missing.npz"))
  (tmp_path / "junk.npz").write_bytes(b"not a zip")
  with pytest.raises(ValueError, match="not a umt_jax params file"):
    params_io.load_params(str(tmp_path / "junk.npz"))
