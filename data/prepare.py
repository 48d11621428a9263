"""Convert a folder of videos and/or images + an annotation file into pre-decoded JPEG-frame ArrayRecord shards.

  python -m data.prepare --root /data/k400 --split train=train.csv --split val=val.csv --out /data/k400_rec \\
      --max_frames 64 --short_side 256 --workers 8
  python -m data.prepare --root /data/coco --split train=captions_train2017.json --out /data/coco_rec

Annotations: CSV with a header naming the media path (`path`, `video`, `image`, `file` or `filename`) plus
`label` and/or `caption`; TSV likewise, or header-less CC3M style `caption<TAB>path`; a JSON list of
{"video"|"image"|"path"|"file"|"filename": ..., "caption": str | [str, ...], "label": ...} ("id", "image_id",
"video_id" ignored); or COCO caption JSON {"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}
(captions grouped per image). Annotation files are UTF-8 with or without a BOM, or UTF-16 with a BOM (what
spreadsheets save), with LF, CRLF or CR line ends. Labels that are all integers are kept; class names are
mapped to indices in sorted order (the names go into metadata.json).

Media kind is by extension (`--media auto`: .jpg .jpeg .png .webp .bmp .gif .tif .tiff are images, anything
else a video), or forced with `--media image|video`; a split may mix both. Videos are decoded with PyAV; up to
`--max_frames` frames are kept, spread uniformly, or sampled at `--fps` first. Images are decoded fully with PIL
into a 1-frame clip (fps = src_fps = 0, src_frames = 1): EXIF orientation applied, first frame of an animation,
alpha composited on white, 16-bit scaled to 8 bits, palette/grey/CMYK converted to RGB. Frames are resized to
`--short_side` (aspect kept) and stored as JPEG. metadata.json counts each split's records per media kind.

Bad inputs are skipped, logged and counted in report.json by reason: `missing_file`, `empty_file`, `corrupt`
(garbage, truncated or undecodable files), `unsupported_codec`, `no_video_stream`, `too_short` (fewer than
`--min_frames` decodable video frames), `too_small` (a short side under `--min_side` pixels), `too_large` (an
image over PIL's MAX_IMAGE_PIXELS, a decompression bomb, or a frame whose long side after resizing exceeds
JPEG's 65500), `bad_annotation` (a malformed row, or a JSON entry of the wrong type, reported with its index).
A re-run skips finished shards. One run at a time per output folder (`<out>/.lock`; a second one fails naming the
first one's pid); temporary files a killed run left are removed, and its workers exit with it.
"""
from __future__ import annotations

import argparse
import codecs
import csv
import dataclasses
import io
import itertools
import json
import logging
import os
import re
import shlex
import sys
import warnings
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps

from data import records, writer

COLUMNS = {"path": "path", "video": "path", "video_path": "path", "image": "path", "image_path": "path",
           "file": "path", "filename": "path", "label": "label", "caption": "caption", "text": "caption"}
IGNORED_KEYS = {"id", "image_id", "video_id"}  # BLIP/UMT-style JSON annotations carry them
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_JPEG_SIDE = 65500  # libjpeg's limit: a wider frame cannot be stored


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


def make_row(where: str, path, label=None, caption=None) -> Row:
  """A Row from one annotation entry's values (CSV strings or JSON values); malformed ones make an error row."""
  caps = [] if caption is None else [caption] if isinstance(caption, str) else caption
  if path is None or path == "":
    return Row(path=where, error="no media path")
  if not isinstance(path, str) or not path.strip():
    return Row(path=where, error=f"the media path must be a non-empty string, got {path!r}")
  if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
    return Row(path=where, error=f"caption must be a string or a list of strings, got {caption!r}")
  if label is not None and (isinstance(label, bool) or not isinstance(label, (str, int))):
    return Row(path=where, error=f"label must be an int or a string, got {label!r}")
  return Row(path=path.strip(), label=label, captions=[c.strip() for c in caps])


def _json_list_rows(path: str, items: list) -> list[Row]:
  rows = []
  for i, it in enumerate(items):
    if not isinstance(it, dict):
      rows.append(Row(path=f"{path}#{i}", error=f"entry {i} is not an object: {it!r}"))
      continue
    unknown = set(it) - set(COLUMNS) - IGNORED_KEYS
    if unknown:
      raise ValueError(f"{path}: entry {i} has unknown keys {sorted(unknown)}; "
                       f"expected one of {sorted(k for k, v in COLUMNS.items() if v == 'path')}, caption, label")
    fields = {}
    for k, v in it.items():
      if k in COLUMNS:
        fields.setdefault(COLUMNS[k], v)
    rows.append(make_row(f"{path}#{i}", fields.get("path"), fields.get("label"), fields.get("caption")))
  return rows


def _coco_rows(path: str, d: dict) -> list[Row]:
  """COCO caption JSON -> one row per image, its captions in annotation order."""
  images, anns = d.get("images"), d.get("annotations")
  if not isinstance(images, list) or not isinstance(anns, list):
    raise ValueError(f"{path}: expected a JSON list of objects or COCO captions ('images' and 'annotations' "
                     f"lists), got an object with keys {sorted(d)[:10]}")
  rows, caps = [], {}
  for i, a in enumerate(anns):
    if not (isinstance(a, dict) and isinstance(a.get("image_id"), (int, str)) and isinstance(a.get("caption"), str)):
      rows.append(Row(path=f"{path}#annotations[{i}]", error=f"annotation {i} needs image_id and caption: {a!r}"))
      continue
    caps.setdefault(a["image_id"], []).append(a["caption"])
  seen = set()
  for i, im in enumerate(images):
    where = f"{path}#images[{i}]"
    if not isinstance(im, dict) or not isinstance(im.get("id"), (int, str)) or im["id"] in seen:
      rows.append(Row(path=where, error=f"image {i} has no id, or a duplicate one: {im!r}"))
      continue
    seen.add(im["id"])
    rows.append(make_row(where, im.get("file_name"), caption=caps.pop(im["id"], [])))
  rows += [Row(path=f"{path}#image_id={k}", error=f"{len(v)} caption(s) for image_id {k!r}, not in 'images'")
           for k, v in caps.items()]
  return rows


def read_text(path: str, what: str) -> str:
  """A user's text file: UTF-8 with or without a BOM, or UTF-16 with a BOM (Excel's 'Unicode text'); line ends
  are kept as they are (csv and json take LF, CRLF and CR). Not decodable: ValueError naming the file and line."""
  with open(path, "rb") as f:
    raw = f.read()
  utf16 = raw[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
  try:
    return raw.decode("utf-16" if utf16 else "utf-8-sig")
  except UnicodeDecodeError as e:
    line = raw[: e.start].count(b"\n") + 1
    raise ValueError(f"{what} {path!r} is not {'UTF-16' if utf16 else 'UTF-8'} text (line {line}, bytes "
                     f"{raw[e.start:e.start + 4]!r}); save it as UTF-8 (spreadsheets: 'CSV UTF-8')") from None


def read_annotations(path: str) -> list[Row]:
  """Rows of a CSV/TSV or JSON annotation file. Fatal errors: missing/empty/undecodable file, invalid JSON,
  unknown columns or keys."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"annotation file {path!r} does not exist")
  text = read_text(path, "annotation file")
  if not text.strip():
    raise ValueError(f"annotation file {path!r} is empty")
  if path.endswith(".json"):
    try:
      items = json.loads(text)
    except json.JSONDecodeError as e:
      raise ValueError(f"annotation file {path!r} is not valid JSON: {e}") from None
    if isinstance(items, dict):
      return _coco_rows(path, items)
    if not isinstance(items, list):
      raise ValueError(f"{path}: expected a JSON list of objects or COCO captions, got {type(items).__name__}")
    return _json_list_rows(path, items)
  tsv = path.endswith(".tsv")
  reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if tsv else ",",
                      quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
  try:
    return _table_rows(path, reader, tsv)
  except csv.Error as e:  # e.g. a field over csv's size limit (an unclosed quote)
    raise ValueError(f"annotation file {path!r}, line {reader.line_num}: {e}") from None


def _table_rows(path: str, reader, tsv: bool) -> list[Row]:
  first = next(reader)
  header = [h.strip().lower() for h in first]
  lines = ((reader.line_num, values) for values in reader)  # physical line numbers: quoted fields may span lines
  if tsv and not set(header) <= set(COLUMNS):  # CC3M: no header, caption then path (or URL)
    header, lines = ["caption", "path"], itertools.chain([(1, first)], lines)
  unknown = [h for h in header if h not in COLUMNS]
  if unknown:
    raise ValueError(f"{path}: unknown column(s) {unknown} in the header {header}; expected a header row with "
                     f"'path' (or 'video', 'image', 'file', 'filename') and 'label' and/or 'caption'")
  cols = [COLUMNS[h] for h in header]
  if "path" not in cols:
    raise ValueError(f"{path}: the header {header} has no 'path' column")
  rows = []
  for lineno, values in lines:
    if not values or not any(v.strip() for v in values):
      continue
    if len(values) != len(cols):
      rows.append(Row(path=f"{path}:{lineno}", error=f"line {lineno}: expected {len(cols)} fields {header}, "
                                                     f"got {values!r}"))
      continue
    d = dict(zip(cols, (v.strip() for v in values)))
    rows.append(make_row(f"{path}:{lineno}", d["path"], d.get("label"), d.get("caption")))
  return rows


def label_table(rows: list[Row]) -> tuple[dict, list[str] | None]:
  """Maps raw labels to ints: integers stay, names get sorted indices. -> (mapping, names or None)."""
  raw = sorted({str(r.label) for r in rows if r.error is None and r.label not in (None, "")})
  if all(re.fullmatch(r"-?[0-9]+", v) for v in raw):
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


def check_file(path: str) -> None:
  if not os.path.isfile(path):
    raise SkipClip("missing_file", path)
  if os.path.getsize(path) == 0:
    raise SkipClip("empty_file", path)


def frame_size(path: str, h: int, w: int, short_side: int, min_side: int) -> tuple[int, int]:
  """Stored (h, w) of an h×w source: short side resized to `short_side` (0: kept), aspect kept. Raises SkipClip."""
  if min(h, w) < max(min_side, 1):
    raise SkipClip("too_small", f"{path}: {w}x{h}, short side < --min_side {min_side}")
  if short_side:
    s = short_side / min(h, w)
    h, w = max(2, int(round(h * s))), max(2, int(round(w * s)))
  if max(h, w) > MAX_JPEG_SIDE:
    raise SkipClip("too_large", f"{path}: {w}x{h} after resizing; a JPEG side is at most {MAX_JPEG_SIDE}")
  return h, w


def decode_video(path: str, short_side: int, max_frames: int, fps: float | None, min_frames: int,
                 min_side: int) -> tuple[np.ndarray, float, int, np.ndarray]:
  """-> (frames (T, H, W, 3) uint8, source fps, decoded frame count, kept indices). Raises SkipClip."""
  import av
  check_file(path)
  try:
    with av.open(path) as container:
      if not container.streams.video:
        raise SkipClip("no_video_stream", path)
      stream = container.streams.video[0]
      if stream.codec_context is None:
        raise SkipClip("unsupported_codec", f"{path}: no decoder for this stream")
      stream.thread_type = "AUTO"
      src_fps = float(stream.average_rate or stream.guessed_rate or 0.0)
      h, w = frame_size(path, stream.codec_context.height, stream.codec_context.width, short_side, min_side)
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


def to_rgb(im: Image.Image) -> Image.Image:
  """Any PIL mode -> RGB: alpha composited on white, 16-bit grey scaled (PIL's convert clips it at 255)."""
  if im.mode == "I" or im.mode.startswith("I;16"):
    im = Image.fromarray((np.asarray(im).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8))
  if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
    im = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im.convert("RGBA"))
  return im.convert("RGB")


def decode_image(path: str, short_side: int, min_side: int) -> np.ndarray:
  """-> (1, H, W, 3) uint8: EXIF orientation applied, an animation's first frame. Raises SkipClip."""
  check_file(path)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)  # over MAX_IMAGE_PIXELS: skip, don't decode
      with Image.open(path) as im:
        if short_side:  # JPEG: decode at the smallest DCT scale (1/2 .. 1/8) that keeps both sides >= short_side
          im.draft("RGB", (short_side, short_side))
        im.load()  # the full decode, so a truncated file fails here (LOAD_TRUNCATED_IMAGES stays off)
        im = to_rgb(ImageOps.exif_transpose(im))
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise SkipClip("too_large", f"{path}: {e}") from e
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ... on hostile files
    raise SkipClip("corrupt", f"{path}: {type(e).__name__}: {e}") from e
  h, w = frame_size(path, im.height, im.width, short_side, min_side)
  if (w, h) != im.size:
    im = im.resize((w, h), Image.Resampling.BICUBIC)
  return np.asarray(im)[None]


def media_kind(path: str, media: str) -> str:
  """'image' or 'video': as forced by --media, else by the file extension."""
  if media != "auto":
    return media
  return "image" if path.lower().endswith(IMAGE_EXTENSIONS) else "video"


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
  media: str
  min_side: int

  @property
  def size(self) -> int:
    return len(self.rows)


def decode(job: ShardJob, row: Row) -> tuple[str, np.ndarray, float, int, np.ndarray]:
  """-> (media kind, frames, source fps, source frame count, kept indices); an image is a 1-frame clip at 0 fps."""
  path = os.path.join(job.root, row.path)
  if media_kind(row.path, job.media) == "image":
    return "image", decode_image(path, job.short_side, job.min_side), 0.0, 1, np.zeros(1, int)
  return "video", *decode_video(path, job.short_side, job.max_frames, job.fps, job.min_frames, job.min_side)


def _shard_items(job: ShardJob) -> Iterator[tuple]:
  log = logging.getLogger("data.prepare")
  for row in job.rows:
    if row.error is not None:
      log.warning("skip %s: bad_annotation: %s", row.path, row.error)
      yield row.path, None, "bad_annotation", {"detail": row.error}
      continue
    try:
      kind, frames, src_fps, n, keep = decode(job, row)
    except SkipClip as e:
      log.warning("skip %s: %s", row.path, e)
      yield row.path, None, e.reason, {"detail": e.detail}
      continue
    label = -1 if row.label in (None, "") else job.labels[str(row.label)]
    kept_fps = src_fps * (len(keep) - 1) / max(keep[-1] - keep[0], 1) if len(keep) > 1 else src_fps
    rec = records.pack(frames, label=label, captions=row.captions, id=row.path, src_fps=src_fps, src_frames=n,
                       fps=kept_fps, quality=job.quality)
    yield row.path, rec, None, {"height": frames.shape[1], "width": frames.shape[2], "frames": frames.shape[0],
                                "media": kind}


def convert_shard(job: ShardJob) -> dict:
  return writer.write_shard(job.path, _shard_items(job))


def media_counts(reports: list[dict]) -> dict[str, int]:
  """Written records per media kind: the trainer tells image-text from video-text sources by it."""
  counts = {"image": 0, "video": 0}
  for r in reports:
    for s in r["stats"]:
      counts[s.get("media", "video")] += 1  # synthetic (and older) stats: videos
  return counts


def write_metadata(out: str, splits: dict[str, list[dict]], label_names: list[str] | None, command: str,
                   extra: dict | None = None) -> dict:
  """metadata.json (splits, counts per media kind, labels, frame-size statistics, command) and report.json
  (skips)."""
  all_reports = [r for reps in splits.values() for r in reps]
  meta = {"format": records.FORMAT, "command": command, "label_names": label_names,
          "splits": {name: {"num_records": sum(r["written"] for r in reps),
                            "shards": [writer.shard_name(name, i, len(reps)) for i in range(len(reps))],
                            "media": media_counts(reps)}
                     for name, reps in splits.items()},
          "frame_stats": writer.frame_stats(all_reports), **(extra or {})}
  report = {name: writer.merge_reports(reps) for name, reps in splits.items()}
  writer.write_json(os.path.join(out, "metadata.json"), meta)
  writer.write_json(os.path.join(out, "report.json"), report)
  return meta


def main(argv: list[str] | None = None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--root", required=True, help="folder the annotation paths are relative to")
  ap.add_argument("--split", action="append", required=True, metavar="NAME=ANNOTATIONS",
                  help="a split and its annotation file (.csv, .tsv or .json); repeat for several")
  ap.add_argument("--out", required=True, help="output folder for shards, metadata.json and report.json")
  ap.add_argument("--max_frames", type=int, default=64)
  ap.add_argument("--fps", type=float, default=None, help="sample at this frame rate before capping")
  ap.add_argument("--min_frames", type=int, default=8, help="skip clips with fewer decodable frames")
  ap.add_argument("--short_side", type=int, default=256, help="resize the short side to this (0: keep)")
  ap.add_argument("--min_side", type=int, default=16, help="skip images/videos with a shorter short side")
  ap.add_argument("--media", choices=("auto", "image", "video"), default="auto",
                  help="how to decode the files (auto: images by extension, the rest as videos)")
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
  reports = {}
  command = "python -m data.prepare " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
  with writer.exclusive_output(args.out):
    for name, rows in splits.items():
      num_shards = max(1, -(-len(rows) // args.clips_per_shard))
      jobs = [ShardJob(os.path.join(args.out, writer.shard_name(name, i, num_shards)), rows[a:b], args.root,
                       labels, args.short_side, args.max_frames, args.fps, args.min_frames, args.quality, args.media,
                       args.min_side)
              for i, (a, b) in enumerate(writer.shard_ranges(len(rows), num_shards))]
      reports[name] = writer.run_shard_jobs(convert_shard, jobs, args.workers, f"{name}")
    meta = write_metadata(args.out, reports, names, command)
  skipped = {n: writer.merge_reports(r)["skipped"] for n, r in reports.items()}
  print(f"wrote {args.out}: " + ", ".join(f"{n} {m['num_records']} records" for n, m in meta["splits"].items())
        + f"; skipped {skipped} (details in report.json)")
  return meta


if __name__ == "__main__":
  main()
