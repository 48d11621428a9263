"""Official UMT checkpoints in: umt-import-umt round trips against PyTorch references, its errors,
`init_from.params` into fine-tuning (K710 -> K400 style head re-mapping included) and `mode=eval`."""
import argparse
import json
import os
import re

import flax.linen as nn
import jax
import numpy as np
import pytest
import safetensors.torch
import torch

from data import synthetic
from tests import torch_ref
from tests.helpers import load_init, to_torch_video, tree_equal
from tests.test_training import tiny
from umt_jax import params_io
from umt_jax.convert import torch_export, umt_import
from umt_jax.models.bert import BertConfig
from umt_jax.models.heads import UMTPretrain, VideoClassifier
from umt_jax.models.umt_stage2 import UMTStage2
from umt_jax.trainers import finetune


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("ft_data"))
  synthetic.generate(out, {"train": 16, "test": 8}, size=20, frames=4, clips_per_shard=64)  # 10 classes
  return out


def _random(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
  """Noise on every param but the position table (so zero biases and unit norms are tested too)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      if name != "pos_embed":
        p.add_(0.1 * torch.randn(p.shape, generator=g))
  return module.eval()


def _save(sd: dict, path: str, wrap: str = "plain") -> str:
  """As the official code writes them: plain, a training checkpoint ({'model', 'optimizer', 'epoch', 'args'}),
  DeepSpeed's {'module'}, or safetensors."""
  if path.endswith(".safetensors"):
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, path)
  else:
    obj = {"plain": sd, "module": {"module": sd},
           "model": {"model": sd, "optimizer": {}, "epoch": 3, "args": argparse.Namespace(model="umt")}}[wrap]
    torch.save(obj, path)
  return path


def _import(src: str, out: str, *flags: str) -> tuple[dict, dict]:
  umt_import.main(["--src", src, "--out", out, "--head_dim", "16", *flags])
  return params_io.load_params(out)


def _video(frames: int, img: int, seed: int = 0) -> np.ndarray:
  return np.random.RandomState(seed).randn(2, frames, img, img, 3).astype(np.float32)


@pytest.mark.parametrize("wrap,src,tubelet,frames,img,depth", [
    ("plain", "c.pth", 1, 4, 32, 2), ("model", "c.pth", 2, 4, 32, 2), ("module", "c.pth", 1, 8, 224, 1),
    ("plain", "c.safetensors", 1, 16, 32, 2)])
def test_classifier_round_trip(tmp_path, capsys, wrap, src, tubelet, frames, img, depth):
  ref = _random(torch_ref.Classifier(32, depth, 2, 64, 16, tubelet, frames, img, 5))
  sd = ref.state_dict()
  path = _save(sd, str(tmp_path / src), wrap)
  params, meta = _import(path, str(tmp_path / "c.npz"), "--img_size", str(img))
  has_pos = frames // tubelet * (img // 16) ** 2 != 1568
  assert ("pos_embed is the sin-cos table" in capsys.readouterr().out) == has_pos
  assert (meta["kind"], meta["num_frames"], meta["num_classes"], meta["encoder"]["tubelet_size"]) == (
      "classifier", frames, 5, tubelet)
  assert "pos_param" not in meta["encoder"] and "pos_embed" not in params["encoder"]
  video = _video(frames, img)
  got = jax.jit(VideoClassifier(encoder=meta["encoder"], num_classes=5).apply)({"params": params}, video)
  with torch.no_grad():
    want = ref(to_torch_video(video)).numpy()
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)
  back = torch_export.state_dict_for("classifier", params, meta)
  assert sorted(back) == sorted(sd)
  for k, v in sd.items():
    np.testing.assert_allclose(back[k], v.numpy(), rtol=0, atol=1e-6 if k == "pos_embed" else 0, err_msg=k)


def test_edited_pos_embed_is_reported_and_kept(tmp_path, capsys):
  ref = _random(torch_ref.Classifier(32, 2, 2, 64, 16, 1, 16, 32, 5))
  with torch.no_grad():
    ref.pos_embed.add_(0.05 * torch.randn(ref.pos_embed.shape, generator=torch.Generator().manual_seed(1)))
  params, meta = _import(_save(ref.state_dict(), str(tmp_path / "c.pth")), str(tmp_path / "c.npz"),
                         "--img_size", "32")
  assert "pos_embed differs from the sin-cos table of grid (16, 2, 2)" in capsys.readouterr().out
  assert meta["encoder"]["pos_param"] and meta["num_frames"] == 16
  np.testing.assert_array_equal(params["encoder"]["pos_embed"], ref.pos_embed.detach().numpy())
  video = _video(16, 32)
  got = jax.jit(VideoClassifier(encoder=meta["encoder"], num_classes=5).apply)({"params": params}, video)
  with torch.no_grad():
    want = ref(to_torch_video(video)).numpy()
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)
  back = torch_export.state_dict_for("classifier", params, meta)  # the kept table is exported, not recomputed
  np.testing.assert_array_equal(back["pos_embed"], ref.pos_embed.detach().numpy())


def test_stage1_round_trip(tmp_path):
  ref = _random(torch_ref.PretrainUMT(32, 3, 2, 64, 16, 4, 32, 16, 2), seed=2)
  sd = ref.state_dict()
  params, meta = _import(_save(sd, str(tmp_path / "s1.pth"), "model"), str(tmp_path / "s1.npz"), "--img_size", "32")
  assert (meta["kind"], meta["align_layers"], meta["clip_dim"], meta["num_frames"]) == ("umt_pretrain", 2, 16, 8)
  video = _video(4, 32)
  visible = np.array([[0, 3, 5, 6, 8, 9, 14, 15], [1, 2, 4, 7, 10, 11, 12, 13]])  # 2 of each frame's 4 tokens
  masked = np.ones((2, 16), bool)
  np.put_along_axis(masked, visible, False, axis=1)
  model = UMTPretrain(encoder=meta["encoder"], clip_dim=16, num_align_layers=2)
  got = jax.jit(model.apply)({"params": params}, video, visible)
  with torch.no_grad():
    want = ref(to_torch_video(video), torch.from_numpy(masked)).numpy()
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)
  back = torch_export.state_dict_for("umt_pretrain", params, meta)
  assert sorted(back) == sorted(sd)
  for k, v in sd.items():
    np.testing.assert_array_equal(back[k], v.numpy(), err_msg=k)


def test_stage2_files_dispatch_to_the_stage2_import(tmp_path):
  model = UMTStage2(vision=dict(encoder=dict(embed_dim=64, depth=2, num_heads=1, mlp_dim=128), clip_dim=16,
                                num_align_layers=1),
                    text=BertConfig(vocab_size=40, hidden_size=64, num_layers=2, num_heads=1, intermediate_size=128,
                                    max_position_embeddings=16, fusion_layer=1, encoder_width=64), embed_dim=32)
  ids = np.zeros((1, 8), np.int32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 4, 32, 32, 3), np.float32),
                          np.arange(16)[None], ids, ids + 1)["params"]
  rng = np.random.RandomState(0)  # random values in the model's tree (an init would compile it all: slow)
  params = jax.tree.map(lambda x: np.asarray(rng.randn(*x.shape), np.float32), nn.meta.unbox(shapes))
  sd = torch_export.stage2_state_dict(params)
  src = _save({k: torch.from_numpy(v) for k, v in sd.items()}, str(tmp_path / "s2.pth"), "model")
  umt_import.main(["--src", src, "--out", str(tmp_path / "s2.npz"), "--img_size", "32"])
  got, meta = params_io.load_params(str(tmp_path / "s2.npz"))
  assert (meta["kind"], meta["num_frames"], meta["encoder"]["num_heads"]) == ("umt_stage2", 4, 1)
  tree_equal(got, params)


def test_import_errors_name_the_file_and_every_key(tmp_path):
  sd = torch_ref.Classifier(32, 2, 2, 64, 16, 1, 4, 32, 5).state_dict()
  out = str(tmp_path / "out.npz")
  bad = {**sd, "blocks.0.attn.extra": torch.zeros(3), "fc_norm.weight": torch.zeros(33)}
  del bad["blocks.1.mlp.fc2.bias"]
  src = _save(bad, str(tmp_path / "bad.pth"))
  with pytest.raises(ValueError) as e:
    _import(src, out, "--img_size", "32")
  for part in (src, "missing keys (1): blocks.1.mlp.fc2.bias", "unexpected keys (1): blocks.0.attn.extra",
               "fc_norm.weight: shape (33,)"):
    assert part in str(e.value)
  conv = torch.zeros(32, 3, 1, 16, 16)
  cases = [({"vision_encoder.encoder.patch_embed.proj.weight": conv}, ["--kind", "classifier"],
            "holds a umt_stage2 checkpoint (vision_encoder.*, text_encoder.*), not the classifier asked for"),
           ({"encoder.patch_embed.proj.weight": conv}, ["--kind", "classifier"], "holds a umt_pretrain checkpoint"),
           ({"encoder.patch_embed.proj.weight": conv, "encoder_to_decoder.weight": torch.zeros(16, 32)}, [],
            "VideoMAE pretraining checkpoint"),
           ({"visual.conv1.weight": conv}, [], "not an official UMT checkpoint"),
           ({"vision_encoder.conv1.weight": conv, "vision_encoder.temporal_positional_embedding": torch.zeros(1, 8, 32)},
            [], "it is a ViCLIP checkpoint"),
           (sd, ["--img_size", "32", "--num_frames", "8"], "holds 4 frames of 32²"),
           (sd, ["--img_size", "32", "--teacher_out", str(tmp_path / "t.npz")], "carries no clip_teacher")]
  for i, (case, flags, match) in enumerate(cases):
    src = _save(case, str(tmp_path / f"case{i}.pth"))
    with pytest.raises(ValueError, match=re.escape(match)):
      _import(src, out, *flags)
  assert sorted(os.listdir(tmp_path)) == sorted(["bad.pth"] + [f"case{i}.pth" for i in range(len(cases))])


def test_init_from_params_restores_the_imported_weights(data, tmp_path):
  # tiny("finetune"): 4 frames of 16², patch 8, width 32, depth 2; the data has 10 classes
  cls = lambda classes, seed: _random(torch_ref.Classifier(32, 2, 2, 64, 8, 1, 4, 16, classes), seed)
  k10 = _import(_save(cls(10, 0).state_dict(), str(tmp_path / "k10.pth")), str(tmp_path / "k10.npz"),
                "--img_size", "16")[0]
  got = load_init(tiny("finetune", data, **{"init_from.params": str(tmp_path / "k10.npz")}))
  tree_equal(got, k10)

  k7 = _import(_save(cls(7, 1).state_dict(), str(tmp_path / "k7.pth")), str(tmp_path / "k7.npz"),
               "--img_size", "16")[0]
  rows = [3, 0, 6, 6, 1, 2, 5, 4, 0, 1]
  label_map = tmp_path / "map.txt"
  label_map.write_bytes(("\ufeff" + "\r\n".join(map(str, rows)) + "\r\n\r\n").encode("utf-8"))
  (tmp_path / "map.json").write_text(json.dumps(rows))
  for lm in (label_map, tmp_path / "map.json"):
    got = load_init(tiny("finetune", data, **{"init_from.params": str(tmp_path / "k7.npz"),
                                               "init_from.label_map": str(lm)}))
    tree_equal(got, {**k7, "head": {"kernel": k7["head"]["kernel"][:, rows], "bias": k7["head"]["bias"][rows]}})
  got = load_init(tiny("finetune", data, **{"init_from.params": str(tmp_path / "k7.npz")}))  # a new head
  tree_equal({k: got[k] for k in ("encoder", "fc_norm")}, {k: k7[k] for k in ("encoder", "fc_norm")})
  assert got["head"]["kernel"].shape == (32, 10)

  s1 = _random(torch_ref.PretrainUMT(32, 2, 2, 64, 8, 4, 16, 16, 2), seed=2)
  s1 = _import(_save(s1.state_dict(), str(tmp_path / "s1.pth")), str(tmp_path / "s1.npz"), "--img_size", "16")[0]
  params_io.save_params(str(tmp_path / "s2.npz"), {"vision_encoder": {"encoder": s1["encoder"]}},
                        {"kind": "umt_stage2"})
  for name in ("s1.npz", "s2.npz"):
    got = load_init(tiny("finetune", data, **{"init_from.params": str(tmp_path / name)}))
    tree_equal(got["encoder"], {k: v for k, v in s1["encoder"].items() if k != "norm"})

  edited = cls(10, 3)
  with torch.no_grad():
    edited.pos_embed.add_(0.1)
  kept = _import(_save(edited.state_dict(), str(tmp_path / "e.pth")), str(tmp_path / "e.npz"), "--img_size", "16")[0]
  got = load_init(tiny("finetune", data, **{"init_from.params": str(tmp_path / "e.npz")}))
  tree_equal(got, kept)
  assert got["encoder"]["pos_embed"].shape == (1, 16, 32)

  errors = [({"init_from.params": str(tmp_path / "k10.npz"), "model.mlp_dim": 48},
             r"k10\.npz' does not fit the model: .*blocks_0/mlp/fc1/kernel: file \(32, 64\) vs model \(32, 48\)"),
            ({"init_from.params": str(tmp_path / "k7.npz"), "init_from.label_map": str(tmp_path / "map.txt"),
              "model.num_classes": 9}, r"map\.txt' maps 10 classes; the model has 9"),
            ({"init_from.params": str(tmp_path / "s1.npz"), "init_from.label_map": str(tmp_path / "map.txt")},
             r"re-maps a classifier's head, but init_from.params=.*s1\.npz' is umt_pretrain")]
  (tmp_path / "bad_map.txt").write_text("1\n2\nx\n")
  errors.append(({"init_from.params": str(tmp_path / "k7.npz"), "init_from.label_map": str(tmp_path / "bad_map.txt")},
                 r"bad_map\.txt' line 3: 'x' is not a head row in \[0, 7\)"))
  for kw, match in errors:
    with pytest.raises(ValueError, match=match):
      load_init(tiny("finetune", data, **kw))


def test_eval_mode_equals_the_trainers_final_eval(data, tmp_path, capsys):
  views = {"data.eval_split": "test", "data.eval_batch_size": 8}
  trained = finetune.train(tiny("finetune", data, total_steps=2, **views), str(tmp_path / "ft"))
  params = str(tmp_path / "ft" / "params.npz")
  ev = finetune.train(tiny("finetune", data, mode="eval", **views, **{"init_from.params": params}),
                      str(tmp_path / "ev"))
  assert set(ev.eval) == {"top1", "top5", "top1_temporal", "top1_appearance"}
  for k, v in trained.eval.items():
    assert ev.eval[k] == pytest.approx(v, abs=1e-9), k
  with open(tmp_path / "ev" / "eval.json") as f:
    written = json.load(f)
  assert written["top1"] == pytest.approx(trained.eval["top1"]) and written["views"] == [2, 1]
  assert "top1_temporal" in capsys.readouterr().out
  assert not (tmp_path / "ev" / "checkpoints").exists()
  with pytest.raises(ValueError, match="config.mode=eval evaluates config.init_from.params"):
    finetune.train(tiny("finetune", data, mode="eval", **views), str(tmp_path / "ev2"))
