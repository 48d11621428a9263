"""UMT stage 2 end to end on tiny models: from a stage-1 workdir and an imported BERT, video and image steps
interleaved, every term logged, zero-shot retrieval at the end equal to the eval-only run of its params file;
sharded == one device; exact resume after a preemption; clear errors."""
import dataclasses
import json
import os
import socket
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data import synthetic
from tests.helpers import preempt_and_resume
from tests.test_training import ROOT, TINY_CLIP, _env, losses_of, tiny
from umt_jax import input_pipeline as ip, params_io, sharding, tokenizer as tok
from umt_jax.convert.bert_import import init_params
from umt_jax.models.bert import BertConfig
from umt_jax.models.clip import CLIPVision
from umt_jax.trainers import umt_pretrain, umt_stage2

TINY_BERT = dict(hidden_size=32, num_layers=3, num_heads=2, intermediate_size=64, fusion_layer=2, max_length=20)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """Synthetic clips, a tiny teacher, a vocab of the captions, a BERT params file, a 2-step stage-1 workdir."""
  root = tmp_path_factory.mktemp("stage2")
  data = str(root / "data")
  synthetic.generate(data, {"pretrain": 48, "test": 12}, size=20, frames=4, clips_per_shard=64)
  teacher = str(root / "teacher.npz")
  tparams = CLIPVision(TINY_CLIP).init(jax.random.key(1), jnp.zeros((1, 16, 16, 3)))["params"]
  params_io.save_params(teacher, tparams, {"kind": "clip_visual", "clip_config": dataclasses.asdict(TINY_CLIP)})
  vocab = str(root / "vocab.txt")
  tok.BertTokenizer.from_records(ip.open_source(data, "pretrain"), vocab)
  n_vocab = tok.BertTokenizer(vocab).vocab_size
  bcfg = BertConfig(vocab_size=n_vocab, hidden_size=32, num_layers=3, num_heads=2, intermediate_size=64,
                    fusion_layer=2, encoder_width=32)
  bert = str(root / "bert.npz")
  params_io.save_params(bert, init_params(bcfg, seed=3), {"kind": "bert", "bert_config": dataclasses.asdict(bcfg)})
  stage1 = str(root / "umt")
  umt_pretrain.train(tiny("umt", data, **{"teacher.path": teacher, "total_steps": 2}), stage1)
  return dict(data=data, teacher=teacher, vocab=vocab, bert=bert, stage1=stage1)


def stage2_config(s: dict, **kw):
  """Video-text steps only (one compile); the first test adds the image steps."""
  c = tiny("umt_stage2", s["data"], **{"teacher.path": s["teacher"], "text.vocab": s["vocab"],
                                      "data.eval_path": "", "stage2.embed_dim": 16, "stage2.rerank_k": 4, **kw})
  c.text.update(**TINY_BERT)
  return c


def test_stage2_from_stage1_trains_and_retrieval_equals_eval_only(setup, tmp_path):
  s = setup
  c = stage2_config(s, **{"init_from.workdir": s["stage1"], "text.init": s["bert"], "total_steps": 4,
                          "data.image_path": s["data"], "data.image_split": "pretrain",
                          "data.eval_path": s["data"], "data.eval_split": "test", "data.eval_batch_size": 8})
  task, meta = umt_stage2.make_task(c)
  # both media types appear in the first round (48 clips / 8 = 6 batches each, in a seeded order)
  assert {task.train_data[i]["video"].shape[1] for i in range(12)} == {1, 4}
  boxed = jax.eval_shape(task.init, jax.random.key(0))
  mesh = sharding.make_mesh({"data": -1})
  params = task.load_init(nn.meta.unbox(boxed), sharding.param_shardings(boxed, mesh, sharding.DEFAULT_RULES))
  pre, _ = params_io.load_params(os.path.join(s["stage1"], "params.npz"))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), params["vision_encoder"]["encoder"],
               pre["encoder"])
  bert, _ = params_io.load_params(s["bert"])
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), params["text_encoder"], bert)

  w = str(tmp_path / "s2")
  r = umt_stage2.train(c, w)
  logged = r.history[-1]
  assert {"loss_uta", "loss_vtc", "loss_vtm", "loss_mlm", "temp"} <= set(logged)
  assert all(np.isfinite(h["loss"]) for h in r.history)
  assert {"emb/img_r1", "emb/txt_r1", "itm/img_r1", "itm/r_mean"} <= set(r.eval)
  out, m = params_io.load_params(os.path.join(w, "params.npz"))
  assert m["kind"] == "umt_stage2" and m["align_layers"] == 2 and "temp" in out
  # the eval-only run of the saved params reproduces the trainer's own final evaluation
  e = stage2_config(s, **{"mode": "eval", "init_from.params": os.path.join(w, "params.npz"),
                          "data.eval_path": s["data"], "data.eval_split": "test", "data.eval_batch_size": 8})
  ev = umt_stage2.train(e, str(tmp_path / "eval")).eval
  assert ev == pytest.approx(r.eval, abs=1e-6)
  assert os.path.isfile(tmp_path / "eval" / "retrieval.json")


def test_zero_shot_reads_the_embeddings_the_model_pools(setup):
  """Unmerged, the stage-2 tower pools one embedding per time step (or one mean, `stage2.keep_temporal=False`);
  under token merging one mean (vid-TLDR): retrieval takes each as the model gives it (it once sliced T·E columns, mixing the merged model's tokens into
  its embeddings), with and without re-ranking."""
  from umt_jax import evaluation
  from umt_jax.trainers import stage2_retrieval
  c = stage2_config(setup, **{"data.eval_path": setup["data"], "data.eval_split": "test"})
  task, meta = umt_stage2.make_task(c)
  params = nn.meta.unbox(jax.jit(task.init)(jax.random.key(0)))
  source, tokenizer, mesh = umt_stage2.eval_source(c), umt_stage2.text_tokenizer(c), sharding.make_mesh({"data": -1})
  for schedule, keep_temporal, rows in (((), True, 4), ((), False, 1), ((4, 2), True, 1)):
    model = umt_stage2.model_from_meta({**meta, "encoder": {**meta["encoder"], "merge_schedule": schedule},
                                        "keep_temporal": keep_temporal})
    pooled = lambda p, v: model.apply({"params": p}, ip.normalize(v), None, align=False,
                                      method=model.encode_vision)[2].reshape(v.shape[0], -1)
    want, _ = evaluation.predict(pooled, params, source, 8, mesh)
    for rerank in (False, True):
      got = stage2_retrieval.zero_shot(model, params, tokenizer, source, mesh, k=4, batch=8, rerank=rerank)
      assert got["video_emb"].shape == (12, rows, 16)
      np.testing.assert_allclose(got["video_emb"].reshape(12, -1), want, rtol=1e-5, atol=1e-6)
      assert np.isfinite(got["emb"]["r_mean"]) and (not rerank or np.isfinite(got["rerank"]["r_mean"]))


def test_eval_only_applies_the_configs_merging_and_pooling(setup, tmp_path, monkeypatch):
  """mode=eval builds the model from the params file's metadata, with the config's `model.merge` and
  `stage2.keep_temporal` (configs/vid_tldr.py sets both), and the pooled embedding is one mean over all tokens."""
  from umt_jax.trainers import stage2_retrieval
  c = stage2_config(setup)
  task, meta = umt_stage2.make_task(c)
  assert meta["keep_temporal"] is True
  path = str(tmp_path / "params.npz")
  params_io.save_params(path, nn.meta.unbox(jax.jit(task.init)(jax.random.key(0))), meta)
  seen, real = [], stage2_retrieval.zero_shot
  monkeypatch.setattr(stage2_retrieval, "zero_shot", lambda m, *a, **k: seen.append(real(m, *a, **k)) or seen[-1])
  for name, kw in (("none", {}), ("one_mean", {"stage2.keep_temporal": False}),
                   ("merged", {"model.merge.schedule": (4, 2), "model.merge.saliency": False,
                               "stage2.keep_temporal": False})):
    e = stage2_config(setup, **{"mode": "eval", "init_from.params": path, "data.eval_path": setup["data"],
                                "data.eval_split": "test", "data.eval_batch_size": 8, **kw})
    umt_stage2.train(e, str(tmp_path / name))
  none, one_mean, merged = (x["video_emb"] for x in seen)
  assert none.shape == (12, 4, 16) and one_mean.shape == merged.shape == (12, 1, 16)
  assert np.abs(merged - one_mean).max() > 1e-3  # the merge ran


def test_stage2_sharded_equals_one_device(setup, tmp_path):
  c1 = stage2_config(setup, total_steps=2)
  one = umt_stage2.train(c1, str(tmp_path / "one"), devices=jax.devices()[:1])
  c8 = stage2_config(setup, total_steps=2)
  c8.mesh.update({"data": 2, "fsdp": 2, "tensor": 2})
  eight = umt_stage2.train(c8, str(tmp_path / "eight"))
  np.testing.assert_allclose([h["loss"] for h in eight.history], [h["loss"] for h in one.history], rtol=2e-5)
  for k in ("loss_uta", "loss_vtc", "loss_vtm", "loss_mlm"):
    np.testing.assert_allclose(eight.history[-1][k], one.history[-1][k], rtol=2e-5)


def test_stage2_resume_after_preemption_is_exact(setup, tmp_path, monkeypatch):
  kw = {"total_steps": 6, "checkpoint.every": 3}
  ref = umt_stage2.train(stage2_config(setup, **kw), str(tmp_path / "ref"))
  want = [h["loss"] for h in ref.history]
  again = preempt_and_resume(umt_stage2.train, lambda: stage2_config(setup, **kw), str(tmp_path / "w"), 4,
                             monkeypatch)
  np.testing.assert_allclose(again, want[4:], rtol=1e-6)


def test_stage2_errors_name_the_key(setup, tmp_path):
  with pytest.raises(ValueError, match="config.text.vocab is empty"):
    umt_stage2.make_task(stage2_config(setup, **{"text.vocab": ""}))
  with pytest.raises(ValueError, match="loss_weights.uta > 0 needs a teacher"):
    umt_stage2.make_task(stage2_config(setup, **{"teacher.path": ""}))
  with pytest.raises(ValueError, match="split 'nope' is not in"):
    umt_stage2.make_task(stage2_config(setup, **{"data.image_path": setup["data"], "data.image_split": "nope"}))
  c = stage2_config(setup, **{"text.init": setup["bert"]})
  c.text.hidden_size = 48
  task, _ = umt_stage2.make_task(c)
  boxed = jax.eval_shape(task.init, jax.random.key(0))
  mesh = sharding.make_mesh({"data": -1})
  with pytest.raises(ValueError, match="config.text.init=.*does not fit the model"):
    task.load_init(nn.meta.unbox(boxed), sharding.param_shardings(boxed, mesh, sharding.DEFAULT_RULES))
  e = stage2_config(setup, **{"mode": "eval", "init_from.params": setup["teacher"], "data.eval_path": setup["data"]})
  with pytest.raises(ValueError, match="holds 'clip_visual' params; retrieval needs a umt_stage2 model"):
    umt_stage2.train(e, str(tmp_path / "e"))


def test_stage2_two_processes_equal_one_process(setup, tmp_path):
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    port = sock.getsockname()[1]
  procs = [subprocess.Popen([sys.executable, "-m", "tests.multihost_train_worker", setup["data"], str(port), str(i),
                             str(tmp_path / "two"), json.dumps(setup)], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT) for i in range(2)]
  for p in procs:
    log = p.communicate(timeout=900)[0].decode()
    assert p.returncode == 0, log[-3000:]
  one = umt_stage2.train(stage2_config(setup, total_steps=2), str(tmp_path / "one"), devices=jax.devices()[:4])
  np.testing.assert_allclose(list(losses_of(str(tmp_path / "two")).values()), [h["loss"] for h in one.history],
                             rtol=1e-5)
