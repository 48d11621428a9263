"""`make demo` (the UMT chain) wired end to end: every stage 2 steps on a small copy of the data, (a) and (b)
trained once per seed and reported by their means."""
import json
import os
import subprocess
import sys

import numpy as np

from data import synthetic
from tests.helpers import subprocess_env
from umt_jax import demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_umt_demo_stages_are_wired_and_seeds_averaged(tmp_path):
  w = str(tmp_path)
  synthetic.generate(os.path.join(w, "data"), {"pretrain": 16, "train": 8, "test": 10}, size=36, frames=8,
                     clips_per_shard=64)
  cmd = [sys.executable, "-m", "umt_jax.demo", "--workdir", w, "--steps", "2"]
  out = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(1), capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  report = open(os.path.join(w, "report.md")).read()
  assert report in out.stdout
  rows = {"finetune": "(a) UMT stage 1 -> fine-tune", "scratch": "(b) fine-tune from scratch, same steps"}
  for name, row in rows.items():
    runs = [os.path.join(w, name if s == 0 else f"{name}_seed{s}") for s in demo.FT_SEEDS]
    assert [json.load(open(os.path.join(r, "config.json")))["seed"] for r in runs] == list(demo.FT_SEEDS)
    evals = [json.load(open(os.path.join(r, "result.json")))["eval"] for r in runs]
    per_seed = " / ".join(f"{e['top1']:.1f}" for e in evals)
    means = [np.mean([e[k] for e in evals]) for k in ("top1_temporal", "top1_appearance", "top1")]
    assert f"| {row} | {per_seed} | " + " | ".join(f"{m:.1f}" for m in means) + " |" in report
  assert "initialised the encoder from " + os.path.join(w, "umt") in out.stdout
  for line in ("(a) beats (b) overall (mean of 3 seeds):", "(a) beats (b) with every seed:",
               "(a) beats (c) on temporal classes:", "| UMT stage 2, VTC similarity |", "semantic_mask.png"):
    assert line in report
