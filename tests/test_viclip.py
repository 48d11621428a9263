"""ViCLIP (InternVid video CLIP, MSTA's backbone): parity with a PyTorch restatement loaded strictly from the
exported state_dict, import round trip and its errors, table resizes, init from CLIP, the adapter hook, counts."""
import dataclasses
import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests import torch_viclip
from tests.helpers import count, randomize, to_torch_video
from umt_jax import params_io
from umt_jax.convert import torch_export, viclip_import
from umt_jax.masking import random_mask
from umt_jax.models import layers
from umt_jax.models.clip import CLIP, CLIP_PRESETS, VICLIP_PRESETS, ViCLIP

ATOL = 1e-4
CFG = VICLIP_PRESETS["tiny"]  # 4 frames of 32² in 8² patches: 64 patch tokens, width 64 × 3 blocks; text 64 × 2


def _video(t=CFG.num_frames, b=2, seed=0):
  return np.random.RandomState(seed).randn(b, t, CFG.image_size, CFG.image_size, 3).astype(np.float32)


def _ids(b=3, seed=1):
  return np.random.RandomState(seed).randint(1, CFG.vocab_size, size=(b, CFG.context_length))


def _init(model, *args):
  """Unboxed params; one jitted init (eager init compiles op by op: several times slower)."""
  return flax.linen.meta.unbox(jax.jit(model.init)(jax.random.key(0), *args)["params"])


@pytest.fixture(scope="module")
def models():
  """Random JAX params (every param perturbed, the temporal table too) and the torch model strictly loaded
  from their export."""
  params = randomize(_init(ViCLIP(CFG), _video(), _ids()), scale=0.2)
  sd = viclip_import.export_state_dict(params)
  ref = torch_viclip.ViCLIP(CFG).eval()
  ref.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
  return params, sd, ref


@functools.lru_cache(maxsize=None)
def _jitted(method, cfg):
  return jax.jit(lambda p, *a: ViCLIP(cfg).apply({"params": p}, *a, method=method))


def _jax(params, method, *args, cfg=CFG, **kw):
  """ViCLIP(cfg).<method>(*args, **kw), jitted (`kw`, e.g. adapter callables, is closed over)."""
  if not kw:
    return np.asarray(_jitted(method, cfg)(params, *args))
  return np.asarray(jax.jit(lambda p, *a: ViCLIP(cfg).apply({"params": p}, *a, method=method, **kw))(params, *args))


def test_export_loads_strictly_and_matches_torch(models):
  params, sd, ref = models
  assert "vision_encoder.conv1.weight" in sd and sd["vision_encoder.conv1.weight"].shape == (64, 3, 1, 8, 8)
  assert sd["vision_encoder.temporal_positional_embedding"].shape == (1, 4, 64) and sd["temp"].shape == ()
  with torch.no_grad():
    for t in (CFG.num_frames, 1):  # 1 frame: the official code adds the temporal table's mean
      video = _video(t)
      want = ref.vision_encoder(to_torch_video(video)).numpy()
      np.testing.assert_allclose(_jax(params, ViCLIP.encode_video, video), want, atol=ATOL)
    keep = np.asarray(random_mask(jax.random.key(3), 2, 64, 0.75))  # ViCLIP's pretraining token masking
    want = ref.vision_encoder(to_torch_video(_video()), keep=torch.from_numpy(keep.copy())).numpy()
    np.testing.assert_allclose(_jax(params, ViCLIP.encode_video, _video(), keep), want, atol=ATOL)
    ids = _ids()
    want = ref.text_encoder(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(_jax(params, ViCLIP.encode_text, ids), want, atol=ATOL)
  v, t, temp = jax.jit(ViCLIP(CFG).apply)({"params": params}, _video(), ids)
  np.testing.assert_allclose(np.linalg.norm(v, axis=-1), 1.0, rtol=1e-5)
  assert float(temp) == pytest.approx(float(sd["temp"]))


def test_import_round_trip_cli_and_export(models, tmp_path):
  params, sd, _ = models
  src = tmp_path / "viclip.pth"
  torch.save({"model": {k: torch.from_numpy(v) for k, v in sd.items()}}, src)  # the released files' wrapper
  out = tmp_path / "viclip.npz"
  viclip_import.main(["--src", str(src), "--out", str(out), "--head_dim", "16"])
  cfg, back = viclip_import.load_viclip(str(out))
  assert cfg == CFG
  jax.tree.map(np.testing.assert_array_equal, back, flax.linen.meta.unbox(params))
  again = torch_export.state_dict_for("viclip", back, {})
  assert sorted(again) == sorted(sd)
  for k in sd:
    np.testing.assert_array_equal(again[k], sd[k])


def test_import_errors_name_the_key(models):
  _, sd, _ = models
  bad = {**sd, "vision_encoder.extra.weight": np.zeros(3, np.float32)}
  with pytest.raises(ValueError, match=r"unexpected keys \(1\): vision_encoder\.extra\.weight"):
    viclip_import.import_state_dict(bad, "f.pth")
  bad = {k: v for k, v in sd.items() if k != "text_encoder.ln_final.bias"}
  with pytest.raises(ValueError, match=r"missing keys \(1\): text_encoder\.ln_final\.bias"):
    viclip_import.import_state_dict(bad, "f.pth")
  bad = {**sd, "vision_encoder.transformer.resblocks.1.mlp.c_fc.bias": np.zeros(7, np.float32)}
  with pytest.raises(ValueError, match=r"f\.pth.*\n.*resblocks\.1\.mlp\.c_fc\.bias: shape \(7,\)"):
    viclip_import.import_state_dict(bad, "f.pth")
  with pytest.raises(ValueError, match="UMT stage-2 checkpoint.*umt-import-umt"):
    viclip_import.import_state_dict({**sd, "text_encoder.bert.embeddings.word_embeddings.weight": sd["temp"]})
  bad = {k: v for k, v in sd.items() if "temporal" not in k}
  with pytest.raises(ValueError, match="no 'vision_encoder.temporal_positional_embedding'.*not a ViCLIP"):
    viclip_import.import_state_dict(bad, "clip.pth")
  with pytest.raises(ValueError, match=r"built for 4 frames \(or 1\) of 32px got a video of shape \(2, 3,"):
    _jax(models[0], ViCLIP.encode_video, _video(3))


def test_import_resizes_tables_as_the_official_loader(models):
  _, sd, _ = models
  table = sd["vision_encoder.temporal_positional_embedding"]
  p8, cfg8 = viclip_import.import_state_dict(sd, num_frames=8, image_size=48, head_dim=16)
  assert (cfg8.num_frames, cfg8.image_size) == (8, 48)
  want = F.interpolate(torch.from_numpy(table).permute(0, 2, 1), 8, mode="linear").permute(0, 2, 1).numpy()
  np.testing.assert_allclose(p8["vision_encoder"]["temporal_positional_embedding"], want, atol=1e-6)
  pos = torch.from_numpy(sd["vision_encoder.positional_embedding"][1:]).reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
  want = F.interpolate(pos, size=(6, 6), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(36, -1)
  np.testing.assert_allclose(p8["vision_encoder"]["positional_embedding"][1:], want.numpy(), atol=1e-5)
  p2, _ = viclip_import.import_state_dict(sd, num_frames=2, head_dim=16)
  np.testing.assert_array_equal(p2["vision_encoder"]["temporal_positional_embedding"], table[:, :2])


def test_init_from_clip_equals_clip(tmp_path):
  """Zero temporal table: a 1-frame video embeds exactly as CLIP's image tower (the text tower is CLIP's). Not so
  T copies of a frame: the one CLS token then competes with T copies of each patch key."""
  ccfg = CLIP_PRESETS["tiny"]
  clip = CLIP(ccfg)
  images, ids = _video(1)[:, 0], _ids()
  cparams = randomize(_init(clip, images, ids), scale=0.2)
  params, cfg = viclip_import.from_clip(cparams, ccfg, num_frames=4, context_length=16)
  assert cfg == dataclasses.replace(CFG, text_width=ccfg.text_width)
  np.testing.assert_array_equal(params["vision_encoder"]["temporal_positional_embedding"], 0.0)
  assert float(params["temp"]) == pytest.approx(0.01)
  want = np.asarray(jax.jit(lambda p, x: clip.apply({"params": p}, x, method=CLIP.encode_image))(cparams, images))
  np.testing.assert_allclose(_jax(params, ViCLIP.encode_video, images[:, None], cfg=cfg), want, atol=1e-5)
  want = np.asarray(jax.jit(lambda p, x: clip.apply({"params": p}, x, method=CLIP.encode_text))(cparams, ids))
  np.testing.assert_allclose(_jax(params, ViCLIP.encode_text, ids, cfg=cfg), want, atol=1e-5)
  p3, _ = viclip_import.from_clip(cparams, ccfg, num_frames=4, context_length=20)
  np.testing.assert_array_equal(p3["text_encoder"]["positional_embedding"][16:], 0.0)
  params_io.save_params(str(tmp_path / "clip.npz"), cparams, {"kind": "clip", "clip_config": dataclasses.asdict(ccfg)})
  viclip_import.main(["--from_clip", str(tmp_path / "clip.npz"), "--out", str(tmp_path / "v.npz"), "--num_frames",
                      "4", "--context_length", "16"])
  cfg_cli, p_cli = viclip_import.load_viclip(str(tmp_path / "v.npz"))
  assert cfg_cli == cfg
  jax.tree.map(np.testing.assert_array_equal, p_cli, params)


class ToyMSTA(nn.Module):
  """How MSTA plugs in: adapters are the parent's submodules (one `shared` layer used by both towers), handed to
  the towers as per-block callables; the towers' params stay under `viclip`, untouched."""

  @nn.compact
  def __call__(self, video, ids):
    shared = layers.Dense(4, axes=(None, None), name="shared_1")
    vd, vu = layers.Dense(4, name="video_down_1"), layers.Dense(CFG.vision_width, name="video_up_1")
    td, tu = layers.Dense(4, name="text_down_1"), layers.Dense(CFG.text_width, name="text_up_1")
    model = ViCLIP(CFG, name="viclip")
    v = model.encode_video(video, adapters=[None, lambda z: vu(nn.relu(shared(vd(z)))), None])
    t = model.encode_text(ids, adapters=[None, lambda z: tu(nn.relu(shared(td(z))))])
    return v, t


def test_adapter_hook_matches_torch_and_shares_params(models):
  params, _, ref = models
  rng = np.random.RandomState(5)
  wv = [0.1 * rng.randn(64, 64).astype(np.float32) for _ in range(3)]
  wt = [0.1 * rng.randn(64, 64).astype(np.float32) for _ in range(2)]
  video, ids = _video(), _ids()
  got_v = _jax(params, ViCLIP.encode_video, video, adapters=[None] + [lambda z, w=w: z @ w for w in wv[1:]])
  got_t = _jax(params, ViCLIP.encode_text, ids, adapters=[lambda z, w=w: z @ w for w in wt])
  with torch.no_grad():
    tv = [None] + [lambda z, w=w: z @ torch.from_numpy(w) for w in wv[1:]]
    want_v = ref.vision_encoder(to_torch_video(video), adapters=tv).numpy()
    want_t = ref.text_encoder(torch.from_numpy(ids), adapters=[lambda z, w=w: z @ torch.from_numpy(w) for w in wt])
  np.testing.assert_allclose(got_v, want_v, atol=ATOL)
  np.testing.assert_allclose(got_t, want_t.numpy(), atol=ATOL)
  assert np.abs(got_v - _jax(params, ViCLIP.encode_video, video)).max() > 1e-3

  shapes = flax.linen.meta.unbox(jax.eval_shape(ToyMSTA().init, jax.random.key(0), video, ids)["params"])
  assert set(shapes) == {"shared_1", "text_down_1", "text_up_1", "video_down_1", "video_up_1", "viclip"}
  assert jax.tree.map(lambda s: s.shape, shapes["viclip"]) == jax.tree.map(np.shape, params)
  full = {k: jax.tree.map(lambda s: 0.1 * rng.randn(*s.shape).astype(np.float32), v) for k, v in shapes.items()
          if k != "viclip"} | {"viclip": params}

  @jax.jit
  def grad_shared(shared):  # d(sum of video embeddings), d(sum of text embeddings) w.r.t. the shared layer
    out, pull = jax.vjp(lambda sh: ToyMSTA().apply({"params": {**full, "shared_1": sh}}, video, ids), shared)
    cot = lambda i: tuple(jnp.full_like(o, float(i == j)) for j, o in enumerate(out))
    return [pull(cot(i))[0]["kernel"] for i in range(2)]
  assert all(np.abs(g).sum() > 0 for g in grad_shared(full["shared_1"]))  # it learns from both towers
  with pytest.raises(ValueError, match="adapters has 2 entries; expected one per block \\(3"):
    _jax(params, ViCLIP.encode_video, video, adapters=[None, None])


def test_drop_path_only_in_training(models):
  params, video = models[0], _video()
  model = ViCLIP(dataclasses.replace(CFG, drop_path_rate=0.5))
  run = jax.jit(lambda det: model.apply({"params": params}, video, deterministic=det, method=ViCLIP.encode_video,
                                        rngs={"dropout": jax.random.key(0)}), static_argnums=0)
  plain = _jax(params, ViCLIP.encode_video, video)
  np.testing.assert_allclose(run(True), plain, atol=1e-5)
  assert np.abs(np.asarray(run(False)) - plain).max() > 1e-3


# OpenAI CLIP: ViT-B/16 149,620,737 params (image tower 86,192,640), ViT-L/14 427,616,513 (303,966,208), with a
# 77-token text table and logit_scale. ViCLIP: + T·D temporal table, 32-token text table, temp for logit_scale.
@pytest.mark.parametrize("name,clip_total,clip_visual,want_total", [
    ("ViCLIP-B/16", 149_620_737, 86_192_640, 149_603_841),
    ("ViCLIP-L/14", 427_616_513, 303_966_208, 427_590_145)])
def test_param_counts_and_logical_axes(name, clip_total, clip_visual, want_total):
  cfg = VICLIP_PRESETS[name]
  boxed = viclip_import.abstract_params(cfg)
  params = flax.linen.meta.unbox(boxed)
  w, tw = cfg.vision_width, cfg.text_width
  assert count(params["vision_encoder"]) == clip_visual + cfg.num_frames * w
  assert count(params["text_encoder"]) == clip_total - clip_visual - 1 - (77 - 32) * tw
  assert count(params) == want_total
  if name == "ViCLIP-B/16":  # MSTA's "ViCLIP full fine-tuning, 124.3M trainable": all but the token table, temp
    assert count(params) - cfg.vocab_size * tw - 1 == 124_306_944
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert len(leaves) == len(jax.tree.leaves(params))
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned) and len(leaf.names) == leaf.value.ndim
