"""Find a vid-TLDR merge schedule for a target FLOPs cut on a validation split.

  python -m umt_jax.tools.merge_schedule --workdir /tmp/umt_demo/finetune --data /tmp/umt_demo/data --cut 0.4
  python -m umt_jax.tools.merge_schedule --params umt_b16_k400.npz --data /data/k400_rec --split val --cut 0.4

The search is small and explicit. Two families of schedules, each parametrised by the block `s` where merging
starts and by r, the tokens merged in its first merge block:
  constant    r in every block from s on (ToMe's schedule: the same r per layer)
  decreasing  r, r/2, r/4 in blocks s, s+1, s+2 (vid-TLDR's official schedules merge early and aggressively:
              600, 200, 100 for UMT-B on MSRVTT)
For each family and each s in 0 .. depth/2, r is the smallest that meets the cut (the analytic
`flops.classifier_forward`, matching included), so all candidates cost about the same; each candidate is
evaluated (multi-view top-1, as the fine-tuning trainer evaluates) and the best is printed with the table.
The unmerged model is evaluated first, as the reference; --pool is the classifier's pooling of merged tokens
(`model.merge.pool`, default `count`). Each block's r is clipped to half its tokens (the most a
block can merge; the model rejects more).
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from umt_jax import evaluation, flops, input_pipeline as ip, params_io, sharding
from umt_jax.models import merging
from umt_jax.models.heads import VideoClassifier

FAMILIES = ("constant", "decreasing")


def flops_cut(enc: dict, frames: int, grid: int, num_classes: int, tubelet: int = 1) -> float:
  """1 - classifier forward FLOPs with enc's merge schedule / without."""
  base = {k: v for k, v in enc.items() if k not in ("merge_schedule", "merge_saliency")}
  n = frames // tubelet * grid * grid
  return 1 - (flops.classifier_forward(n, enc, num_classes, tubelet)
              / flops.classifier_forward(n, base, num_classes, tubelet))


def family(name: str, start: int, r: int, depth: int, tokens: int) -> tuple[int, ...]:
  """The schedule of family `name` merging from block `start`, r tokens in its first merge block, each block's
  count clipped to half its tokens (the most merging allows), trailing zeros dropped."""
  if name == "constant":
    rs = [r] * (depth - start)
  elif name == "decreasing":
    rs = [r >> k for k in range(min(3, depth - start))]
  else:
    raise ValueError(f"schedule family {name!r}: expected one of {FAMILIES}")
  out, n = [], tokens
  for c in [0] * start + rs:
    out.append(min(c, n // 2))
    n -= out[-1]
  while out and not out[-1]:
    out.pop()
  return tuple(out)


def candidates(enc: dict, frames: int, grid: int, num_classes: int, target: float,
               families: Sequence[str] = FAMILIES, tubelet: int = 1) -> list[tuple[int, ...]]:
  """Per family and start block, the schedule with the smallest r whose cut is ≥ target (none if none is)."""
  n, depth, out = frames // tubelet * grid * grid, enc["depth"], []
  for name in families:
    for start in range(depth // 2 + 1):
      for r in range(1, n // 2 + 1):
        sched = family(name, start, r, depth, n)
        if flops_cut({**enc, "merge_schedule": sched}, frames, grid, num_classes, tubelet) >= target:
          if sched not in out:
            out.append(sched)
          break
  return out


def predict(params: dict, enc: dict, num_classes: int, source: ip.Source, batch_size: int,
            schedule: Sequence[int] = (), saliency: bool = True, pool: str = "count") -> tuple[np.ndarray, np.ndarray]:
  """The classifier under a merge schedule and pooling on `source` (one device) -> (view-averaged softmax (E,
  classes), labels (E,))."""
  merged = {**enc, "merge_schedule": tuple(schedule), "merge_saliency": saliency} if any(schedule) else enc
  model = VideoClassifier(encoder=merged, num_classes=num_classes, merge_pool=pool)
  fn = evaluation.softmax_views(lambda p, v: model.apply({"params": p}, v))
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  return evaluation.predict(fn, params, source, batch_size, mesh)


def source_accuracy(probs: np.ndarray, labels: np.ndarray, source: ip.Source) -> dict:
  """`evaluation.accuracy` with the split's class names (top1_temporal / top1_appearance where it has them)."""
  meta = ip.read_metadata(source.path)
  return evaluation.accuracy(probs, labels, meta.get("label_names"), meta.get("temporal_classes", ()))


def evaluate(params: dict, enc: dict, num_classes: int, source: ip.Source, batch_size: int,
             schedule: Sequence[int] = (), saliency: bool = True, pool: str = "count") -> dict:
  """Multi-view top-1/top-5 of the classifier under a merge schedule and pooling on `source` (one device)."""
  return source_accuracy(*predict(params, enc, num_classes, source, batch_size, schedule, saliency, pool), source)


def load_classifier(params_path: str) -> tuple[dict, dict, int, dict]:
  """-> (params, encoder kwargs, class count, metadata) of a `classifier` params file."""
  params, meta = params_io.load_params(params_path)
  if meta.get("kind") != "classifier" or "head" not in params:
    raise ValueError(f"{params_path!r} holds kind {meta.get('kind')!r}; expected a classifier params file (a "
                     "fine-tune's <workdir>/params.npz or umt-import-umt of a fine-tuned model)")
  params = jax.tree.map(jnp.asarray, params)
  return params, dict(meta["encoder"]), int(params["head"]["kernel"].shape[-1]), meta


def clip_spec(data: dict, meta: dict) -> ip.ClipSpec:
  """The evaluation clips: a workdir config's `data` settings (centre crop), else the params file's frames and
  size (sparse sampling, one view)."""
  if data:
    return ip.ClipSpec(num_frames=data["num_frames"], sampling=data["sampling"], stride=data["stride"],
                       size=data["size"], crop="center", flip=False, test_clips=data["test_clips"],
                       test_crops=data["test_crops"])
  return ip.ClipSpec(num_frames=meta["num_frames"], sampling="sparse", size=meta["img_size"], crop="center",
                     flip=False)


def search(params: dict, enc: dict, num_classes: int, source: ip.Source, target: float, batch_size: int,
           families: Sequence[str] = FAMILIES, saliency: bool = True, pool: str = "count", base: dict | None = None,
           log=print) -> dict:
  """-> {'base': metrics unmerged, 'rows': [{schedule, cut, top1, ...}], 'best': the row with the best top-1,
  'best_hits': its per-clip top-1 hits (E,) bool}. `base`: the unmerged metrics on `source`, when the caller has
  them from an earlier search (not evaluated again)."""
  spec = source.clip
  grid, tubelet = spec.size // enc["patch_size"], enc.get("tubelet_size", 1)
  if base is None:
    base = {k: float(v) for k, v in evaluate(params, enc, num_classes, source, batch_size).items()}
  log(f"no merging: top-1 {base['top1']:.2f}")
  rows, hits = [], {}
  for sched in candidates(enc, spec.num_frames, grid, num_classes, target, families, tubelet):
    cut = flops_cut({**enc, "merge_schedule": sched}, spec.num_frames, grid, num_classes, tubelet)
    probs, labels = predict(params, enc, num_classes, source, batch_size, sched, saliency, pool)
    m, hits[sched] = source_accuracy(probs, labels, source), evaluation.top1_hits(probs, labels)
    rows.append({"schedule": list(sched), "cut": cut, **{k: float(v) for k, v in m.items()}})
    log(f"schedule {list(sched)}: FLOPs -{100 * cut:.1f}%, top-1 {m['top1']:.2f}")
  if not rows:
    raise ValueError(f"no schedule reaches a FLOPs cut of {target} (at most N//2 tokens merge per block)")
  best = max(rows, key=lambda r: (r["top1"], r["cut"]))  # ties: the cheaper schedule
  return {"base": base, "rows": rows, "best": best, "best_hits": hits[tuple(best["schedule"])]}


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--workdir", default="", help="a fine-tune workdir (params.npz, config.json)")
  ap.add_argument("--params", default="", help="a classifier params file (instead of --workdir)")
  ap.add_argument("--data", default="", help="dataset folder (default: the workdir config's data.path)")
  ap.add_argument("--split", default="", help="validation split (default: the config's eval_split, else 'val')")
  ap.add_argument("--cut", type=float, default=0.4, help="target FLOPs cut, a fraction (0.4 = 40%% fewer)")
  ap.add_argument("--families", default=",".join(FAMILIES))
  ap.add_argument("--tome", action="store_true", help="search plain ToMe merging (no saliency) instead")
  ap.add_argument("--pool", default="count", choices=merging.POOLS,
                  help="the classifier's pooling of merged tokens (model.merge.pool)")
  ap.add_argument("--batch_size", type=int, default=50)
  ap.add_argument("--out", default="", help="write the result as JSON here")
  args = ap.parse_args(argv)
  if bool(args.workdir) == bool(args.params):
    ap.error("give one of --workdir and --params")
  if not 0 < args.cut < 1:
    ap.error(f"--cut {args.cut}: expected a fraction in (0, 1)")
  params, enc, num_classes, meta = load_classifier(args.params or os.path.join(args.workdir, "params.npz"))
  cfg = {}
  if args.workdir and os.path.isfile(os.path.join(args.workdir, "config.json")):
    with open(os.path.join(args.workdir, "config.json")) as f:
      cfg = json.load(f)["data"]
  data = args.data or cfg.get("path", "")
  if not data:
    ap.error("--data is required with --params")
  source = ip.Source(data, args.split or cfg.get("eval_split") or "val", clip=clip_spec(cfg, meta))
  out = search(params, enc, num_classes, source, args.cut, args.batch_size,
               [f for f in args.families.split(",") if f], saliency=not args.tome, pool=args.pool)
  b = out["best"]
  print(f"best: model.merge.schedule={b['schedule']} (FLOPs -{100 * b['cut']:.1f}%), top-1 {b['top1']:.2f} vs "
        f"{out['base']['top1']:.2f} unmerged")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({k: v for k, v in out.items() if k != "best_hits"}, f, indent=1)
  return out


if __name__ == "__main__":
  main()
