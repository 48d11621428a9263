"""The VideoMAE V2 chain: the demo's `--method videomae` stages wired end to end (2 steps each), and the recipe
chain pretraining -> K710 post-pretraining (init_from.workdir) -> K400 with the 710 -> 400 head rows
(init_from.params + label_map) on tiny models."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data import synthetic
from tests.helpers import load_init, subprocess_env, tree_equal
from umt_jax import config_lib, demo, params_io
from umt_jax.trainers import finetune, videomae_pretrain

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"model.embed_dim": 32, "model.depth": 2, "model.num_heads": 2, "model.mlp_dim": 64, "model.patch_size": 8,
        "model.dtype": "float32", "model.attn_impl": "xla", "model.remat": "none", "data.size": 32,
        "data.num_frames": 4, "data.stride": 1, "data.workers": 0, "data.eval_split": "", "batch_size": 8,
        "total_steps": 1, "min_fsdp_size": 0, "mesh.fsdp": 1, "checkpoint.async": False}


def recipe(name: str, arg: str, **kw):
  """configs/<name>.py:<arg> with TINY and `kw` (dotted keys) applied."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(arg)
  return config_lib.override(c, {**TINY, **kw})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("vmae_chain_data"))
  synthetic.generate(out, {"pretrain": 8, "train": 8}, size=36, frames=4, clips_per_shard=64)
  return out


def test_pretrain_k710_k400_chain_maps_the_head_rows(data, tmp_path):
  pt = str(tmp_path / "pt")
  videomae_pretrain.train(recipe("videomae_v2", "S", **{"data.path": data, "data.split": "pretrain",
                                                          "data.num_sample": 1, "videomae.decoder_dim": 16,
                                                          "videomae.decoder_depth": 1, "videomae.decoder_heads": 2}),
                          pt)
  pretrained = params_io.load_params(os.path.join(pt, "params.npz"))[0]["encoder"]
  k710 = recipe("videomae_finetune", "S,k710", **{"data.path": data, "init_from.workdir": pt,
                                                   "model.num_classes": 13})
  # The post-pretraining recipe (from g's, the released teacher): tubelet 2, 16 frames, layer decay 0.9, drop
  # path 0.3, clip_grad 5, 2 views per clip.
  g = recipe("videomae_finetune", "g,k710")
  assert (g.model.tubelet_size, g.optim.layer_decay, g.model.drop_path, g.optim.grad_clip, g.data.num_sample) == (
      2, 0.9, 0.3, 5.0, 2) and recipe("videomae_finetune", "g,k710", **{"data.num_frames": 16}).data.num_frames == 16
  got = load_init(k710)
  tree_equal(got["encoder"], {k: v for k, v in pretrained.items() if k != "norm"})  # fc_norm replaces the final norm
  w710 = str(tmp_path / "k710")
  finetune.train(k710, w710)
  k710_params = params_io.load_params(os.path.join(w710, "params.npz"))[0]

  rows = [12, 0, 7, 7, 3, 11, 1, 2, 9, 5]  # the data's 10 classes from 13 "K710" heads, one repeated
  label_map = tmp_path / "label_710to400.json"
  label_map.write_text(json.dumps(rows))
  got = load_init(recipe("videomae_finetune", "S,k400", **{"data.path": data, "init_from.params":
                                                            os.path.join(w710, "params.npz"),
                                                            "init_from.label_map": str(label_map)}))
  head = k710_params["head"]
  tree_equal(got, {**k710_params, "head": {"kernel": head["kernel"][:, rows], "bias": head["bias"][rows]}})
  np.testing.assert_array_equal(got["head"]["bias"][2], head["bias"][7])


def test_videomae_demo_stages_are_wired(tmp_path):
  # The command as `make demo-videomae` runs it (one device), 2 steps a stage, on a small copy of the data.
  w = str(tmp_path)
  synthetic.generate(os.path.join(w, "data"), {"pretrain": 16, "train": 8, "test": 10}, size=36, frames=8,
                     clips_per_shard=64)
  cmd = [sys.executable, "-m", "umt_jax.demo", "--method", "videomae", "--workdir", w, "--steps", "2"]
  out = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(1), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  report = open(os.path.join(w, "report_videomae.md")).read()
  assert report in out.stdout
  result = {k: json.load(open(os.path.join(w, k, "result.json"))) for k in
            ("videomae", "vmae_finetune", "vmae_scratch", "vmae_distill", "vmae_small")}
  assert all(r["steps"] == 2 for r in result.values()) and [s for s, _ in result["videomae"]["loss"]] == [2]
  for name in ("vmae_finetune", "vmae_scratch", "vmae_distill", "vmae_small"):
    assert {"top1", "top1_temporal", "top1_appearance"} <= set(result[name]["eval"])
  # (a) starts from the pretrained encoder; (d) and (e) are the same smaller student.
  assert "initialised the encoder from " + os.path.join(w, "videomae") in out.stdout
  cost = {k: demo.classifier_cost(w, k) for k in ("vmae_finetune", "vmae_distill", "vmae_small")}
  big, small = (int(cost[k]["params"].replace(",", "")) for k in ("vmae_finetune", "vmae_distill"))
  assert small < big / 3 and cost["vmae_distill"] == cost["vmae_small"]
  for row in [f"| (a) VideoMAE V2 -> fine-tune | {cost['vmae_finetune']['params']} |",
              f"| (d) small student distilled from (a) (16 clips, labels unused) | {cost['vmae_distill']['params']} |",
              "(a) beats (b) overall:", "(d) beats (e) overall:", "reconstruction loss", "vmae_distill"]:
    assert row in report
  meta = params_io.load_params(os.path.join(w, "videomae", "params.npz"))[1]
  assert meta["kind"] == "videomae_pretrain" and meta["encoder"]["tubelet_size"] == 2
