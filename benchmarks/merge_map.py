"""A PNG of what vid-TLDR does to a few clips: tokens dropped as background and tokens merged together.

  python -m benchmarks.merge_map --workdir /tmp/umt_demo --schedule 20 --out /tmp/umt_demo/merge_map.png

Per clip two rows of frames: the clip, then its patches coloured by the final token each one ended up in
(groups of two or more patches share a colour; patches left alone are shown as they are) and darkened where
the patch was dropped as background (a merged source of zero saliency: it adds nothing to its destination).

How the assignments are found without a hook in the model: `merging.bipartite_merge` is wrapped while the
classifier runs, and each call also merges [x, ε·P], where P (N, N0) says which of the N0 input patches each
current token holds. The merge is a weighted average, so the merged P holds every patch that reached a token
with a positive weight, and none that was dropped. ε = 1e-4 leaves the matching unchanged (checked: the first
D channels must equal the real merge's output).
On the built-in synthetic data it also counts how often the primary object's patches are dropped as
background, against the background's own patches (`object_drops`).
"""
from __future__ import annotations

import argparse
import colorsys
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

from data import records, synthetic
from umt_jax import input_pipeline as ip
from umt_jax.models import merging
from umt_jax.models.heads import VideoClassifier

EPS = 1e-4


def assignments(params, enc: dict, num_classes: int, video: jax.Array, schedule, saliency: bool = True):
  """video (B, T, S, S, 3) uint8 -> (P (B, N_last, N0) provenance weights ≥ 0, masses (B, N_last),
  logits (B, classes))."""
  model = VideoClassifier(encoder={**enc, "merge_schedule": tuple(schedule), "merge_saliency": saliency},
                          num_classes=num_classes)
  orig = merging.bipartite_merge

  def run(params, video):  # traced once under jit, with the wrapper in place
    state = {"err": []}

    def traced(x, *args, **kwargs):
      out = orig(x, *args, **kwargs)
      prov = state.get("p", jnp.broadcast_to(jnp.eye(x.shape[1], dtype=jnp.float32), (x.shape[0],) +
                                             (x.shape[1],) * 2))
      y = orig(jnp.concatenate([x.astype(jnp.float32), EPS * prov], -1), *args, **kwargs)[0]
      d = x.shape[-1]
      state["err"].append(jnp.max(jnp.abs(y[..., :d] - out[0])) / jnp.max(jnp.abs(out[0])))
      state["p"], state["size"] = y[..., d:] / EPS, out[1]
      return out

    merging.bipartite_merge = traced
    try:
      logits = model.apply({"params": params}, ip.normalize(video))
    finally:
      merging.bipartite_merge = orig
    return state["p"], state["size"], logits, jnp.max(jnp.stack(state["err"]))

  prov, size, logits, err = jax.device_get(jax.jit(run)(params, video))
  if err > 1e-4:
    raise RuntimeError(f"the traced merge differs from the real one by {err:.2e} (relative): a near-tie in the "
                       "matching moved")
  return prov, size, logits


def colours(n: int) -> np.ndarray:
  return np.array([colorsys.hsv_to_rgb((i * 0.618034) % 1, 0.85, 1.0) for i in range(n)]) * 255


def render(video: np.ndarray, prov: np.ndarray, patch: int, scale: int = 3) -> Image.Image:
  """video (T, S, S, 3) uint8, prov (N_last, N0) of one clip -> the two rows as an image."""
  t, s = video.shape[:2]
  g = s // patch
  owner = np.where(prov.max(0) > 0, prov.argmax(0), -1)  # input patch -> final token, -1 dropped
  members = np.bincount(owner[owner >= 0], minlength=prov.shape[0])
  palette = colours(prov.shape[0])
  frames = video.astype(np.float32)
  painted = frames.copy()
  for j, k in enumerate(owner):  # input token j = f·g·g + y·g + x (t-major raster order)
    f, y, x = j // (g * g), (j // g) % g, j % g
    cell = painted[f, y * patch:(y + 1) * patch, x * patch:(x + 1) * patch]
    if k < 0:
      cell *= 0.15
    elif members[k] > 1:
      cell[:] = 0.45 * cell + 0.55 * palette[k]
  rows = [np.concatenate(list(frames), 1), np.concatenate(list(painted), 1)]
  img = Image.fromarray(np.clip(np.concatenate(rows, 0), 0, 255).astype(np.uint8))
  return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def save(params, enc: dict, num_classes: int, source: ip.Source, schedule, out: str, clips: int = 4) -> dict:
  """Writes the PNG for the first `clips` clips of `source` (first view) -> per-clip counts."""
  ds, _ = ip.eval_dataset(source, clips)
  batch = ds[0]
  video = jnp.asarray(batch["video"][:clips, 0])
  prov, _, logits = assignments(params, enc, num_classes, video, schedule)
  names = ip.read_metadata(source.path).get("label_names") or []
  tiles, stats = [], []
  for i in range(video.shape[0]):
    owner_max = prov[i].max(0)
    dropped, kept = int((owner_max <= 0).sum()), int((prov[i].max(1) > 0).sum())
    label = int(batch["label"][i])
    stats.append({"label": names[label] if names else label, "pred": int(logits[i].argmax()),
                  "tokens_in": prov.shape[2], "tokens_out": prov.shape[1], "dropped": dropped,
                  "merged_groups": int((np.bincount(prov[i].argmax(0)[owner_max > 0]) > 1).sum()),
                  "final_tokens_with_patches": kept})
    tile = render(np.asarray(video[i]), prov[i], enc["patch_size"])
    canvas = Image.new("RGB", (tile.width, tile.height + 14), "white")
    canvas.paste(tile, (0, 14))
    s = stats[-1]
    ImageDraw.Draw(canvas).text((2, 1), f"{s['label']}: {s['tokens_in']}->{s['tokens_out']} tokens, "
                                        f"{s['dropped']} dropped, {s['merged_groups']} groups", fill="black")
    tiles.append(canvas)
  sheet = Image.new("RGB", (max(t.width for t in tiles), sum(t.height + 6 for t in tiles)), "white")
  y = 0
  for t in tiles:
    sheet.paste(t, (0, y))
    y += t.height + 6
  sheet.save(out)
  return {"schedule": list(schedule), "clips": stats}


def object_drops(params, enc: dict, num_classes: int, source: ip.Source, schedule, batch: int = 50,
                 min_object: float = 0.25) -> dict:
  """On a built-in synthetic split: how often vid-TLDR drops (as background) a patch of the primary object vs a
  background patch, first test view. The object's pixels come from re-rendering each clip
  (`synthetic.render_clip(primary_mask=True)`), put through the same test-view transform as the frames (as a
  record of mask frames); a patch is the object's when ≥ `min_object` of its pixels are."""
  meta = ip.read_metadata(source.path)
  syn, names, recs = meta["synthetic"], meta["label_names"], source.open_records()
  views, p = ip.EvalClips(source.clip), enc["patch_size"]
  ds, n = ip.eval_dataset(source, batch)
  drop = {"object": [0, 0], "background": [0, 0]}  # [dropped, patches]
  for b, item in enumerate(ds):
    rows = np.flatnonzero(item["valid"])
    prov, _, _ = assignments(params, enc, num_classes, jnp.asarray(item["video"][:, 0]), schedule)
    for i in rows:
      rec = records.unpack(recs[b * batch + i])
      index = int(rec["id"].rsplit("/", 1)[1])
      split = rec["id"].split("/")[1]
      mask = synthetic.render_clip(syn["seed"], split, index, names[rec["label"]], syn["size"], syn["frames"],
                                   primary_mask=True)[2]
      fake = records.pack(np.repeat(mask[..., None] * np.uint8(255), 3, -1), id=rec["id"], src_fps=1,
                          src_frames=len(mask), fps=1, quality=100)
      m = views.map(fake)["video"][0, ..., 0] > 127  # (T, S, S)
      t, s = m.shape[:2]
      frac = m.reshape(t, s // p, p, s // p, p).mean((2, 4)).reshape(-1)  # t-major raster, as the tokens
      gone = prov[i].max(0) <= 0
      for key, sel in (("object", frac >= min_object), ("background", frac == 0)):
        drop[key][0] += int(gone[sel].sum())
        drop[key][1] += int(sel.sum())
  return {k: {"dropped": d, "patches": t, "rate": d / max(t, 1)} for k, (d, t) in drop.items()} | {"clips": n}


def main(argv=None) -> dict:
  from umt_jax.tools import merge_schedule as ms
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--workdir", required=True, help="the demo's workdir")
  ap.add_argument("--schedule", required=True, help="tokens merged per block, e.g. 20 or 16,8")
  ap.add_argument("--clips", type=int, default=4)
  ap.add_argument("--out", default="")
  args = ap.parse_args(argv)
  ft = os.path.join(args.workdir, "finetune")
  params, enc, classes, meta = ms.load_classifier(os.path.join(ft, "params.npz"))
  with open(os.path.join(ft, "config.json")) as f:
    data_cfg = json.load(f)["data"]
  src = ip.Source(os.path.join(args.workdir, "data"), data_cfg["eval_split"], clip=ms.clip_spec(data_cfg, meta))
  out = args.out or os.path.join(args.workdir, "merge_map.png")
  schedule = [int(r) for r in args.schedule.split(",")]
  stats = save(params, enc, classes, src, schedule, out, args.clips)
  if "synthetic" in ip.read_metadata(src.path):
    stats["object_drops"] = object_drops(params, enc, classes, src, schedule)
  print(json.dumps(stats, indent=1))
  return stats


if __name__ == "__main__":
  main()
