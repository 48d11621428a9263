"""MSTA on tiny models: the adapters against a numpy reference, the shared layer, MMA's gradient scaling (exact
against the unscaled gradient, and against finite differences), the O(λ) effect at the official init, the
trainable counts of the paper's settings, the consistency loss, description-file errors, few-shot sampling, and
the trainer end to end (few-shot with a preemption + exact resume, base-to-novel, zero-shot transfer): frozen
towers bit-identical and absent from the checkpoint and params.npz."""
import dataclasses
import json
import os
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import msta as msta_recipes
from data import synthetic
from tests.helpers import count, preempt_and_resume
from umt_jax import config_lib, demo, descriptions, input_pipeline as ip, losses, params_io
from umt_jax.models import adapters as ad, clip, msta as msta_model
from umt_jax.tokenizer import WordTokenizer
from umt_jax.trainers import msta

TINY = dataclasses.replace(clip.CLIP_PRESETS["tiny"], context_length=32)  # 32²/8² patches, widths 64 / 48


def unbox(tree):
  return flax.linen.meta.unbox(tree)


def np_adapter(p: dict, z: np.ndarray, frames: int, tower: str, joint: bool = False) -> np.ndarray:
  """One layer's adapter written out in numpy (depthwise temporal conv, kernel 3, zero padding); `joint`: ViCLIP's
  tokens (B, 1+N·T, C), patch n of frame t at 1 + n·T + t, the CLS token a sequence of one."""
  dense = lambda q, x: x @ np.asarray(q["kernel"]) + np.asarray(q["bias"])
  relu = lambda x: np.maximum(x, 0)
  h = relu(dense(p["shared"], relu(dense(p[f"{tower}_down"], z))))
  out = dense(p[f"{tower}_up"], h)
  if tower == "text":
    return out
  w, b = np.asarray(p["temporal_kernel"]), np.asarray(p["temporal_bias"])

  def conv(ht):  # (B, T, N, d) -> (B, T, N, W)
    ht = np.repeat(ht, w.shape[1] // ht.shape[-1], axis=-1)  # output channel o <- bottleneck channel o // (W/d)
    pad = np.pad(ht, ((0, 0), (1, 1), (0, 0), (0, 0)))
    return sum(pad[:, j:j + ht.shape[1]] * w[j] for j in range(3)) + b

  if not joint:
    return out + conv(h.reshape(-1, frames, *h.shape[1:])).reshape(out.shape)
  bsz, n, d = h.shape
  patches = conv(h[:, 1:].reshape(bsz, (n - 1) // frames, frames, d).transpose(0, 2, 1, 3))  # (B, T, N, W)
  cls = conv(h[:, None, :1])[:, 0]
  return out + np.concatenate([cls, patches.transpose(0, 2, 1, 3).reshape(bsz, n - 1, -1)], axis=1)


@pytest.fixture(scope="module")
def tiny_model():
  m = msta_model.MSTAModel(TINY, ad.AdapterConfig(start=1, end=2, dim=16), num_frames=2)
  return m, clip_params(TINY), unbox(jax.jit(m.init)(jax.random.key(1)))


def clip_params(cfg: clip.CLIPConfig) -> dict:
  ids = jnp.zeros((1, cfg.context_length), jnp.int32)
  init = jax.jit(lambda k: clip.CLIP(cfg).init(k, jnp.zeros((1, 32, 32, 3)), ids)["params"])
  return jax.tree.map(np.asarray, unbox(init(jax.random.key(0))))


def test_adapter_forward_matches_numpy_and_the_layer_is_shared(tiny_model):
  m, _, ap = tiny_model
  layer = ad.LayerAdapter(64, 48, m.adapter_cfg)
  p = ap["layer_1"]
  assert sorted(p) == ["shared", "temporal_bias", "temporal_kernel", "text_down", "text_up", "video_down", "video_up"]
  z = np.random.RandomState(0).randn(6, 5, 64).astype(np.float32)  # (B·T, 1+N, C) with T = 2
  zt = np.random.RandomState(1).randn(2, 7, 48).astype(np.float32)
  p = jax.tree.map(lambda x: x + 0.1 * np.random.RandomState(2).randn(*x.shape).astype(np.float32), p)  # biases too
  video = jax.jit(lambda q, y: layer.apply({"params": q}, y, 2, method=ad.LayerAdapter.video))
  text = jax.jit(lambda q, y: layer.apply({"params": q}, y, method=ad.LayerAdapter.text))
  got_v, got_t = video(p, z), text(p, zt)
  np.testing.assert_allclose(got_v, np_adapter(p, z, 2, "video"), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got_t, np_adapter(p, zt, 2, "text"), rtol=1e-5, atol=1e-5)
  # one `shared` per layer, receiving gradient from each tower on its own
  g_v = jax.jit(jax.grad(lambda q: video(q, z).sum()))(p)
  g_t = jax.jit(jax.grad(lambda q: text(q, zt).sum()))(p)
  for g in (g_v, g_t):
    assert np.abs(g["shared"]["kernel"]).sum() > 0
  assert np.abs(g_v["text_down"]["kernel"]).sum() == 0 and np.abs(g_t["video_down"]["kernel"]).sum() == 0


def test_viclip_backbone_joint_tokens(tiny_model):
  """ViCLIP (joint space-time tokens, n-major): the joint adapter layout against numpy, and the adapted tower
  equal to the frozen ViCLIP when the up-projections are zero."""
  _, _, ap = tiny_model
  layer = ad.LayerAdapter(64, 48, ad.AdapterConfig(start=1, end=2, dim=16))
  p = jax.tree.map(lambda x: x + 0.1 * np.random.RandomState(2).randn(*x.shape).astype(np.float32), ap["layer_1"])
  z = np.random.RandomState(0).randn(2, 1 + 3 * 4, 64).astype(np.float32)  # 3 patches × 4 frames + CLS
  got = jax.jit(lambda q, y: layer.apply({"params": q}, y, 4, "joint", method=ad.LayerAdapter.video))(p, z)
  np.testing.assert_allclose(got, np_adapter(p, z, 4, "video", joint=True), rtol=1e-5, atol=1e-5)
  cfg = clip.VICLIP_PRESETS["tiny"]
  m = msta_model.MSTAModel(cfg, ad.AdapterConfig(start=1, end=2, dim=16), num_frames=4, backbone="viclip")
  ids = jnp.zeros((1, cfg.context_length), jnp.int32)
  cp = jax.jit(lambda k: unbox(m.clip.init(k, jnp.zeros((1, 4, 32, 32, 3)), ids)["params"]))(jax.random.key(0))
  aps = jax.jit(lambda k: unbox(m.init(k)))(jax.random.key(1))
  video = jax.random.normal(jax.random.key(2), (2, 4, 32, 32, 3))
  frozen = jax.jit(lambda c: clip.l2n(m.clip.apply({"params": c}, video, method=clip.ViCLIP.encode_video)))(cp)
  zero_up = {k: {n: (jax.tree.map(jnp.zeros_like, q) if n.endswith("_up") or n.startswith("temporal") else q)
                 for n, q in layer_p.items()} for k, layer_p in aps.items()}
  embed = jax.jit(lambda c, q: m.video_embed(c, q, video))
  np.testing.assert_array_equal(embed(cp, zero_up), frozen)
  assert 0 < float(jnp.abs(embed(cp, aps) - frozen).max()) < 0.05
  with pytest.raises(ValueError, match="needs a ViCLIP params file"):
    msta_model.MSTAModel(TINY, ad.AdapterConfig(start=1, end=2, dim=16), num_frames=4, backbone="viclip")


def test_grad_scale_is_mma_gradient_scaling(tiny_model, monkeypatch):
  x, c = jnp.arange(4.0), jnp.asarray([1.0, -2.0, 3.0, 0.5])
  np.testing.assert_array_equal(ad.grad_scale(x, 0.25), x)
  np.testing.assert_array_equal(jax.grad(lambda y: (ad.grad_scale(y, 0.25) * c).sum())(x), 0.25 * c)
  # MMA's branch x + gs(λ·A(gs(x, λ)), 1/λ): the input gets the true gradient (= finite differences), the
  # adapter params 1/λ times theirs
  m, cp, ap = tiny_model
  lam, layer, p = 0.1, ad.LayerAdapter(64, 48, m.adapter_cfg), ap["layer_1"]
  z = jax.random.normal(jax.random.key(3), (2, 3, 48))
  w = jax.random.normal(jax.random.key(4), (2, 3, 48))
  a = lambda q, y: layer.apply({"params": q}, y, method=ad.LayerAdapter.text)
  branch = lambda q, y: jnp.sum(w * (y + ad.grad_scale(lam * a(q, ad.grad_scale(y, lam)), 1 / lam)))
  g_p, g_z = jax.grad(branch, argnums=(0, 1))(p, z)
  v = jax.tree.map(lambda t: jax.random.normal(jax.random.key(5), t.shape), (p, z))
  eps = 1e-3
  fd = lambda i: (branch(*[jax.tree.map(lambda t, d: t + s * eps * d, q, v[i]) if j == i else q
                          for j, q in enumerate((p, z))]) for s in (1, -1))
  for i, g in enumerate((g_p, g_z)):
    hi, lo = fd(i)
    want = (hi - lo) / (2 * eps) / (lam if i == 0 else 1.0)
    got = sum(jnp.sum(t * d) for t, d in zip(jax.tree.leaves(g), jax.tree.leaves(v[i])))
    np.testing.assert_allclose(got, want, rtol=1e-2)
  # the whole model (adapters in blocks 1 and 2, so block 1's gradient also crosses block 2's branch):
  # every adapter gradient is exactly 1/λ times the plain autodiff gradient of the λ-scaled model
  m = msta_model.MSTAModel(TINY, dataclasses.replace(m.adapter_cfg, scale=0.5), num_frames=2)
  video = jax.random.normal(jax.random.key(6), (2, 2, 32, 32, 3))
  ids = jnp.asarray([[1, 5, 6, 40, 99] + [0] * 27, [1, 7, 99] + [0] * 29])
  f = lambda q: jnp.sum(m.video_embed(cp, q, video)[:, :4]) + jnp.sum(m.text_embed(cp, q, ids)[:, 4:8])
  scaled = jax.jit(jax.grad(f))(ap)
  monkeypatch.setattr(msta_model, "grad_scale", lambda y, s: y)
  plain = jax.jit(jax.grad(f))(ap)
  jax.tree.map(lambda s, q: np.testing.assert_allclose(0.5 * s, q, rtol=1e-4, atol=1e-7), scaled, plain)


def test_adapters_change_the_frozen_model_by_order_lambda(tiny_model):
  """MMA's init is Kaiming normal with zero biases, not zero: the adapted model starts O(λ) from the frozen one;
  with the up-projections zeroed it is the frozen model exactly."""
  m, cp, ap = tiny_model
  video = jax.random.normal(jax.random.key(7), (2, 2, 32, 32, 3))
  frozen = jax.jit(lambda c: m.video_embed(c, None, video))(cp)
  diff = {}
  for lam in (0.005, 0.01):
    m_l = msta_model.MSTAModel(TINY, dataclasses.replace(m.adapter_cfg, scale=lam), num_frames=2)
    diff[lam] = float(jnp.abs(jax.jit(lambda c, q: m_l.video_embed(c, q, video))(cp, ap) - frozen).max())
  assert 0 < diff[0.005] < 0.05 and diff[0.01] / diff[0.005] == pytest.approx(2.0, rel=0.05)
  zero_up = {k: {n: (jax.tree.map(jnp.zeros_like, q) if n.endswith("_up") or n.startswith("temporal") else q)
                 for n, q in layer.items()} for k, layer in ap.items()}
  np.testing.assert_array_equal(jax.jit(lambda c, q: m.video_embed(c, q, video))(cp, zero_up), frozen)


def test_trainable_counts_of_the_paper_settings():
  b16 = clip.CLIP_PRESETS["ViT-B/16"]
  full = ad.adapter_count(768, 512, 12, ad.AdapterConfig(start=1, end=12, dim=256))
  logs = ad.adapter_count(768, 512, 12, ad.AdapterConfig(start=8, end=12, dim=128))
  assert (full, logs) == (8_712_192, 1_744_000)  # paper 8.7M; the few-shot / base-to-novel logs 1.744M
  assert full / 124.3e6 == pytest.approx(0.07, abs=0.001)  # over ViCLIP-B's full fine-tuning count (paper: 7%)
  m = msta_model.MSTAModel(b16, ad.AdapterConfig(start=1, end=12, dim=256), num_frames=8)
  assert count(unbox(m.abstract_clip())) == 149_620_737  # OpenAI CLIP ViT-B/16, both towers
  dense = ad.adapter_count(768, 512, 12, ad.AdapterConfig(start=1, end=12, dim=256, temporal="dense"))
  assert dense - full == 12 * (3 * 256 * 768 - 3 * 768)  # a full conv instead of the depthwise one


def test_consistency_loss_against_hand_computation():
  w = np.asarray([[3.0, 4.0], [1.0, 0.0]])
  d_s = np.asarray([[4.0, 3.0], [0.0, 2.0]])
  d_t = np.asarray([[3.0, 4.0], [-1.0, 0.0]])
  # class 0: cos 24/25 and 1; class 1: cos 0 and -1 -> (2 - 0.96 - 1 + 2 - 0 + 1) / 2
  assert float(losses.consistency_loss(w, d_s, d_t)) == pytest.approx((0.04 + 3.0) / 2, rel=1e-6)


def test_description_files_and_their_errors(tmp_path):
  names = ["run", "jump"]
  s_path, _ = descriptions.write_descriptions(str(tmp_path), 2, "toy", [["a", "b"], ["c", "d"]], [["e"], ["f"]])
  assert os.path.basename(s_path) == "2_s_description_toy.json"
  assert descriptions.read_descriptions(s_path, names) == [["a", "b"], ["c", "d"]]
  cases = {"missing.json": None, "bad.json": '{"0": ["a"], ', "list.json": '[["a"]]',
           "noclass.json": '{"0": ["a"]}', "empty.json": '{"0": ["a"], "1": []}',
           "extra.json": '{"0": ["a"], "1": ["b"], "2": ["c"]}', "number.json": '{"0": ["a"], "1": [3]}'}
  want = {"missing.json": "not found", "bad.json": "not valid JSON", "list.json": "expected an object",
          "noclass.json": "class 1 ('jump'): no entry", "empty.json": "class 1 ('jump'): expected a non-empty",
          "extra.json": "not class indices", "number.json": "class 1 ('jump'): sentences must be"}
  for name, text in cases.items():
    path = tmp_path / name
    if text is not None:
      path.write_text(text)
    with pytest.raises((ValueError, FileNotFoundError), match=re.escape(want[name])) as e:
      descriptions.read_descriptions(str(path), names)
    assert name in str(e.value)


def test_clip_bpe_tokenizer_json(tmp_path):
  """A Hugging Face tokenizer.json in CLIP's form (byte-level BPE, <|startoftext|> ... <|endoftext|>, the end token
  the largest id): ids start with SOT, keep EOT (the text tower's argmax) when cut, and pad with 0."""
  from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.train_from_iterator(["a video of moving left", "a large circle on a striped background"] * 10,
                          trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tok.add_special_tokens(["<|startoftext|>", "<|endoftext|>"])
  sot, eot = tok.token_to_id("<|startoftext|>"), tok.token_to_id("<|endoftext|>")
  tok.post_processor = processors.RobertaProcessing(("<|endoftext|>", eot), ("<|startoftext|>", sot))
  path = str(tmp_path / "tokenizer.json")
  tok.save(path)
  ids = msta.load_tokenizer(path, 8)(["a video of moving left and right and up", "a circle"])
  assert ids.shape == (2, 8) and ids.dtype == np.int32 and eot == tok.get_vocab_size() - 1
  assert ids[:, 0].tolist() == [sot, sot] and ids[0, -1] == eot and np.argmax(ids, axis=1).tolist() == [7, 3]
  assert ids[1, 4:].tolist() == [0] * 4
  with pytest.raises(FileNotFoundError, match="not found"):
    msta.load_tokenizer(str(tmp_path / "nope.json"), 8)
  (tmp_path / "bad.json").write_text('{"version": "1"}')
  with pytest.raises(ValueError, match="neither a WordTokenizer file nor a Hugging Face tokenizer.json"):
    msta.load_tokenizer(str(tmp_path / "bad.json"), 8)


def test_few_shot_sampling_is_deterministic_per_seed():
  labels = np.repeat(np.arange(4), 10)
  names = ["a", "b", "c", "d"]
  one = msta.sample_shots(labels, [0, 1, 2, 3], 3, seed=1, names=names)
  assert np.array_equal(one, msta.sample_shots(labels, [0, 1, 2, 3], 3, seed=1, names=names))
  assert not np.array_equal(one, msta.sample_shots(labels, [0, 1, 2, 3], 3, seed=2, names=names))
  assert np.bincount(labels[one]).tolist() == [3, 3, 3, 3]
  base = msta.sample_shots(labels, [1, 3], 0, seed=0, names=names)
  assert set(labels[base]) == {1, 3} and len(base) == 20
  with pytest.raises(ValueError, match=r"class 2 \('c'\) has only 10"):
    msta.sample_shots(labels, [2], 11, seed=0, names=names)


# ---------------------------------------------------------------------------------------------- the trainer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """Two synthetic datasets (the zero-shot target has other classes) and a random tiny CLIP with a tokenizer
  covering their captions, prompts and descriptions."""
  root = tmp_path_factory.mktemp("msta")
  data, other = str(root / "data"), str(root / "other")
  synthetic.generate(data, {"train": 40, "test": 20}, size=32, frames=4, clips_per_shard=64)
  synthetic.generate(other, {"test": 6}, classes=("move_up", "move_down", "appear"), size=32, frames=4)
  words = set()
  for d in (data, other):
    meta = ip.read_metadata(d)
    for c in meta["class_text"]:
      words.update(WordTokenizer.split(f"a video of {c}"))
    for kind in descriptions.KINDS:
      path = descriptions.description_path(os.path.join(d, "descriptions"), 2, kind, "synthetic")
      for group in descriptions.read_descriptions(path, meta["label_names"]):
        words.update(w for s in group for w in WordTokenizer.split(s))
  tok = WordTokenizer(words, TINY.context_length)
  tok.save(str(root / "tokenizer.json"))
  cfg = dataclasses.replace(TINY, vocab_size=tok.vocab_size)
  clip_path = str(root / "clip.npz")
  params_io.save_params(clip_path, clip_params(cfg), {"kind": "clip", "clip_config": dataclasses.asdict(cfg)})
  return {"data": data, "other": other, "clip": clip_path}


def tiny(setup, **kw):
  c = config_lib.base("msta")
  c.data.update(path=setup["data"], split="train", eval_split="test", size=32, num_frames=2, sampling="segment",
                crop="center", flip=False, eval_batch_size=8)
  c.update(batch_size=8, total_steps=4, log_every=1, min_fsdp_size=0)
  c.optim.update(lr=1e-2, min_lr=1e-2, warmup_epochs=0.0, scale_lr_by_batch=False, weight_decay=0.001, b2=0.999)
  c.checkpoint.update(every=2, **{"async": False})
  c.msta.update(clip=setup["clip"], pixel_norm="imagenet", start=1, end=2, dim=16)
  return config_lib.override(c, kw)


def test_few_shot_trains_adapters_only_and_resumes_exactly(setup, tmp_path, monkeypatch, capsys):
  make = lambda: tiny(setup, **{"msta.protocol": "few_shot", "msta.shots": 2})
  w = str(tmp_path / "fs")
  task, _ = msta.make_task(make())
  assert task.clips_per_epoch == 20  # 2 shots × 10 classes
  result = msta.train(make(), w)
  assert "MSTA trainable params: 8,512 adapters" in capsys.readouterr().err
  assert {"loss_ce", "loss_cc"} <= set(result.history[0]) and set(result.eval) >= {"top1", "top5"}
  # the frozen CLIP is exactly its file, and is in neither the checkpoint nor params.npz
  want, _ = params_io.load_params(setup["clip"])
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), task.extra["clip"], want)
  state = ocp.StandardCheckpointer().metadata(os.path.join(w, "checkpoints", "4", "state"))
  state = getattr(state, "item_metadata", state)
  sizes = [int(np.prod(x.shape)) for x in jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "shape"))]
  assert sum(sizes) <= 3 * 8_512 + 16  # adapters + two Adam moments
  exported, meta = params_io.load_params(os.path.join(w, "params.npz"))
  assert meta["kind"] == "msta_adapters" and sorted(exported) == ["layer_1", "layer_2"] and count(exported) == 8_512
  init = unbox(task.init(jax.random.key(0)))
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != b)), result.params, init)
  assert all(jax.tree.leaves(changed))
  again = preempt_and_resume(msta.train, make, str(tmp_path / "resume"), 2, monkeypatch)
  assert again == [h["loss"] for h in result.history][2:]
  # the step sharded over 8 devices (batch over `data`) = 1 device (the lr is constant, so 2 steps suffice)
  one = msta.train(tiny(setup, total_steps=2, **{"msta.protocol": "few_shot", "msta.shots": 2,
                                                  "data.eval_split": ""}), str(tmp_path / "one"), jax.devices()[:1])
  np.testing.assert_allclose([h["loss"] for h in one.history], [h["loss"] for h in result.history][:2], rtol=1e-5)


def test_base_to_novel_and_zero_shot(setup, tmp_path):
  c = tiny(setup, total_steps=1, **{"msta.protocol": "base_to_novel", "msta.base_classes":
                                    "move_left,rotate_cw,grow,circle,cross"})
  task, export = msta.make_task(c)
  assert export["train_classes"] == ["move_left", "rotate_cw", "grow", "circle", "cross"]
  assert task.clips_per_epoch == 20 and task.extra["class_ids"].shape[0] == 5
  assert task.extra["desc_s"].shape == task.extra["desc_t"].shape == (5, TINY.embed_dim)
  ev = msta.train(c, str(tmp_path / "b2n")).eval
  b, n = ev["base_top1"], ev["novel_top1"]
  assert ev["hm"] == pytest.approx(2 * b * n / (b + n) if b + n else 0.0)
  zs = tiny(setup, total_steps=1, **{"msta.protocol": "zero_shot", "msta.eval_path": setup["other"],
                                     "msta.eval_split": "test", "msta.cc_weight": 0.0})
  task, _ = msta.make_task(zs)
  assert "desc_s" not in task.extra
  ev = msta.train(zs, str(tmp_path / "zs")).eval
  hits = ev["top1"] * 6 / 100  # 6 clips of the other label set
  assert hits == pytest.approx(round(hits)) and 0 <= round(hits) <= 6
  with pytest.raises(ValueError, match="not label names"):
    msta.make_task(tiny(setup, **{"msta.protocol": "base_to_novel", "msta.base_classes": "jogging"}))
  with pytest.raises(ValueError, match="needs config.msta.shots"):
    msta.make_task(tiny(setup, **{"msta.protocol": "few_shot"}))
  with pytest.raises(ValueError, match="MSTA needs a full CLIP"):
    params, meta = params_io.load_params(setup["clip"])
    bad = str(tmp_path / "visual.npz")
    params_io.save_params(bad, params["visual"], {**meta, "kind": "clip_visual"})
    msta.make_task(tiny(setup, **{"msta.clip": bad}))


def test_full_fine_tuning_of_the_video_tower(setup, tmp_path):
  """The baseline MSTA is compared with: the CLIP's video tower is the params (starting from the file), the text
  tower stays frozen and outside the optimizer; L_CC would be a constant, so it is refused."""
  c = tiny(setup, total_steps=2, **{"msta.protocol": "few_shot", "msta.shots": 2, "msta.trainable": "video_tower",
                                    "msta.cc_weight": 0.0})
  task, export = msta.make_task(c)
  want, _ = params_io.load_params(setup["clip"])
  assert "visual" not in task.extra["clip"] and export["kind"] == "msta_video_tower"
  assert export["trainable_params"] == count(want["visual"])
  result = msta.train(c, str(tmp_path / "ft"))
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != b)), result.params, want["visual"])
  assert sum(jax.tree.leaves(changed)) > len(jax.tree.leaves(changed)) // 2  # trained from the file's weights
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), task.extra["clip"],
               {k: v for k, v in want.items() if k != "visual"})
  assert set(result.eval) >= {"top1"}
  with pytest.raises(ValueError, match="L_CC is a constant"):
    msta.make_task(tiny(setup, **{"msta.protocol": "few_shot", "msta.shots": 2, "msta.trainable": "video_tower"}))


def test_recipes():
  for arg in ("few_shot,hmdb", "base_to_novel,k400", "zero_shot,k400", "supervised,k400"):
    c = msta_recipes.get_config(arg)
    assert c.trainer == "msta" and c.msta.protocol == arg.split(",")[0]
    assert (c.msta.start, c.msta.end, c.msta.dim, c.msta.scale) == (8, 12, 128, 0.005)
    assert c.optim.weight_decay == 0.001 and c.optim.warmup_epochs == 5
  fs = msta_recipes.get_config("few_shot,hmdb")
  assert (fs.batch_size, fs.optim.lr, fs.num_epochs, fs.msta.shots) == (32, 1e-3, 50, 2)
  with pytest.raises(ValueError, match="expected"):
    msta_recipes.get_config("few_shot,imagenet")


def test_msta_demo_stages_are_wired(tmp_path):
  """`make demo-msta` (one device), 2 steps a stage, on a small copy of the data: every row of both tables, the
  trainable counts from the runs' params.npz, the probe's missing novel column."""
  import subprocess
  import sys
  from tests.helpers import subprocess_env
  w = str(tmp_path)
  synthetic.generate(os.path.join(w, "data"), {"pretrain": 16, "train": 160, "test": 20}, size=36, frames=8,
                     clips_per_shard=256)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cmd = [sys.executable, "-m", "umt_jax.demo", "--method", "msta", "--workdir", w, "--steps", "2"]
  out = subprocess.run(cmd, cwd=root, env=subprocess_env(1), capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  report = open(os.path.join(w, "report_msta.md")).read()
  assert report in out.stdout
  n = {s: params_io.load_params(os.path.join(w, s, "params.npz"))[1] for s in ("msta_b2n", "msta_fs_ft")}
  assert n["msta_b2n"]["kind"] == "msta_adapters" and n["msta_fs_ft"]["kind"] == "msta_video_tower"
  assert n["msta_b2n"]["train_classes"] == ["move_left", "rotate_cw", "grow", "circle", "cross"]
  for row in ("| zero-shot CLIP (frame-averaged) | 0 |", f"| MSTA | {n['msta_b2n']['trainable_params']:,} |",
              f"| full fine-tuning of the image tower | {n['msta_fs_ft']['trainable_params']:,} |",
              "| MSTA without L_CC |", "MSTA has the best harmonic mean (mean of 3 seeds):"):
    assert row in report
  for stage in ("msta_b2n", "msta_b2n_nocc", "msta_fs_ft"):  # the trained rows: one run per seed, their mean
    runs = [json.load(open(os.path.join(w, demo.seed_run(stage, s), "result.json")))["eval"] for s in demo.FT_SEEDS]
    key = "top1" if stage.startswith("msta_fs") else "hm"
    assert " / ".join(f"{r[key]:.1f}" for r in runs) in report
  probe = next(line for line in report.splitlines() if line.startswith("| linear probe"))
  assert probe.split(" | ")[2:5][1:] == ["—", "—"]  # no novel classes, no HM
