"""The end-to-end demo on CPU: synthetic videos -> stage-0 CLIP teacher -> UMT stage 1 -> fine-tuning, and a
report comparing (a) fine-tuned from UMT stage 1, (b) the same classifier from scratch with the same total
number of steps (each the mean of `FT_SEEDS` runs), (c) a linear probe on the teacher's frame-averaged image
embeddings; top-1 separately on the temporal and the appearance classes. Also writes `semantic_mask.png`:
which tokens the student saw. UMT stage 2 continues from stage 1 on the synthetic captions (video and image
steps), and a zero-shot retrieval table on the test split compares it with the stage-0 CLIP (frame-averaged)
and chance, with columns for captions of temporal classes (clips that differ only in time) and of appearance
classes.

  python -m umt_jax.demo --workdir /tmp/umt_demo        (what `make demo` runs)

`--method videomae` (`make demo-videomae`) runs VideoMAE V2 on the same data instead: dual-masked pixel
reconstruction on `pretrain` -> fine-tuning, vs the same classifier from scratch for the steps of both; then
distillation of the fine-tuned model into a smaller student on the unlabelled `pretrain` clips, vs that student
trained on the labels alone; a table with params and forward FLOPs per clip, and the reconstruction loss curve.

`--method msta` (`make demo-msta`) adapts the frozen stage-0 CLIP with MSTA: base-to-novel and 4-shot tables for
zero-shot CLIP, a linear probe, full fine-tuning of the image tower, MSTA without L_CC and MSTA, with the
trainable params of each.

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
from umt_jax import (config_lib, evaluation, flops, input_pipeline as ip, main as umt_main, masking, params_io,
                     retrieval, sharding, tokenizer as tok)
from umt_jax.convert.clip_import import load_teacher
from umt_jax.models.clip import CLIP, CLIPConfig, CLIPTeacher, CLIPVision
from umt_jax.trainers import msta, stage2_retrieval, umt_stage2

SPLITS = {"pretrain": 3000, "train": 300, "test": 500}
# (a) and (b) are each trained with these seeds and compared by their means: one run's top-1 moved by 4 points
# with a change of float rounding alone (README), more than a single run can be trusted with.
FT_SEEDS = (0, 1, 2)


def demo_config(stage: str, workdir: str):
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo.py")
  spec = importlib.util.spec_from_file_location("demo_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(stage)
  c.data.path = os.path.join(workdir, "data")
  return c


def run_stage(stage: str, workdir: str, run: str | None = None, **updates) -> dict:
  """One stage in <workdir>/<run or stage>; skipped when its result.json exists -> {eval: final eval (if any),
  seconds, steps, loss: [[step, logged loss], ...]}. `updates`: dotted config overrides ('total_steps',
  'init_from.workdir', 'seed')."""
  out = os.path.join(workdir, run or stage)
  done = os.path.join(out, "result.json")
  if os.path.isfile(done):
    with open(done) as f:
      return json.load(f)
  c = demo_config(stage, workdir)
  config_lib.override(c, updates)
  c.lock()
  t0 = time.time()
  result = umt_main.run(c, out)
  if result.preempted:
    sys.exit(f"stage {stage} was interrupted; re-run the demo to resume it")
  summary = {"eval": {k: float(v) for k, v in result.eval.items()}, "seconds": time.time() - t0,
             "steps": c.total_steps, "loss": [[h["step"], h["loss"]] for h in result.history if "loss" in h]}
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
  _, attn, _ = CLIPTeacher(cfg, num_layers=1).apply({"params": params}, ip.normalize(jnp.asarray(video)))
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


def accuracy_table(rows: list[tuple[str, dict]], extra: tuple[str, ...] = ()) -> str:
  """Markdown: one row per (name, result): the `extra` columns (result[col], as they are), then top-1 on the
  temporal classes, the appearance classes and all."""
  head = ["model", *extra, "top-1 temporal", "top-1 appearance", "top-1 all"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  lines += ["| " + " | ".join([name, *(str(r[k]) for k in extra)] + [
      f"{r[k]:.1f}" for k in ("top1_temporal", "top1_appearance", "top1")]) + " |" for name, r in rows]
  return "\n".join(lines)


def beats(x: str, y: str, rx: dict, ry: dict, key: str = "top1", what: str = "overall") -> str:
  return f"{x} beats {y} {what}: {rx[key] > ry[key]} ({rx[key]:.1f} vs {ry[key]:.1f})"


def seed_run(name: str, seed: int) -> str:
  """The workdir subfolder of stage `name` trained with `seed`: <name> for seed 0, else <name>_seed<seed>."""
  return name if seed == 0 else f"{name}_seed{seed}"


def mean_of_seeds(stage, name: str, key: str = "top1", **updates) -> dict:
  """Stage `name` once per `FT_SEEDS` seed (in `seed_run(name, seed)`) -> each eval metric's mean over the
  runs, "top-1 per seed": their `key` metric ('47.6 / 48.4 / ...'), 'seconds': their sum, and 'steps'."""
  res = [stage(name, run=seed_run(name, s), seed=s, **updates) for s in FT_SEEDS]
  out = {k: float(np.mean([r["eval"][k] for r in res])) for k in res[0]["eval"]}
  return {**out, "top-1 per seed": " / ".join(f"{r['eval'][key]:.1f}" for r in res),
          "seconds": sum(r["seconds"] for r in res), "steps": res[0]["steps"]}


def umt_demo(w: str, data: str, meta: dict, stage) -> tuple[str, dict]:
  """CLIP stage 0 -> UMT stage 1 -> fine-tuning (a) vs scratch (b) vs the teacher's probe (c); stage 2 and
  zero-shot retrieval -> (report body, results)."""
  stage("clip")
  teacher = os.path.join(w, "clip", "params.npz")
  stage("umt", **{"teacher.path": teacher})
  a = mean_of_seeds(stage, "finetune", **{"init_from.workdir": os.path.join(w, "umt")})
  b = mean_of_seeds(stage, "scratch")
  vocab = os.path.join(w, "vocab.txt")
  if not os.path.isfile(vocab):  # a WordPiece vocabulary of the captions' words
    tok.BertTokenizer.from_records(ip.open_source(data, "pretrain"), vocab)
  stage("umt_stage2", **{"teacher.path": teacher, "init_from.workdir": os.path.join(w, "umt"), "text.vocab": vocab,
                         "data.image_path": data})
  ret = retrieval_rows(w, data, meta)

  ft = demo_config("finetune", w)
  spec = config_lib.clip_spec(ft.data)
  probs = linear_probe(teacher_features(teacher, data, "train", spec), test := teacher_features(
      teacher, data, "test", spec), len(meta["label_names"]))
  c = evaluation.accuracy(probs, test[1], meta["label_names"], meta["temporal_classes"])
  save_mask_png(teacher, data, "test", spec, demo_config("umt", w).teacher.mask_ratio,
                os.path.join(w, "semantic_mask.png"))
  report = accuracy_table([("(a) UMT stage 1 -> fine-tune", a), ("(b) fine-tune from scratch, same steps", b),
                           ("(c) linear probe, teacher frame-avg", {**c, "top-1 per seed": "-"})],
                          extra=("top-1 per seed",))
  pairs = zip(*(r["top-1 per seed"].split(" / ") for r in (a, b)))
  verdict = [beats("(a)", "(b)", a, b, what=f"overall (mean of {len(FT_SEEDS)} seeds)"),
             f"(a) beats (b) with every seed: {all(float(x) > float(y) for x, y in pairs)}",
             beats("(a)", "(c)", a, c, "top1_temporal", "on temporal classes")]
  body = (f"{report}\n\n" + "\n".join(verdict) + f"\n\nZero-shot retrieval on the test split:\n\n{ret}\n"
          f"\nsemantic mask: {os.path.join(w, 'semantic_mask.png')}\n")
  return body, {"a": a, "b": b, "c": c}


def classifier_cost(w: str, name: str) -> dict:
  """A trained stage's classifier -> {'params': count, 'GFLOPs/view': forward FLOPs of one test view}."""
  params, meta = params_io.load_params(os.path.join(w, name, "params.npz"))
  c, enc = demo_config(name, w), meta["encoder"]
  tokens = c.data.num_frames // enc["tubelet_size"] * (c.data.size // enc["patch_size"]) ** 2
  gflops = flops.classifier_forward(tokens, enc, params["head"]["bias"].shape[0], enc["tubelet_size"]) / 1e9
  return {"params": f"{sum(x.size for x in jax.tree.leaves(params)):,}", "GFLOPs/view": f"{gflops:.3f}"}


def videomae_demo(w: str, data: str, meta: dict, stage) -> tuple[str, dict]:
  """VideoMAE V2 pretraining -> fine-tuning (a) vs scratch (b); distillation of (a) into a smaller student (d)
  vs that student on labels alone (e) -> (report body, results)."""
  pt = stage("videomae")
  ft = stage("vmae_finetune", **{"init_from.workdir": os.path.join(w, "videomae")})
  stages = {"videomae": pt, "vmae_finetune": ft, "vmae_scratch": stage("vmae_scratch"),
            "vmae_distill": stage("vmae_distill", **{"teacher.workdir": os.path.join(w, "vmae_finetune")}),
            "vmae_small": stage("vmae_small")}
  r = {k: {**v["eval"], **classifier_cost(w, k)} for k, v in stages.items() if k != "videomae"}
  steps = {k: v["steps"] for k, v in stages.items()}
  n_pre = meta["splits"]["pretrain"]["num_records"]
  n_lab = meta["splits"][demo_config("vmae_small", w).data.split]["num_records"]
  report = accuracy_table([
      ("(a) VideoMAE V2 -> fine-tune", r["vmae_finetune"]),
      (f"(b) from scratch, same steps ({steps['vmae_scratch']})", r["vmae_scratch"]),
      (f"(d) small student distilled from (a) ({n_pre} clips, labels unused)", r["vmae_distill"]),
      (f"(e) small student on labels alone ({n_lab} clips)", r["vmae_small"])], ("params", "GFLOPs/view"))
  (s0, l0), (s1, l1) = pt["loss"][0], pt["loss"][-1]
  curve = ", ".join(f"{s}: {l:.4f}" for s, l in pt["loss"])
  lines = [beats("(a)", "(b)", r["vmae_finetune"], r["vmae_scratch"]),
           beats("(d)", "(e)", r["vmae_distill"], r["vmae_small"]),
           f"\nreconstruction loss (normalised pixels of the decoder-kept, encoder-masked tokens): {l0:.4f} at step "
           f"{s0} -> {l1:.4f} at step {s1} (by step: {curve})",
           "seconds per stage (steps): " + ", ".join(f"{k} {v['seconds']:.0f} ({steps[k]})" for k, v in stages.items())]
  return f"{report}\n\n" + "\n".join(lines) + "\n", {"pretrain_loss": pt["loss"], **r}


def msta_frozen_baselines(w: str, name: str, clip: str) -> tuple[dict, dict, int]:
  """Zero-shot CLIP and a linear probe on its frozen video embeddings, for the protocol of stage `name` ->
  (zero-shot eval, probe eval, probe params). The probe cannot name classes it was not trained on: base-to-novel
  gets its base accuracy only."""
  c = demo_config(name, w)
  c.msta.clip = clip
  task, _ = msta.make_task(c)
  zero_shot = task.evaluate(None, 0)
  meta = ip.read_metadata(c.data.path)
  names = meta["label_names"]
  classes, subset = msta.training_set(c, names)
  mcfg, params = msta.load_backbone(clip, c.msta.backbone)
  model = msta.MSTAModel(mcfg, msta.adapter_config(c.msta), c.data.num_frames, c.msta.backbone)
  embed = lambda p, v: model.video_embed(p, None, msta.pixels(v, msta.pixel_norm(c.msta)))
  spec, mesh = config_lib.clip_spec(c.data), sharding.make_mesh({"data": -1})
  feats = lambda split, idx=None: evaluation.predict(embed, params, ip.Source(c.data.path, split, clip=spec,
                                                                               indices=idx), 100, mesh)
  (xtr, ytr), (xte, yte) = feats(c.data.split, None if subset is None else tuple(subset.tolist())), feats("test")
  to_class = {k: i for i, k in enumerate(classes)}
  keep = np.isin(yte, classes)
  probs = linear_probe((xtr, np.asarray([to_class[y] for y in ytr])), (xte[keep], None), len(classes))
  if len(classes) == len(names):
    probe = evaluation.accuracy(probs, yte, names, meta["temporal_classes"])
  else:
    pred = np.asarray(classes)[probs.argmax(1)]
    probe = {"base_top1": 100 * float(np.mean(pred == yte[keep])), "novel_top1": float("nan"), "hm": float("nan")}
  return zero_shot, probe, xtr.shape[1] * len(classes) + len(classes)


def msta_demo(w: str, data: str, meta: dict, stage) -> tuple[str, dict]:
  """MSTA on the stage-0 CLIP: base-to-novel and 4-shot, against zero-shot CLIP, a linear probe, full fine-tuning
  of the image tower and MSTA without L_CC (the trained three: means over `FT_SEEDS`) -> (report body, results)."""
  stage("clip")
  clip = os.path.join(w, "clip", "params.npz")
  rows, runs = {}, {}
  for proto in ("b2n", "fs"):
    zs, probe, n_probe = msta_frozen_baselines(w, f"msta_{proto}", clip)
    rows.setdefault("zero-shot CLIP (frame-averaged)", [0, {}])[1][proto] = zs
    rows.setdefault("linear probe on its embeddings", [n_probe, {}])[1][proto] = probe
    for suffix, label in (("_ft", "full fine-tuning of the image tower"), ("_nocc", "MSTA without L_CC"),
                          ("", "MSTA")):
      r = mean_of_seeds(stage, f"msta_{proto}{suffix}", key="hm" if proto == "b2n" else "top1",
                        **{"msta.clip": clip})
      runs[f"msta_{proto}{suffix}"] = r
      n = params_io.load_params(os.path.join(w, f"msta_{proto}{suffix}", "params.npz"))[1]["trainable_params"]
      rows.setdefault(label, [n, {}])[1][proto] = r
  f = lambda x: "—" if x != x else f"{x:.1f}"  # NaN: the probe has no novel classes
  lines = ["| model | trainable params | base-to-novel: base | novel | HM | 4-shot top-1 | 4-shot temporal | "
           "4-shot appearance |", "|---|---|---|---|---|---|---|---|"]
  for label, (n, r) in rows.items():
    b, k = r["b2n"], r["fs"]
    lines.append(f"| {label} | {n:,} | {f(b['base_top1'])} | {f(b['novel_top1'])} | {f(b['hm'])} | {f(k['top1'])} | "
                 f"{f(k['top1_temporal'])} | {f(k['top1_appearance'])} |")
  c = demo_config("msta_b2n", w)
  ours, best = rows["MSTA"][1]["b2n"], max(v[1]["b2n"]["hm"] for k, v in rows.items() if k != "MSTA")
  body = ("\n".join(lines) + f"\n\nbase classes: {c.msta.base_classes} ({c.msta.shots} clips each); novel: the "
          f"rest; 4-shot: 4 clips of every class; steps of {c.batch_size}: " + ", ".join(
              f"{k} {v['steps']}" for k, v in runs.items()) + "\n"
          f"per seed ({', '.join(map(str, FT_SEEDS))}): " + "; ".join(
              f"{label}: HM {r['b2n']['top-1 per seed']}, 4-shot {r['fs']['top-1 per seed']}"
              for label, (_, r) in rows.items() if "top-1 per seed" in r["b2n"]) + "\n"
          f"MSTA has the best harmonic mean (mean of {len(FT_SEEDS)} seeds): {ours['hm'] >= best} "
          f"({ours['hm']:.1f} vs {best:.1f})\n"
          "seconds per stage, its seeds together: " + ", ".join(f"{k} {v['seconds']:.0f}" for k, v in runs.items())
          + "\n")
  return body, {label: r for label, (_, r) in rows.items()}


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--workdir", default="/tmp/umt_demo")
  ap.add_argument("--method", choices=tuple(METHODS), default="umt")
  ap.add_argument("--steps", type=int, default=0, help="every stage this many steps (0: the recipes'; a quick "
                  "check that the chain runs)")
  args = ap.parse_args(argv)
  w = os.path.abspath(args.workdir)
  t0 = time.time()
  data = os.path.join(w, "data")
  if not os.path.isfile(os.path.join(data, "metadata.json")):
    synthetic.generate(data, SPLITS, size=36, frames=8, workers=os.cpu_count() or 1,
                       command="python -m umt_jax.demo")
  meta = ip.read_metadata(data)
  over = {"total_steps": args.steps} if args.steps else {}
  stage = lambda name, **kw: run_stage(name, w, **kw, **over)
  run, title, report = METHODS[args.method]
  body, results = run(w, data, meta, stage)
  text = (f"{title} ({meta['splits']['test']['num_records']} test clips, {len(meta['temporal_classes'])} temporal + "
          f"{len(meta['label_names']) - len(meta['temporal_classes'])} appearance classes; {time.time() - t0:.0f} s)"
          f"\n\n{body}")
  with open(os.path.join(w, report), "w") as f:
    f.write(text)
  print("\n" + text)
  return results


METHODS = {"umt": (umt_demo, "umt_jax demo report", "report.md"),
           "videomae": (videomae_demo, "umt_jax VideoMAE V2 demo report", "report_videomae.md"),
           "msta": (msta_demo, "umt_jax MSTA demo report", "report_msta.md")}

if __name__ == "__main__":
  main()
