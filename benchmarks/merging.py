"""vid-TLDR / ToMe token merging: FLOPs, inference throughput and accuracy, side by side in one run.

  python -m benchmarks.merging --workdir /tmp/umt_demo --batch_sizes 1,8,32 --runs 5

(i) a B/16-sized classifier with random weights (8 frames at 224², 400 classes): analytic GFLOP per clip and
clips/s of the jitted forward without merging, with vid-TLDR and with ToMe (same schedule, so same FLOPs);
(ii) with --workdir, the demo's fine-tuned classifier (<workdir>/finetune/params.npz, the demo's data): the same
plus top-1 on the demo's test split. Its schedule is found by umt_jax.tools.merge_schedule (FLOPs cut ≥ --cut)
on --search_split (default `pretrain`: held out from fine-tuning's labels, and not the test split); ToMe is reported
with that schedule and with its own best searched schedule. Top-1 is given with the classifier's pooling
(--pool, `model.merge.pool`: default `count`, each token weighted by the patches it holds), with the other
pooling beside it (`mean`, unweighted), and on the search split. B/16's schedule is the `decreasing` family from
block 0 (r, r/2, r/4) with the smallest r meeting --cut, unless --schedule names one.

Timing: every model is compiled (and run) and run once more before timing; then the models take turns, each
timing one forward (or as many back-to-back as take ≥ 0.2 s, for small models), `--runs` times (so load
changes on a shared machine hit all of them alike), and the median is reported.
--png writes the merge map of a few demo clips (merge_map.py).
(iii) with --workdir and the demo's stage 2 (<workdir>/umt_stage2/params.npz): zero-shot retrieval on the
demo's test split (VTC similarity, and ITM re-ranked) without merging, with vid-TLDR and with ToMe at the
classifier's schedule (the same student, so the same encoder FLOPs).
(iv) with --workdir and --cuts (e.g. 0.3,0.4,0.5,0.6): for each target cut, vid-TLDR and ToMe each with its own
schedule searched on --search_split, top-1 on both splits and the paired vid-TLDR - ToMe difference of per-clip
hits with its standard error (whether a gap between the two is more than the evaluation's noise).
(v) with --workdir and --seeds: the classifier of every fine-tuning seed the demo trained (`demo.FT_SEEDS`),
unmerged, vid-TLDR and ToMe at the searched schedule, on both splits, and the paired differences pooled over
the seeds' clips: one fine-tuning run's own noise (its top-1 moves by ±2 points between seeds) averaged out.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from umt_jax import evaluation, flops, input_pipeline as ip
from umt_jax.models import merging, vit
from umt_jax.models.heads import VideoClassifier
from umt_jax.tools import merge_schedule as ms


def methods(enc: dict, schedule) -> dict:
  """name -> encoder kwargs: no merging, vid-TLDR and ToMe with `schedule`."""
  return {"none": enc, "vid-TLDR": {**enc, "merge_schedule": tuple(schedule), "merge_saliency": True},
          "ToMe": {**enc, "merge_schedule": tuple(schedule), "merge_saliency": False}}


def throughput(encs: dict, params, num_classes: int, frames: int, size: int, batch: int, runs: int,
               dtype=jnp.float32, pool: str = "count") -> dict:
  """name -> median clips/s of the jitted forward (compute in `dtype`) on a random (batch, frames, size, size, 3)
  input."""
  video = jax.random.normal(jax.random.key(1), (batch, frames, size, size, 3), jnp.float32)
  fns, reps = {}, {}
  for name, enc in encs.items():
    model = VideoClassifier(encoder=enc, num_classes=num_classes, merge_pool=pool, dtype=dtype)
    fn = fns[name] = jax.jit(lambda p, v, m=model: m.apply({"params": p}, v))
    fn(params, video).block_until_ready()  # compile (and a first run)
    t0 = time.perf_counter()
    fn(params, video).block_until_ready()  # warm run
    reps[name] = max(1, int(0.2 / (time.perf_counter() - t0)))  # calls per timing, for ≥ 0.2 s each
  times = {name: [] for name in fns}
  for _ in range(runs):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      for _ in range(reps[name]):
        out = fn(params, video)
      out.block_until_ready()
      times[name].append((time.perf_counter() - t0) / reps[name])
  return {name: batch / statistics.median(t) for name, t in times.items()}


def gflops(enc: dict, frames: int, grid: int, num_classes: int, tubelet: int = 1) -> float:
  return flops.classifier_forward(frames // tubelet * grid * grid, enc, num_classes, tubelet) / 1e9


def _rate(v: float) -> str:
  return f"{v:.3g}" if v < 1000 else f"{v:.0f}"


def table(rows: list[dict], batch_sizes: list[int], pool: str = "count", search_split: str = "pretrain") -> str:
  other = next(p for p in merging.POOLS if p != pool)
  head = (["model", "merging", "schedule", "GFLOP/clip", "FLOPs cut"] + [f"clips/s b={b}" for b in batch_sizes]
          + ["speed-up (largest b)", f"top-1 ({pool} pool)", f"top-1 ({other} pool)",
             f"top-1 on `{search_split}` ({pool} pool)"])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    cells = [r["model"], r["merging"], ",".join(map(str, r["schedule"])) or "-", f"{r['gflops']:.4g}",
             f"{100 * r['cut']:.1f}%"] + [_rate(r["clips_s"][b]) if b in r["clips_s"] else "-" for b in batch_sizes]
    cells += [f"{r['speedup']:.2f}x" if "speedup" in r else "-"]
    cells += [f"{r[k]:.1f}" if k in r else "-" for k in ("top1", "top1_other", "top1_search")]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def measure(label: str, encs: dict, params, num_classes: int, frames: int, size: int, batch_sizes, runs: int,
            log, dtype=jnp.float32, pool: str = "count") -> list[dict]:
  """One row per method: FLOPs, clips/s per batch size, speed-up over `none` at the largest batch."""
  enc0 = encs["none"]
  grid, tubelet = size // enc0["patch_size"], enc0.get("tubelet_size", 1)
  rows = {name: {"model": label, "merging": name, "schedule": list(enc.get("merge_schedule", ())),
                 "gflops": gflops(enc, frames, grid, num_classes, tubelet),
                 "cut": ms.flops_cut(enc, frames, grid, num_classes, tubelet), "clips_s": {}}
          for name, enc in encs.items()}
  for b in batch_sizes:
    got = throughput(encs, params, num_classes, frames, size, b, runs, dtype, pool)
    for name, v in got.items():
      rows[name]["clips_s"][b] = v
    log(f"{label} batch {b}: " + ", ".join(f"{k} {v:.2f} clips/s" for k, v in got.items()))
  for r in rows.values():
    r["speedup"] = r["clips_s"][batch_sizes[-1]] / rows["none"]["clips_s"][batch_sizes[-1]]
  return list(rows.values())


def b16_rows(args, log) -> list[dict]:
  enc = vit.vit_kwargs("B", linear_init="trunc_normal", attn_impl=args.attn_impl or None)
  frames, size, classes = 8, 224, 400
  grid = size // 16
  schedule = [int(r) for r in args.schedule.split(",")] if args.schedule else \
      ms.candidates(enc, frames, grid, classes, args.cut, ("decreasing",))[0]
  model = VideoClassifier(encoder=enc, num_classes=classes)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, frames, size, size, 3)))["params"]
  label = "B/16 random, 8×224²" + ("" if args.dtype == "float32" else f", {args.dtype}") + \
      (f", attention {args.attn_impl}" if args.attn_impl else "")
  return measure(label, methods(enc, schedule), params, classes, frames, size,
                 args.b16_batch_sizes or args.batch_sizes, args.runs, log, jnp.dtype(args.dtype), args.pool)


def demo_classifier(args, run: str = "finetune"):
  """The demo's classifier in <workdir>/<run> -> (params, encoder kwargs, classes, its data config, ClipSpec,
  the search split's Source, the test split's Source)."""
  ft = os.path.join(args.workdir, run)
  params, enc, classes, meta = ms.load_classifier(os.path.join(ft, "params.npz"))
  with open(os.path.join(ft, "config.json")) as f:
    data_cfg = json.load(f)["data"]
  data = os.path.join(args.workdir, "data")
  spec = ms.clip_spec(data_cfg, meta)
  return (params, enc, classes, data_cfg, spec, ip.Source(data, args.search_split, clip=spec),
          ip.Source(data, data_cfg["eval_split"], clip=spec))


def demo_rows(args, log) -> tuple[list[dict], list[int], str, list[dict]]:
  """-> (rows, the searched vid-TLDR schedule, the object-drop line, the `--cuts` curve)."""
  params, enc, classes, data_cfg, spec, search_src, test_src = demo_classifier(args)
  data = search_src.path
  found = ms.search(params, enc, classes, search_src, args.cut, args.eval_batch, saliency=True, pool=args.pool,
                    log=log)
  tome = ms.search(params, enc, classes, search_src, args.cut, args.eval_batch, saliency=False, pool=args.pool,
                   base=found["base"], log=log)
  schedule = found["best"]["schedule"]
  label = f"demo classifier ({data_cfg['num_frames']}×{data_cfg['size']}², {enc['embed_dim']}-wide, " \
          f"depth {enc['depth']})"
  rows = measure(label, methods(enc, schedule), params, classes, spec.num_frames, spec.size, args.batch_sizes,
                 args.runs, log, pool=args.pool)
  best_tome = {**enc, "merge_schedule": tuple(tome["best"]["schedule"]), "merge_saliency": False}
  grid = spec.size // enc["patch_size"]
  rows.append({"model": label, "merging": "ToMe, own best schedule", "schedule": tome["best"]["schedule"],
               "gflops": gflops(best_tome, spec.num_frames, grid, classes),
               "cut": ms.flops_cut(best_tome, spec.num_frames, grid, classes), "clips_s": {}})
  searched = {"none": [found["base"] | {"schedule": []}], "vid-TLDR": found["rows"], "ToMe": tome["rows"]}
  other = next(p for p in merging.POOLS if p != args.pool)
  done = {}

  def on_test(schedule, sal, pool):  # each distinct model once (unmerged, the pools are the same model)
    key = (tuple(schedule), sal, pool) if schedule else ()
    if key not in done:
      done[key] = ms.evaluate(params, enc, classes, test_src, args.eval_batch, schedule, sal, pool)
    return done[key]

  for r in rows:
    sal = r["merging"] == "vid-TLDR"
    m = on_test(r["schedule"], sal, args.pool)
    m_other = on_test(r["schedule"], sal, other)
    r.update(top1=float(m["top1"]), top1_other=float(m_other["top1"]),
             top1_temporal=float(m.get("top1_temporal", np.nan)),
             top1_appearance=float(m.get("top1_appearance", np.nan)))
    r.update({"top1_search": c["top1"] for c in searched[r["merging"].split(",")[0]]
              if list(c["schedule"]) == list(r["schedule"])})
    log(f"{r['merging']} {r['schedule']}: test top-1 {r['top1']:.2f} ({args.pool} pool), {r['top1_other']:.2f} "
        f"({other} pool)")
  from benchmarks import merge_map
  if args.png:
    merge_map.save(params, enc, classes, test_src, schedule, args.png)
    log(f"wrote {args.png}")
  note = ""
  if "synthetic" in ip.read_metadata(data):
    d = merge_map.object_drops(params, enc, classes, test_src, schedule, args.eval_batch)
    note = (f"vid-TLDR {','.join(map(str, schedule))} on the {d['clips']} test clips (first view): dropped as "
            f"background {100 * d['object']['rate']:.1f}% of the primary object's patches "
            f"({d['object']['dropped']} of {d['object']['patches']}) vs {100 * d['background']['rate']:.1f}% of the "
            f"background's ({d['background']['dropped']} of {d['background']['patches']})")
    log(note)
  curve = cut_curve(params, enc, classes, search_src, test_src, args.cuts, args.eval_batch, args.pool, log,
                    found["base"])
  return rows, schedule, note, curve


def paired_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
  """Per-clip top-1 hits of two models on the same clips -> (mean of a - b, its standard error), in points: the
  paired comparison, whose error is far smaller than either accuracy's when the models agree on most clips."""
  d = a.astype(np.float64) - b.astype(np.float64)
  return 100 * d.mean(), 100 * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")


def cut_curve(params, enc: dict, classes: int, search_src: ip.Source, test_src: ip.Source, cuts, batch: int,
              pool: str, log, base: dict | None = None) -> list[dict]:
  """Per target cut: vid-TLDR and ToMe each with its own schedule searched on `search_src` (so each at its best,
  both at about the cut), their top-1 on both splits and the paired vid-TLDR - ToMe difference with its error.
  `base`: the unmerged metrics on `search_src`, if known."""
  rows = []
  for cut in cuts:
    row, hits = {"target": cut}, {}
    for name, sal in (("vid-TLDR", True), ("ToMe", False)):
      found = ms.search(params, enc, classes, search_src, cut, batch, saliency=sal, pool=pool, base=base,
                        log=lambda _: None)
      best, base = found["best"], found["base"]
      row[name] = {"schedule": best["schedule"], "cut": best["cut"]}
      hits[name, "search"] = found["best_hits"]
      hits[name, "test"] = evaluation.top1_hits(*ms.predict(params, enc, classes, test_src, batch, best["schedule"],
                                                            sal, pool))
      for split in ("search", "test"):
        row[name][split] = 100 * float(hits[name, split].mean())
    for split in ("search", "test"):
      row[f"diff_{split}"] = paired_difference(hits["vid-TLDR", split], hits["ToMe", split])
    log(f"cut {cut}: " + "; ".join(f"{n} {row[n]['schedule']} {row[n]['search']:.2f} / {row[n]['test']:.2f}"
                                   for n in ("vid-TLDR", "ToMe")))
    rows.append(row)
  return rows


def seed_comparison(classifiers: dict[str, dict], enc: dict, classes: int, sources: dict[str, ip.Source],
                    schedule, batch: int, pool: str, log) -> list[dict]:
  """classifiers: name -> params of one architecture `enc`; sources: split name -> Source. Per classifier and
  split: top-1 unmerged, with vid-TLDR and with ToMe at `schedule` ('<method>/<split>'); then a last row, 'all
  (pooled)', with the same over every classifier's clips and the paired differences '<a> − <b>/<split>' ->
  (mean, s.e.) of vid-TLDR − none, ToMe − none and vid-TLDR − ToMe."""
  runs = {"none": ((), False), "vid-TLDR": (tuple(schedule), True), "ToMe": (tuple(schedule), False)}
  rows, hits = [], {}
  for name, params in classifiers.items():
    row = {"classifier": name}
    for split, src in sources.items():
      for m, (sched, sal) in runs.items():
        h = evaluation.top1_hits(*ms.predict(params, enc, classes, src, batch, sched, sal, pool))
        row[f"{m}/{split}"] = 100 * float(h.mean())
        hits.setdefault((m, split), []).append(h)
    log(f"seed comparison, {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items() if k != "classifier"))
    rows.append(row)
  pooled = {"classifier": "all (pooled)"}
  for split in sources:
    h = {m: np.concatenate(hits[m, split]) for m in runs}
    pooled.update({f"{m}/{split}": 100 * float(h[m].mean()) for m in runs})
    for a, b in (("vid-TLDR", "none"), ("ToMe", "none"), ("vid-TLDR", "ToMe")):
      pooled[f"{a} − {b}/{split}"] = paired_difference(h[a], h[b])
  return rows + [pooled]


def seed_rows(args, schedule, log) -> list[dict]:
  """`seed_comparison` of the demo's classifiers, one per fine-tuning seed it trained."""
  from umt_jax import demo
  runs = [demo.seed_run("finetune", s) for s in demo.FT_SEEDS]
  runs = [r for r in runs if os.path.isfile(os.path.join(args.workdir, r, "params.npz"))]
  loaded = {r: demo_classifier(args, r) for r in runs}
  _, enc, classes, _, _, search_src, test_src = loaded[runs[0]]
  return seed_comparison({r: v[0] for r, v in loaded.items()}, enc, classes,
                         {args.search_split: search_src, "test": test_src}, schedule, args.eval_batch, args.pool, log)


def seed_table(rows: list[dict], schedule) -> str:
  """`seed_comparison`'s rows -> markdown, one line per classifier and split."""
  splits = [k.split("/")[1] for k in rows[0] if k.startswith("none/")]
  cols = ("none", "vid-TLDR", "ToMe", "vid-TLDR − none", "ToMe − none", "vid-TLDR − ToMe")
  sched = ",".join(map(str, schedule))
  cell = lambda v: "" if v is None else f"{v[0]:+.1f} ± {v[1]:.1f}" if isinstance(v, tuple) else f"{v:.1f}"
  lines = ["| classifier | split | " + " | ".join(f"{c} ({sched})" if c in ("vid-TLDR", "ToMe") else c
                                                for c in cols) + " |", "|" + "---|" * (len(cols) + 2)]
  lines += [f"| {r['classifier']} | {split} | " + " | ".join(cell(r.get(f"{c}/{split}")) for c in cols) + " |"
            for r in rows for split in splits]
  return "\n".join(lines)


def curve_table(rows: list[dict], search_split: str) -> str:
  lines = [f"| target cut | vid-TLDR schedule (cut) | ToMe schedule (cut) | top-1 on `{search_split}`, vid-TLDR / ToMe | "
           "vid-TLDR − ToMe (± s.e.) | top-1 on test, vid-TLDR / ToMe | vid-TLDR − ToMe (± s.e.) |",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    v, t = r["vid-TLDR"], r["ToMe"]
    cells = [f"{100 * r['target']:.0f}%"] + [f"{','.join(map(str, m['schedule']))} ({100 * m['cut']:.1f}%)"
                                             for m in (v, t)]
    for split in ("search", "test"):
      d, e = r[f"diff_{split}"]
      cells += [f"{v[split]:.1f} / {t[split]:.1f}", f"{d:+.1f} ± {e:.1f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def retrieval_rows(args, schedule, log) -> list[dict]:
  """Zero-shot t2v / v2t R@1 of the demo's stage-2 model under each merging method (same schedule), unmerged with
  either pooling, and the paired per-query vid-TLDR - ToMe difference with its standard error."""
  from umt_jax import demo, params_io, sharding
  from umt_jax.trainers import stage2_retrieval, umt_stage2
  w = args.workdir
  c = demo.demo_config("umt_stage2", w)
  c.text.vocab, c.data.eval_path = os.path.join(w, "vocab.txt"), os.path.join(w, "data")
  source, tokenizer = umt_stage2.eval_source(c), umt_stage2.text_tokenizer(c)
  params, meta = params_io.load_params(os.path.join(w, "umt_stage2", "params.npz"))
  mesh = sharding.make_mesh({"data": -1})
  grid = source.clip.size // meta["encoder"]["patch_size"]
  rows = []
  encs = methods(meta["encoder"], schedule)
  # (name, encoder, keep_temporal): unmerged with UMT's pooling (a mean per time step) and with vid-TLDR's (one
  # mean: the like-for-like baseline of the merged rows, which always pool so)
  runs = [("none", encs["none"], True), ("none, one mean", encs["none"], False),
          ("vid-TLDR", encs["vid-TLDR"], False), ("ToMe", encs["ToMe"], False)]
  for name, enc, keep_temporal in runs:
    model = umt_stage2.model_from_meta({**meta, "encoder": enc, "keep_temporal": keep_temporal})
    got = stage2_retrieval.zero_shot(model, params, tokenizer, source, mesh, k=c.stage2.rerank_k,
                                     batch=c.data.eval_batch_size, rerank=True)
    hits = {f"{d}_{kind}": np.asarray(got["ranks"][kind][i]) < 1
            for kind in ("emb", "rerank") for i, d in enumerate(("t2v", "v2t"))}
    r1 = {k: 100 * float(h.mean()) for k, h in hits.items()}
    rows.append({"merging": name, "schedule": list(enc.get("merge_schedule", ())), "clips": len(got["gallery"].labels),
                 "cut": ms.flops_cut(enc, source.clip.num_frames, grid, 1), **r1, "hits": hits})
    log(f"stage-2 retrieval, {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in r1.items()))
  tldr, tome = (next(r for r in rows if r["merging"] == m) for m in ("vid-TLDR", "ToMe"))
  rows.append({"merging": "vid-TLDR − ToMe (paired, ± s.e.)", "schedule": tldr["schedule"], "clips": tldr["clips"],
               "cut": tldr["cut"], **{k: paired_difference(tldr["hits"][k], tome["hits"][k]) for k in tldr["hits"]}})
  for r in rows:
    r.pop("hits", None)
  return rows


def retrieval_table(rows: list[dict]) -> str:
  lines = [f"| demo stage 2 ({rows[0]['clips']} test clips) | schedule | encoder FLOPs cut | t2v R@1 | v2t R@1 | "
           "t2v R@1, ITM re-ranked | v2t R@1, ITM re-ranked |", "|---|---|---|---|---|---|---|"]
  cell = lambda v: f"{v[0]:+.1f} ± {v[1]:.1f}" if isinstance(v, tuple) else f"{v:.1f}"  # R@1, or a paired difference
  lines += [f"| {r['merging']} | {','.join(map(str, r['schedule'])) or '-'} | {100 * r['cut']:.1f}% | "
            + " | ".join(cell(r[k]) for k in ("t2v_emb", "v2t_emb", "t2v_rerank", "v2t_rerank")) + " |" for r in rows]
  return "\n".join(lines)


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--workdir", default="", help="the demo's workdir (python -m umt_jax.demo)")
  ap.add_argument("--batch_sizes", default="1,8,32")
  ap.add_argument("--b16_batch_sizes", default="", help="B/16's batch sizes, if not --batch_sizes")
  ap.add_argument("--runs", type=int, default=5)
  ap.add_argument("--cut", type=float, default=0.4, help="target FLOPs cut of the schedules")
  ap.add_argument("--schedule", default="", help="B/16's schedule, e.g. 400,200,100 (default: searched)")
  ap.add_argument("--search_split", default="pretrain", help="the demo split the schedule search evaluates on: "
                  "`pretrain`, labelled clips the classifier never saw with their labels (its `train` clips are "
                  "memorised, so merging barely hurts them)")
  ap.add_argument("--eval_batch", type=int, default=50)
  ap.add_argument("--pool", default="count", choices=merging.POOLS,
                  help="the classifier's pooling of merged tokens (model.merge.pool); the other is reported beside")
  ap.add_argument("--cuts", default="", help="also, per target cut (e.g. 0.3,0.4,0.5,0.6), vid-TLDR and ToMe each "
                  "with its own searched schedule: top-1 on both splits and the paired difference")
  ap.add_argument("--seeds", action="store_true", help="also the demo's classifier of every fine-tuning seed at the "
                  "searched schedule, and the paired differences pooled over them")
  ap.add_argument("--skip_b16", action="store_true")
  ap.add_argument("--dtype", default="float32", help="B/16's compute dtype (GPU: bfloat16)")
  ap.add_argument("--attn_impl", default="", help="B/16's attention: xla (default), blocked, cudnn or auto "
                  "(cudnn on GPU, blocked on CPU)")
  ap.add_argument("--png", default="", help="merge map of demo clips (default <workdir>/merge_map.png)")
  ap.add_argument("--out", default="", help="also write the rows as JSON")
  args = ap.parse_args(argv)
  args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
  args.cuts = [float(c) for c in args.cuts.split(",") if c]
  args.b16_batch_sizes = [int(b) for b in args.b16_batch_sizes.split(",")] if args.b16_batch_sizes else None
  if args.workdir and not args.png:
    args.png = os.path.join(args.workdir, "merge_map.png")
  log = lambda s: print(s, file=sys.stderr, flush=True)
  t0 = time.time()
  rows = [] if args.skip_b16 else b16_rows(args, log)
  retrieval, note, curve, seeds = [], "", [], []
  if args.workdir:
    demo_r, schedule, note, curve = demo_rows(args, log)
    rows += demo_r
    if args.seeds:
      seeds = seed_rows(args, schedule, log)
    if os.path.isfile(os.path.join(args.workdir, "umt_stage2", "params.npz")):
      retrieval = retrieval_rows(args, schedule, log)
  sizes = sorted({b for r in rows for b in r["clips_s"]})
  text = (f"token merging, {jax.devices()[0].device_kind} ({os.cpu_count()} cores), median of {args.runs}, "
          f"{time.time() - t0:.0f} s\n\n" + table(rows, sizes, args.pool, args.search_split))
  if note:
    text += "\n\n" + note
  if curve:
    text += "\n\n" + curve_table(curve, args.search_split)
  if seeds:
    text += "\n\n" + seed_table(seeds, schedule)
  if retrieval:
    text += "\n\n" + retrieval_table(retrieval)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"rows": rows, "retrieval": retrieval, "curve": curve, "seeds": seeds, "table": text}, f, indent=1,
                default=str)
  return {"rows": rows, "retrieval": retrieval, "curve": curve, "seeds": seeds, "table": text}


if __name__ == "__main__":
  main()
