"""The end-to-end demo on CPU: synthetic videos -> stage-0 CLIP teacher -> UMT stage 1 -> fine-tuning, and a
report comparing (a) fine-tuned from UMT stage 1, (b) the same classifier from scratch with the same total
number of steps, (c) a linear probe on the teacher's frame-averaged image embeddings; top-1 separately on the
temporal and the appearance classes. Also writes `semantic_mask.png`: which tokens the student saw.
UMT stage 2 continues from stage 1 on the synthetic captions (video and image steps), and a zero-shot
retrieval table on the test split compares it with the stage-0 CLIP (frame-averaged) and chance, with columns
for captions of temporal classes (clips that differ only in time) and of appearance classes.

  python -m umt_jax.demo --workdir /tmp/umt_demo        (what `make demo` runs)

Every stage is an ordinary `python -m umt_jax.main --config=configs/demo.py:<stage>` run in its own
subdirectory; re-running resumes or skips finished stages.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from data import synthetic
from umt_jax import (config_lib, evaluation, input_pipeline as ip, main as umt_main, masking, params_io, retrieval,
                     sharding, tokenizer as tok)
from umt_jax.convert.clip_import import load_teacher
from umt_jax.models.clip import CLIP, CLIPConfig, CLIPTeacher, CLIPVision
from umt_jax.trainers import stage2_retrieval, umt_stage2

SPLITS = {"pretrain": 3000, "train": 300, "test": 500}


def demo_config(stage: str, workdir: str):
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo.py")
  spec = importlib.util.spec_from_file_location("demo_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(stage)
  c.data.path = os.path.join(workdir, "data")
  return c


def run_stage(stage: str, workdir: str, **updates) -> dict:
  """One stage in <workdir>/<stage>; skipped when its params.npz exists -> final eval (if any)."""
  out = os.path.join(workdir, stage)
  done = os.path.join(out, "result.json")
  if os.path.isfile(done):
    with open(done) as f:
      return json.load(f)
  c = demo_config(stage, workdir)
  for key, value in updates.items():
    section, name = key.split(".")
    c[section][name] = value
  c.lock()
  t0 = time.time()
  result = umt_main.run(c, out)
  if result.preempted:
    sys.exit(f"stage {stage} was interrupted; re-run the demo to resume it")
  summary = {"eval": {k: float(v) for k, v in result.eval.items()}, "seconds": time.time() - t0}
  with open(done, "w") as f:
    json.dump(summary, f)
  return summary


def teacher_features(teacher_path: str, data: str, split: str, spec: ip.ClipSpec) -> tuple[np.ndarray, np.ndarray]:
  """Frame-averaged CLIP image embeddings of every test view -> (features (E, D), labels (E,))."""
  cfg, params = load_teacher(teacher_path)
  vision = CLIPVision(cfg)

  def embed(p, video):  # (N, T, S, S, 3) uint8 -> (N, E)
    n, t = video.shape[:2]
    e = vision.apply({"params": p["visual"]}, ip.normalize(video).reshape((n * t,) + video.shape[2:]))[0]
    return e.reshape(n, t, -1).mean(axis=1)

  mesh = sharding.make_mesh({"data": -1})
  return evaluation.predict(embed, params, ip.Source(data, split, clip=spec), 50, mesh)


def linear_probe(train: tuple, test: tuple, num_classes: int, steps: int = 1000) -> np.ndarray:
  """Softmax regression on standardised features (Adam, full batch, light L2) -> test probabilities."""
  (xtr, ytr), (xte, _) = train, test
  mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
  xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
  w = {"w": jnp.zeros((xtr.shape[1], num_classes)), "b": jnp.zeros(num_classes)}
  tx = optax.adam(1e-2)

  def loss(w):
    logits = xtr @ w["w"] + w["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, ytr).mean() + 1e-3 * jnp.sum(w["w"] ** 2)

  @jax.jit
  def step(w, s):
    g = jax.grad(loss)(w)
    u, s = tx.update(g, s)
    return optax.apply_updates(w, u), s

  state = tx.init(w)
  for _ in range(steps):
    w, state = step(w, state)
  return np.asarray(jax.nn.softmax(xte @ w["w"] + w["b"]))


def save_mask_png(teacher_path: str, data: str, split: str, spec: ip.ClipSpec, ratio: float, out: str,
                  clips: int = 4, scale: int = 4) -> None:
  """Rows: clips; columns: frames. Tokens the semantic mask hides are darkened."""
  from PIL import Image
  cfg, params = load_teacher(teacher_path)
  ds, _ = ip.eval_dataset(ip.Source(data, split, clip=spec), clips, 0, 1)
  video = next(iter(ds))["video"][:clips, 0]  # (C, T, S, S, 3)
  _, attn = CLIPTeacher(cfg, num_layers=1).apply({"params": params}, ip.normalize(jnp.asarray(video)))
  visible = np.asarray(masking.semantic_mask(jax.random.key(0), attn, ratio))
  g, p = cfg.grid, cfg.patch_size
  keep = np.zeros((clips, video.shape[1], g, g), bool)
  flat = keep.reshape(clips, -1)
  np.put_along_axis(flat, visible, True, axis=1)
  keep = np.repeat(np.repeat(flat.reshape(keep.shape), p, axis=2), p, axis=3)[..., None]
  shown = np.where(keep, video, (video * 0.25).astype(np.uint8))
  grid = np.concatenate([np.concatenate(list(row), axis=1) for row in shown], axis=0)
  Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(out)


def retrieval_rows(w: str, data: str, meta: dict) -> str:
  """Zero-shot retrieval on the test split: stage 2 (VTC, ITM re-ranked), stage-0 CLIP (frame-averaged), chance;
  t2v R@1 also over the captions of temporal-class clips and of appearance-class clips."""
  c = demo_config("umt_stage2", w)
  c.text.vocab, c.data.eval_path = os.path.join(w, "vocab.txt"), data
  source = umt_stage2.eval_source(c)
  mesh = sharding.make_mesh({"data": -1})
  params, pmeta = params_io.load_params(os.path.join(w, "umt_stage2", "params.npz"))
  s2 = stage2_retrieval.zero_shot(umt_stage2.model_from_meta(pmeta), params, umt_stage2.text_tokenizer(c), source, mesh,
                               k=c.stage2.rerank_k, batch=c.data.eval_batch_size, rerank=True)
  gallery = s2["gallery"]
  emb_t2v, emb_v2t = _clip_ranks(w, source, gallery, mesh)
  is_t = np.isin(np.asarray(meta["label_names"])[gallery.labels[gallery.txt2vid]], meta["temporal_classes"])
  nv = len(gallery.labels)

  def row(name, t2v, v2t):
    r1 = lambda ranks: 100 * float((ranks < 1).mean())
    return (f"| {name} | {r1(t2v):.1f} | {100 * float((t2v < 5).mean()):.1f} | {r1(v2t):.1f} | "
            f"{100 * float((v2t < 5).mean()):.1f} | {r1(t2v[is_t]):.1f} | {r1(t2v[~is_t]):.1f} |")

  lines = [f"| model ({nv} clips, {len(gallery.captions)} captions) | t2v R@1 | t2v R@5 | v2t R@1 | v2t R@5 | "
           "t2v R@1 temporal | t2v R@1 appearance |", "|---|---|---|---|---|---|---|",
           row("UMT stage 2, VTC similarity", *s2["ranks"]["emb"]),
           row(f"UMT stage 2, ITM re-ranked top-{c.stage2.rerank_k}", *s2["ranks"]["rerank"]),
           row("stage-0 CLIP, frame-averaged", emb_t2v, emb_v2t),
           f"| chance | {100 / nv:.1f} | {500 / nv:.1f} | {100 / nv:.1f} | {500 / nv:.1f} | {100 / nv:.1f} | "
           f"{100 / nv:.1f} |"]
  return "\n".join(lines)


def _clip_ranks(w: str, source: ip.Source, gallery, mesh) -> tuple[np.ndarray, np.ndarray]:
  """Stage-0 CLIP: mean of per-frame image embeddings vs the caption embedding -> (t2v ranks, v2t ranks)."""
  params, meta = params_io.load_params(os.path.join(w, "clip", "params.npz"))
  cfg = CLIPConfig(**meta["clip_config"])
  model = CLIP(cfg)
  words = tok.WordTokenizer.load(os.path.join(w, "clip", "tokenizer.json"))

  def embed(p, video):  # (N, T, S, S, 3) uint8 -> (N, T·E)
    n, t = video.shape[:2]
    x = ip.normalize(video).reshape((n * t,) + video.shape[2:])
    return model.apply({"params": p}, x, method=CLIP.encode_image).reshape(n, -1)

  v, _ = evaluation.predict(embed, params, source, 50, mesh)
  v = v.reshape(v.shape[0], source.clip.num_frames, -1)
  ids = np.stack([words(cap) for cap in gallery.captions])
  t = np.asarray(jax.jit(lambda p, i: model.apply({"params": p}, i, method=CLIP.encode_text))(params, ids))
  _, _, t2v = retrieval.blocked_topk_and_ranks(t, v, gallery.txt2vid, mesh, k=1, desc="clip t2v")
  _, _, v2t = retrieval.blocked_topk_and_ranks(v, t, retrieval.invert_gt(gallery.txt2vid, len(v)), mesh, k=1,
                                               desc="clip v2t")
  return t2v, v2t


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--workdir", default="/tmp/umt_demo")
  args = ap.parse_args(argv)
  w = os.path.abspath(args.workdir)
  t0 = time.time()
  data = os.path.join(w, "data")
  if not os.path.isfile(os.path.join(data, "metadata.json")):
    synthetic.generate(data, SPLITS, size=36, frames=8, workers=os.cpu_count() or 1,
                       command="python -m umt_jax.demo")
  meta = ip.read_metadata(data)
  run_stage("clip", w)
  teacher = os.path.join(w, "clip", "params.npz")
  run_stage("umt", w, **{"teacher.path": teacher})
  a = run_stage("finetune", w, **{"init_from.workdir": os.path.join(w, "umt")})["eval"]
  b = run_stage("scratch", w)["eval"]
  vocab = os.path.join(w, "vocab.txt")
  if not os.path.isfile(vocab):  # a WordPiece vocabulary of the captions' words
    tok.BertTokenizer.from_records(ip.open_source(data, "pretrain"), vocab)
  run_stage("umt_stage2", w, **{"teacher.path": teacher, "init_from.workdir": os.path.join(w, "umt"),
                                "text.vocab": vocab, "data.image_path": data})
  ret = retrieval_rows(w, data, meta)

  ft = demo_config("finetune", w)
  spec = config_lib.clip_spec(ft.data)
  probs = linear_probe(teacher_features(teacher, data, "train", spec), test := teacher_features(
      teacher, data, "test", spec), len(meta["label_names"]))
  c = evaluation.accuracy(probs, test[1], meta["label_names"], meta["temporal_classes"])
  save_mask_png(teacher, data, "test", spec, demo_config("umt", w).teacher.mask_ratio,
                os.path.join(w, "semantic_mask.png"))

  rows = [("(a) UMT stage 1 -> fine-tune", a), ("(b) fine-tune from scratch, same steps", b),
          ("(c) linear probe, teacher frame-avg", c)]
  lines = ["| model | top-1 temporal | top-1 appearance | top-1 all |", "|---|---|---|---|"]
  lines += [f"| {name} | {r['top1_temporal']:.1f} | {r['top1_appearance']:.1f} | {r['top1']:.1f} |"
            for name, r in rows]
  report = "\n".join(lines)
  verdict = [f"(a) beats (b) overall: {a['top1'] > b['top1']} ({a['top1']:.1f} vs {b['top1']:.1f})",
             f"(a) beats (c) on temporal classes: {a['top1_temporal'] > c['top1_temporal']} "
             f"({a['top1_temporal']:.1f} vs {c['top1_temporal']:.1f})"]
  text = (f"umt_jax demo report ({meta['splits']['test']['num_records']} test clips, "
          f"{len(meta['temporal_classes'])} temporal + {len(meta['label_names']) - len(meta['temporal_classes'])} "
          f"appearance classes; {time.time() - t0:.0f} s)\n\n{report}\n\n" + "\n".join(verdict) +
          f"\n\nZero-shot retrieval on the test split:\n\n{ret}\n"
          f"\nsemantic mask: {os.path.join(w, 'semantic_mask.png')}\n")
  with open(os.path.join(w, "report.md"), "w") as f:
    f.write(text)
  print("\n" + text)
  return {"a": a, "b": b, "c": c}


if __name__ == "__main__":
  main()
