"""VideoMAE V2: dual masks, decoder input / targets / loss against an independent reference, import/export with
the official keys (strict loads, reconstructions and logits within 1e-4), every variant's shapes, the trainer end
to end (loss falls, sharded == one device, exact resume), repeated augmentation, recipes, FLOPs vs XLA."""
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch

from configs import videomae_v2
from data import synthetic
from tests import torch_ref
from tests.helpers import init_params, preempt_and_resume, randomize, to_torch_video
from umt_jax import config_lib, input_pipeline as ip, masking, params_io, train_loop
from umt_jax.convert import layout, torch_export, videomae_import
from umt_jax.models.heads import VideoClassifier, VideoMAEPretrain
from umt_jax.trainers import videomae_pretrain as vp

ENC = dict(embed_dim=32, depth=2, num_heads=2, mlp_dim=64, patch_size=8, tubelet_size=2)
HEADS = dict(head_dim=16, decoder_head_dim=8)  # the tiny models' heads (the official widths are 64 and 88)


def tiny(data: str = "", **kw):
  """32² clips of 4 frames, tubelet 2 × 8²: a 2×4×4 token grid; tube 0.75 -> 8 visible, running cell -> 16."""
  c = config_lib.base("videomae")
  c.update(batch_size=8, total_steps=4, log_every=1, min_fsdp_size=0)
  c.data.update(path=data, num_frames=4, sampling="dense", stride=2, size=32, flip=False, num_sample=2)
  c.model.update(embed_dim=32, depth=2, num_heads=2, mlp_dim=64, patch_size=8, tubelet_size=2, drop_path=0.0)
  c.videomae.update(mask_ratio=0.75, decoder_dim=16, decoder_depth=1, decoder_heads=2)
  c.optim.update(lr=0.1, warmup_epochs=0.0, min_lr=0.0)  # 3e-3 at 8 clips
  c.checkpoint.update(every=100, **{"async": False})
  return config_lib.override(c, kw)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("videomae_data"))
  synthetic.generate(out, {"train": 16}, size=40, frames=8)
  return out


# ----------------------------------------------------------------------------- masks, decoder input, loss
def test_dual_masks():
  grid = (8, 14, 14)
  visible, decode = vp.dual_masks(jax.random.key(0), 4, grid, 0.9, 0.5)
  assert visible.shape == (4, 160) and decode.shape == (4, 784)  # B/16: 20 visible per slot, 50% decoder-kept
  enc_masked = np.asarray(masking.visible_to_mask(visible, 1568))
  vis = np.asarray(visible).reshape(4, 8, 20) % 196
  assert (vis == vis[:, :1]).all()  # a tube: the same cells in every slot
  # Decoder-kept tokens include encoder-visible ones (~10%): they get mask tokens too; the loss skips them.
  overlap = [np.intersect1d(v, d).size for v, d in zip(np.asarray(visible), np.asarray(decode))]
  assert 0 < min(overlap) and max(overlap) < 160
  assert (np.asarray(decode).reshape(4, 8, 98) // 196 == np.arange(8)[None, :, None]).all()  # 98 kept per slot
  # v1: the decoder reconstructs exactly the encoder-masked tokens
  _, v1 = vp.dual_masks(jax.random.key(0), 4, grid, 0.9, 0.0)
  np.testing.assert_array_equal(np.asarray(v1), np.stack([np.flatnonzero(m) for m in enc_masked]))


def _reference_loss(video_u8, pred, enc_mask, dec_mask, p, kt):
  """The official engine: un-normalised [0, 1] video -> 'b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c',
  per-patch (x - mean) / (unbiased std + 1e-6) -> labels at decoder-kept tokens -> MSE over pixels, averaged over
  decoder-kept ∩ encoder-masked tokens. enc_mask / dec_mask (B, N) bool: True = hidden / dropped."""
  v = torch.from_numpy(video_u8.astype(np.float32) / 255.0).permute(0, 4, 1, 2, 3)  # b c t h w
  b, c, t, h, w = v.shape
  x = v.reshape(b, c, t // kt, kt, h // p, p, w // p, p).permute(0, 2, 4, 6, 3, 5, 7, 1)
  x = x.reshape(b, -1, kt * p * p, c)
  x = (x - x.mean(dim=-2, keepdim=True)) / (x.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
  x = x.flatten(2)
  labels = x[~dec_mask].reshape(b, -1, x.shape[-1])
  loss = ((torch.from_numpy(pred) - labels) ** 2).mean(-1)
  weight = enc_mask[~dec_mask].reshape(b, -1).float()
  return float((loss * weight).sum() / weight.sum())


def _torch_model(enc, frames, img, dec_dim, dec_depth, dec_heads):
  return torch_ref.PretrainVideoMAE(enc["embed_dim"], enc["depth"], enc["num_heads"],
                                    enc["mlp_dim"] / enc["embed_dim"], enc["patch_size"], enc["tubelet_size"], frames,
                                    img, dec_dim, dec_depth, dec_heads)


@pytest.mark.parametrize("decoder_ratio", [0.5, 0.0])
def test_forward_and_loss_match_official_semantics(decoder_ratio):
  c = tiny(**{"videomae.decoder_mask_ratio": decoder_ratio})
  task = vp.model_task(c)
  params = randomize(nn.meta.unbox(task.init(jax.random.key(0))), seed=1)
  video = np.random.RandomState(0).randint(0, 256, (2, 2, 4, 32, 32, 3)).astype(np.uint8)  # 2 clips × 2 views
  rng = jax.random.key(3)
  loss, _ = jax.jit(task.loss)(params, {"video": jnp.asarray(video)}, rng, None)
  # The same masks (the loss splits its key into mask, dropout), as the official boolean masks.
  flat = video.reshape(4, 4, 32, 32, 3)
  visible, decode = vp.dual_masks(jax.random.split(rng)[0], 4, vp.token_grid(c), 0.75, decoder_ratio)
  enc_mask = torch.from_numpy(np.array(masking.visible_to_mask(visible, 32)))
  dec_mask = None if decoder_ratio == 0 else torch.from_numpy(np.array(masking.visible_to_mask(decode, 32)))
  ref = _torch_model(c.model, 4, 32, 16, 1, 2)
  ref.load_state_dict({k: torch.from_numpy(v) for k, v in layout.to_state_dict(params).items()}, strict=True)
  with torch.no_grad():
    want = ref(to_torch_video(np.asarray(ip.normalize(flat))), enc_mask, dec_mask).numpy()
  model = vp.build(c)
  pred = np.asarray(jax.jit(model.apply)({"params": params}, ip.normalize(flat), visible, decode))
  np.testing.assert_allclose(pred, want, atol=1e-4)  # decoder input and prediction slots as the official
  ref_loss = _reference_loss(flat, want, enc_mask, ~enc_mask if dec_mask is None else dec_mask, 8, 2)
  assert float(loss) == pytest.approx(ref_loss, rel=1e-4)


# ----------------------------------------------------------------------------- import / export
def test_pretrain_export_import_roundtrip(tmp_path):
  model = VideoMAEPretrain(encoder=ENC, decoder_dim=16, decoder_depth=2, decoder_heads=2)
  video = np.random.RandomState(0).randn(2, 4, 32, 32, 3).astype(np.float32)
  visible, decode = vp.dual_masks(jax.random.key(1), 2, (2, 4, 4), 0.75, 0.5)
  params = randomize(init_params(model, jnp.asarray(video), visible, decode))
  meta = {"kind": "videomae_pretrain", "encoder": ENC, "num_frames": 4, "img_size": 32}
  params_io.save_params(str(tmp_path / "p.npz"), params, meta)
  torch_export.main(["--params", str(tmp_path / "p.npz"), "--out", str(tmp_path / "p.safetensors")])
  sd = safetensors.torch.load_file(str(tmp_path / "p.safetensors"))
  torch.save({"model": sd, "epoch": 3}, str(tmp_path / "wrapped.pth"))  # official training-checkpoint wrapper
  torch.save({"module": {k: v for k, v in sd.items() if k.startswith("encoder.")}}, str(tmp_path / "enc.pth"))
  ref = _torch_model(ENC, 4, 32, 16, 2, 2)
  ref.load_state_dict(sd, strict=True)
  for src in ("p.safetensors", "wrapped.pth"):
    got, m = videomae_import.import_file(str(tmp_path / src), num_frames=4, img_size=32, **HEADS)
    assert m["kind"] == "videomae_pretrain" and (m["decoder_dim"], m["decoder_depth"], m["decoder_heads"]) == (16, 2, 2)
    jax.tree.map(np.testing.assert_array_equal, got, jax.tree.map(np.asarray, params))
  mask = torch.from_numpy(np.array(masking.visible_to_mask(visible, 32)))
  with torch.no_grad():
    want = ref(to_torch_video(video), mask, torch.from_numpy(np.array(masking.visible_to_mask(decode, 32)))).numpy()
  pred = model.apply({"params": got}, video, visible, decode)
  np.testing.assert_allclose(np.asarray(pred), want, atol=1e-4)
  enc_only, m = videomae_import.import_file(str(tmp_path / "enc.pth"), num_frames=4, img_size=32, **HEADS)
  assert set(enc_only) == {"encoder"} and m["decoder_depth"] == 0
  # A decoder MLP not built from the encoder's ratio is refused, naming the file and the widths.
  sd["decoder.blocks.0.mlp.fc1.weight"] = torch.zeros(40, 16)
  torch.save(sd, str(tmp_path / "bad.pth"))
  with pytest.raises(ValueError, match=r"bad.pth: decoder.blocks.0.mlp.fc1 is 40 wide.*= 32"):
    videomae_import.import_file(str(tmp_path / "bad.pth"), num_frames=4, img_size=32, **HEADS)


def test_classifier_import_matches_torch(tmp_path):
  enc = {**ENC, "patch_size": 16}
  ref = torch_ref.Classifier(32, 2, 2, 64, 16, 2, 16, 224, 7)  # the 8×14×14 grid: no pos_embed key
  for prm in ref.parameters():
    prm.data.normal_(0, 0.1)
  torch.save({"module": ref.state_dict()}, str(tmp_path / "cls.pth"))
  params, meta = videomae_import.import_file(str(tmp_path / "cls.pth"), **HEADS)
  assert meta["kind"] == "classifier" and meta["num_frames"] == 16 and meta["encoder"]["tubelet_size"] == 2
  video = np.random.RandomState(0).randn(1, 16, 224, 224, 3).astype(np.float32)
  logits = VideoClassifier(encoder=enc, num_classes=7).apply({"params": params}, video)
  with torch.no_grad():
    want = ref(to_torch_video(video)).numpy()
  np.testing.assert_allclose(np.asarray(logits), want, atol=1e-4)


@pytest.mark.parametrize("variant", ["S", "B", "L", "H", "g"])
def test_every_variant_has_the_official_keys_and_shapes(variant):
  """Shape-only: the export of each recipe's model == the official module's state_dict (built on torch's meta
  device), key for key; g/14's decoder MLP is int(512 · 48/11) = 2234 wide."""
  c = videomae_v2.get_config(variant)
  model = vp.build(c)
  v, enc = c.videomae, model.encoder
  n = 8 * (224 // enc["patch_size"]) ** 2
  abstract = nn.meta.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 16, 224, 224, 3)),
                                                             jnp.zeros((1, 16), jnp.int32), jnp.zeros((1, 16), jnp.int32)))["params"])
  flat = {layout.torch_name(p): layout.to_torch_array(layout.torch_name(p), p[-1], np.zeros(x.shape, np.float32)).shape
          for p, x in flax.traverse_util.flatten_dict(abstract).items()}
  with torch.device("meta"):
    ref = _torch_model(enc, 16, 224, v.decoder_dim, v.decoder_depth, v.decoder_heads)
  want = {k: tuple(t.shape) for k, t in ref.state_dict().items()}
  assert flat == want
  if variant == "g":
    assert want["decoder.blocks.0.mlp.fc1.weight"] == (2234, 512) and n == 2048
    assert want["decoder.head.weight"] == (1176, 512)


# ----------------------------------------------------------------------------- trainer
def test_loss_falls_and_resume_is_exact(data, tmp_path, monkeypatch):
  kw = {"total_steps": 24, "checkpoint.every": 8, "videomae.normalize_target": False}
  ref = vp.train(tiny(data, **kw), str(tmp_path / "ref"))
  want = [h["loss"] for h in ref.history]
  assert np.mean(want[-4:]) < 0.85 * np.mean(want[:4]), want
  again = preempt_and_resume(vp.train, lambda: tiny(data, **kw), str(tmp_path / "w"), 10, monkeypatch)
  np.testing.assert_allclose(again, want[10:], rtol=1e-6)
  _, meta = params_io.load_params(str(tmp_path / "ref" / "params.npz"))
  assert meta["kind"] == "videomae_pretrain" and meta["decoder_dim"] == 16


def test_sharded_step_equals_one_device(data, tmp_path):
  # Adam with eps 1e-8 turns a gradient coordinate near 0 into a ±lr step, so reduction-order rounding could move
  # a param by up to lr; eps 1e-3 bounds the update's sensitivity to lr/eps, so params compare at 1e-5.
  kw = {"total_steps": 2, "optim.eps": 1e-3}
  one = vp.train(tiny(data, **kw), str(tmp_path / "one"), devices=jax.devices()[:1])
  c8 = tiny(data, **kw)
  c8.mesh.update({"data": 2, "fsdp": 4, "tensor": 1})
  eight = vp.train(c8, str(tmp_path / "eight"))
  np.testing.assert_allclose([h["loss"] for h in eight.history], [h["loss"] for h in one.history], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5), eight.params,
               one.params)


def test_repeated_augmentation(data):
  record = ip.open_source(data, "train")[0]
  spec = config_lib.clip_spec(tiny(data).data, num_sample=3)
  views = ip.TrainClip(spec).random_map(record, np.random.default_rng(0))["video"]
  assert views.shape == (3, 4, 32, 32, 3)
  assert len({v.tobytes() for v in views}) == 3  # independent crops ...
  same = ip.TrainClip(config_lib.clip_spec(tiny(data).data, num_sample=3, crop="center"))
  centre = same.random_map(record, np.random.default_rng(0))["video"]
  assert all((v == centre[0]).all() for v in centre)  # ... of the same frames
  visible, decode = vp.dual_masks(jax.random.key(0), 3, (8, 14, 14), 0.9, 0.5)  # each view its own masks
  assert len({np.asarray(v).tobytes() for v in visible}) == 3
  assert vp.batch_shapes(tiny(data))["video"][0] == (8, 2, 4, 32, 32, 3)


def test_recipes():
  for arg, (lr, batch, clip, remat, dec) in {"B": (1e-3, 1024, 0.0, "none", 384), "L": (1e-3, 1536, 0.0, "none", 512),
                                             "H": (1e-3, 2048, 0.0, "dots_no_batch", 512),
                                             "g": (6e-4, 2048, 0.02, "dots_no_batch", 512)}.items():
    c = videomae_v2.get_config(arg)
    assert (c.optim.lr, c.batch_size, c.optim.grad_clip, c.model.remat, c.videomae.decoder_dim) == (lr, batch, clip,
                                                                                                     remat, dec)
    assert (c.optim.b1, c.optim.b2, c.optim.weight_decay, c.data.num_sample, c.data.stride) == (0.9, 0.95, 0.05, 4, 4)
  assert config_lib.student_kwargs(videomae_v2.get_config("g").model)["patch_size"] == 14
  with pytest.raises(ValueError, match="videomae_v2.py:X"):
    videomae_v2.get_config("X")


# ----------------------------------------------------------------------------- FLOPs
def test_dual_masked_step_flops_match_xla():
  width = 256
  counts = {}
  for ratio in (0.0, 0.5):
    c = tiny(**{"videomae.decoder_mask_ratio": ratio, "videomae.decoder_dim": width // 2})
    c.data.update(size=64, num_sample=1)
    c.model.update(embed_dim=width, num_heads=4, mlp_dim=4 * width)
    task = vp.model_task(c)
    ts = train_loop.build_step(c, task, steps=10, per_epoch=1.0, devices=jax.devices()[:1])
    xla = float(train_loop.xla_cost(ts.lower(vp.batch_shapes(c), None))["flops"])
    assert task.flops_per_step == pytest.approx(xla, rel=0.1)
    counts[ratio] = task.flops_per_step
  assert counts[0.5] < counts[0.0]
