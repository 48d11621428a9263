"""Real video files for converter tests, made with PyAV (good ones and every kind of broken one)."""
from __future__ import annotations

import json
import os

import av
import numpy as np
from array_record.python.array_record_module import ArrayRecordReader

from data import records


def read_records(out: str, split: str) -> tuple[dict, list[dict]]:
  """A converted folder's metadata and the unpacked records of one split, in shard order."""
  with open(os.path.join(out, "metadata.json")) as f:
    meta = json.load(f)
  recs = []
  for shard in meta["splits"][split]["shards"]:
    r = ArrayRecordReader(os.path.join(out, shard))
    recs += [records.unpack(b) for b in r.read_all()]
    r.close()
  return meta, recs


def write_video(path: str, frames: int = 24, size: tuple[int, int] = (48, 64), fps: int = 12,
                codec: str = "libx264", fmt: str | None = None) -> np.ndarray:
  """Writes a clip whose frame t has mean brightness ≈ 8t (so decoded frames can be told apart)."""
  h, w = size
  data = np.zeros((frames, h, w, 3), np.uint8)
  with av.open(path, "w", format=fmt) as c:
    s = c.add_stream(codec, rate=fps)
    s.width, s.height, s.pix_fmt = w, h, "yuv420p"
    for t in range(frames):
      data[t] = min(8 * t + 10, 250)
      data[t, : h // 4, : w // 4] = 255 - data[t, 0, 0]  # a corner patch, for orientation
      for p in s.encode(av.VideoFrame.from_ndarray(data[t], format="rgb24")):
        c.mux(p)
    for p in s.encode():
      c.mux(p)
  return data


def make_video_folder(root: str) -> dict[str, str]:
  """Good and broken files under root; returns {name: reason expected ('' = good)}."""
  os.makedirs(root, exist_ok=True)
  write_video(os.path.join(root, "good_a.mp4"))
  write_video(os.path.join(root, "good_b.mp4"), frames=40, size=(64, 48), fps=25)
  write_video(os.path.join(root, "short.mp4"), frames=3)
  open(os.path.join(root, "empty.mp4"), "wb").close()
  with open(os.path.join(root, "garbage.mp4"), "wb") as f:
    f.write(os.urandom(4096))
  write_video(os.path.join(root, "full.mp4"))
  blob = open(os.path.join(root, "full.mp4"), "rb").read()
  with open(os.path.join(root, "truncated.mp4"), "wb") as f:
    f.write(blob[: len(blob) // 2])
  os.remove(os.path.join(root, "full.mp4"))
  write_video(os.path.join(root, "m.avi"), codec="mpeg4", fmt="avi")
  blob = open(os.path.join(root, "m.avi"), "rb").read().replace(b"FMP4", b"ZZ9Q")  # a codec no one decodes
  with open(os.path.join(root, "weird_codec.avi"), "wb") as f:
    f.write(blob)
  os.remove(os.path.join(root, "m.avi"))
  return {"good_a.mp4": "", "good_b.mp4": "", "short.mp4": "too_short", "empty.mp4": "empty_file",
          "garbage.mp4": "corrupt", "truncated.mp4": "corrupt", "weird_codec.avi": "unsupported_codec",
          "missing.mp4": "missing_file"}
