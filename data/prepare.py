"""Convert a folder of videos + an annotation file into pre-decoded JPEG-frame ArrayRecord shards.

  python -m data.prepare --root /data/k400 --split train=train.csv --split val=val.csv --out /data/k400_rec \\
      --max_frames 64 --short_side 256 --workers 8

Annotations: CSV with a header naming `path` (or `video`) plus `label` and/or `caption`; or a JSON list of
{"video"|"path": ..., "caption": str | [str, ...], "label": ...}. Labels that are all integers are kept;
class names are mapped to indices in sorted order (the names go into metadata.json). Videos are decoded with
PyAV; up to `--max_frames` frames are kept, spread uniformly, or sampled at `--fps` first; frames are resized
to `--short_side` (aspect kept) and stored as JPEG. Bad inputs (missing, empty, corrupt or truncated files,
unsupported codecs, clips shorter than `--min_frames`, malformed rows) are skipped, logged and counted in
report.json; a re-run skips finished shards.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import os
import shlex
import sys
from typing import Iterator

import numpy as np

from data import records, writer

COLUMNS = {"path": "path", "video": "path", "video_path": "path", "label": "label", "caption": "caption",
           "text": "caption"}


@dataclasses.dataclass
class Row:
  path: str
  label: str | int | None = None
  captions: list[str] = dataclasses.field(default_factory=list)
  error: str | None = None  # a malformed row: skipped with this detail


class SkipClip(Exception):
  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}")
    self.reason, self.detail = reason, detail


def read_annotations(path: str) -> list[Row]:
  """Rows of a CSV (with header) or JSON annotation file. Fatal errors: missing/empty file, unknown columns."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"annotation file {path!r} does not exist")
  with open(path, newline="") as f:
    text = f.read()
  if not text.strip():
    raise ValueError(f"annotation file {path!r} is empty")
  if path.endswith(".json"):
    items = json.loads(text)
    if not isinstance(items, list):
      raise ValueError(f"{path}: expected a JSON list of objects, got {type(items).__name__}")
    rows = []
    for i, it in enumerate(items):
      if not isinstance(it, dict) or not (it.get("video") or it.get("path")):
        rows.append(Row(path=f"{path}#{i}", error=f"entry {i} has no 'video' or 'path'"))
        continue
      unknown = set(it) - {"video", "path", "caption", "label"}
      if unknown:
        raise ValueError(f"{path}: entry {i} has unknown keys {sorted(unknown)}; "
                         "expected video|path, caption, label")
      caps = it.get("caption", [])
      rows.append(Row(path=it.get("video") or it["path"], label=it.get("label"),
                      captions=[caps] if isinstance(caps, str) else list(caps)))
    return rows
  reader = csv.reader(text.splitlines())
  header = [h.strip().lower() for h in next(reader)]
  unknown = [h for h in header if h not in COLUMNS]
  if unknown:
    raise ValueError(f"{path}: unknown column(s) {unknown} in the header {header}; expected a header row with "
                     f"'path' (or 'video') and 'label' and/or 'caption'")
  cols = [COLUMNS[h] for h in header]
  if "path" not in cols:
    raise ValueError(f"{path}: the header {header} has no 'path' column")
  rows = []
  for lineno, values in enumerate(reader, start=2):
    if not values or not any(v.strip() for v in values):
      continue
    if len(values) != len(cols) or not values[cols.index("path")].strip():
      rows.append(Row(path=f"{path}:{lineno}", error=f"line {lineno}: expected {len(cols)} fields {header}, "
                                                     f"got {values!r}"))
      continue
    d = dict(zip(cols, (v.strip() for v in values)))
    rows.append(Row(path=d["path"], label=d.get("label"), captions=[d["caption"]] if "caption" in d else []))
  return rows


def label_table(rows: list[Row]) -> tuple[dict, list[str] | None]:
  """Maps raw labels to ints: integers stay, names get sorted indices. -> (mapping, names or None)."""
  raw = sorted({str(r.label) for r in rows if r.error is None and r.label not in (None, "")})
  if all(v.lstrip("-").isdigit() for v in raw):
    return {v: int(v) for v in raw}, None
  return {v: i for i, v in enumerate(raw)}, raw


def select_frames(n: int, src_fps: float, max_frames: int, fps: float | None) -> np.ndarray:
  """Indices of the frames to keep out of n decoded: at `fps` if given, then at most `max_frames`, uniformly."""
  idx = np.arange(n)
  if fps and src_fps > 0 and fps < src_fps:
    idx = np.unique(np.floor(np.arange(0, n, src_fps / fps)).astype(int))
  if len(idx) > max_frames:
    idx = idx[np.round(np.linspace(0, len(idx) - 1, max_frames)).astype(int)]
  return idx


def decode_video(path: str, short_side: int, max_frames: int, fps: float | None,
                 min_frames: int) -> tuple[np.ndarray, float, int, np.ndarray]:
  """-> (frames (T, H, W, 3) uint8, source fps, decoded frame count, kept indices). Raises SkipClip."""
  import av
  if not os.path.isfile(path):
    raise SkipClip("missing_file", path)
  if os.path.getsize(path) == 0:
    raise SkipClip("empty_file", path)
  try:
    with av.open(path) as container:
      if not container.streams.video:
        raise SkipClip("no_video_stream", path)
      stream = container.streams.video[0]
      if stream.codec_context is None:
        raise SkipClip("unsupported_codec", f"{path}: no decoder for this stream")
      stream.thread_type = "AUTO"
      src_fps = float(stream.average_rate or stream.guessed_rate or 0.0)
      h, w = stream.codec_context.height, stream.codec_context.width
      if short_side:
        s = short_side / min(h, w)
        h, w = max(2, int(round(h * s))), max(2, int(round(w * s)))
      frames = [f.to_ndarray(format="rgb24", width=w, height=h) for f in container.decode(stream)]
  except SkipClip:
    raise
  except av.error.DecoderNotFoundError as e:
    raise SkipClip("unsupported_codec", f"{path}: {e}") from e
  except (av.error.FFmpegError, ValueError, EOFError, OSError) as e:
    raise SkipClip("corrupt", f"{path}: {e}") from e
  if len(frames) < min_frames:
    raise SkipClip("too_short", f"{path}: {len(frames)} decodable frames < --min_frames {min_frames}")
  keep = select_frames(len(frames), src_fps, max_frames, fps)
  return np.stack([frames[i] for i in keep]), src_fps, len(frames), keep


@dataclasses.dataclass
class ShardJob:
  path: str
  rows: list
  root: str
  labels: dict
  short_side: int
  max_frames: int
  fps: float | None
  min_frames: int
  quality: int

  @property
  def size(self) -> int:
    return len(self.rows)


def _shard_items(job: ShardJob) -> Iterator[tuple]:
  log = logging.getLogger("data.prepare")
  for row in job.rows:
    if row.error is not None:
      log.warning("skip %s: bad_annotation: %s", row.path, row.error)
      yield row.path, None, "bad_annotation", {"detail": row.error}
      continue
    try:
      frames, src_fps, n, keep = decode_video(os.path.join(job.root, row.path), job.short_side, job.max_frames,
                                              job.fps, job.min_frames)
    except SkipClip as e:
      log.warning("skip %s: %s", row.path, e)
      yield row.path, None, e.reason, {"detail": e.detail}
      continue
    label = -1 if row.label in (None, "") else job.labels[str(row.label)]
    kept_fps = src_fps * (len(keep) - 1) / max(keep[-1] - keep[0], 1) if len(keep) > 1 else src_fps
    rec = records.pack(frames, label=label, captions=row.captions, id=row.path, src_fps=src_fps, src_frames=n,
                       fps=kept_fps, quality=job.quality)
    yield row.path, rec, None, {"height": frames.shape[1], "width": frames.shape[2], "frames": frames.shape[0]}


def convert_shard(job: ShardJob) -> dict:
  return writer.write_shard(job.path, _shard_items(job))


def write_metadata(out: str, splits: dict[str, list[dict]], label_names: list[str] | None, command: str,
                   extra: dict | None = None) -> dict:
  """metadata.json (splits, counts, labels, frame-size statistics, command) and report.json (skips)."""
  all_reports = [r for reps in splits.values() for r in reps]
  meta = {"format": records.FORMAT, "command": command, "label_names": label_names,
          "splits": {name: {"num_records": sum(r["written"] for r in reps),
                            "shards": [writer.shard_name(name, i, len(reps)) for i in range(len(reps))]}
                     for name, reps in splits.items()},
          "frame_stats": writer.frame_stats(all_reports), **(extra or {})}
  report = {name: writer.merge_reports(reps) for name, reps in splits.items()}
  for name, content in (("metadata.json", meta), ("report.json", report)):
    with open(os.path.join(out, name + ".tmp"), "w") as f:
      json.dump(content, f, indent=1)
    os.replace(os.path.join(out, name + ".tmp"), os.path.join(out, name))
  return meta


def main(argv: list[str] | None = None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--root", required=True, help="folder the annotation paths are relative to")
  ap.add_argument("--split", action="append", required=True, metavar="NAME=ANNOTATIONS",
                  help="a split and its annotation file (.csv or .json); repeat for several")
  ap.add_argument("--out", required=True, help="output folder for shards, metadata.json and report.json")
  ap.add_argument("--max_frames", type=int, default=64)
  ap.add_argument("--fps", type=float, default=None, help="sample at this frame rate before capping")
  ap.add_argument("--min_frames", type=int, default=8, help="skip clips with fewer decodable frames")
  ap.add_argument("--short_side", type=int, default=256, help="resize the short side to this (0: keep)")
  ap.add_argument("--quality", type=int, default=90, help="JPEG quality")
  ap.add_argument("--clips_per_shard", type=int, default=256)
  ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
  args = ap.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
  if not os.path.isdir(args.root):
    raise FileNotFoundError(f"--root {args.root!r} is not a directory")
  splits = {}
  for spec in args.split:
    name, sep, ann = spec.partition("=")
    if not sep or not name or not ann:
      raise ValueError(f"--split {spec!r}: expected NAME=ANNOTATION_FILE")
    splits[name] = read_annotations(ann)
  labels, names = label_table([r for rows in splits.values() for r in rows])
  os.makedirs(args.out, exist_ok=True)
  reports = {}
  for name, rows in splits.items():
    num_shards = max(1, -(-len(rows) // args.clips_per_shard))
    jobs = [ShardJob(os.path.join(args.out, writer.shard_name(name, i, num_shards)), rows[a:b], args.root, labels,
                     args.short_side, args.max_frames, args.fps, args.min_frames, args.quality)
            for i, (a, b) in enumerate(writer.shard_ranges(len(rows), num_shards))]
    reports[name] = writer.run_shard_jobs(convert_shard, jobs, args.workers, f"{name}")
  command = "python -m data.prepare " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
  meta = write_metadata(args.out, reports, names, command)
  skipped = {n: writer.merge_reports(r)["skipped"] for n, r in reports.items()}
  print(f"wrote {args.out}: " + ", ".join(f"{n} {m['num_records']} records" for n, m in meta["splits"].items())
        + f"; skipped {skipped} (details in report.json)")
  return meta


if __name__ == "__main__":
  main()
