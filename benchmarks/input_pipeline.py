"""Clips/s per worker process: pre-decoded JPEG records (this pipeline) vs decoding mp4 inside the loop.

  python benchmarks/input_pipeline.py [--clips 16 --frames 250 --height 360 --width 480]

Both paths produce the same training clip (UMT pretraining: 8 segment-sampled frames, multi-scale crop to
224², flip) from the same source videos, in one thread of one process (PyAV decoding pinned to one thread),
so the numbers are per core. (b) is what the official loader does with decord: open the mp4 and decode up to
the last sampled frame (seeks still decode from the previous keyframe). (a) reads the records that
`data.prepare` made from the same mp4s (64 frames kept, short side 256, JPEG q90) and decodes only the
sampled frames, at a reduced JPEG scale where the crop allows.
"""
from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time

import av
import grain
import numpy as np

from data import prepare, synthetic
from umt_jax import input_pipeline as ip
from umt_jax import video_transforms as vt


def make_videos(root: str, clips: int, frames: int, height: int, width: int, fps: int) -> str:
  """Synthetic clips rendered at full size and encoded as H.264 mp4; returns the annotation CSV."""
  rows = []
  for i in range(clips):
    cls = synthetic.DEFAULT_CLASSES[i % len(synthetic.DEFAULT_CLASSES)]
    video, _ = synthetic.render_clip(0, "bench", i, cls, size=max(height, width), frames=frames)
    name = f"clip{i:03d}.mp4"
    with av.open(os.path.join(root, name), "w") as c:
      s = c.add_stream("libx264", rate=fps)
      s.width, s.height, s.pix_fmt = width, height, "yuv420p"
      for frame in video[:, :height, :width]:
        for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
          c.mux(p)
      for p in s.encode():
        c.mux(p)
    rows.append((name, cls))
  path = os.path.join(root, "train.csv")
  with open(path, "w", newline="") as f:
    csv.writer(f).writerows([("path", "label"), *rows])
  return path


def mp4_clip(path: str, spec: ip.ClipSpec, rng: np.random.Generator) -> np.ndarray:
  """The in-loop baseline: decode with PyAV (one thread), segment-sample, multi-scale crop, flip."""
  with av.open(path) as c:
    stream = c.streams.video[0]
    stream.thread_type, stream.codec_context.thread_count = "SLICE", 1
    n = stream.frames
    idx = vt.segment_indices(n, spec.num_frames, rng)
    wanted, got = set(int(i) for i in idx), {}
    for t, frame in enumerate(c.decode(stream)):
      if t in wanted:
        got[t] = frame.to_ndarray(format="rgb24")
      if t >= idx.max():
        break
  frames = np.stack([got[int(i)] for i in idx])
  video = vt.crop_resize(frames, vt.multi_scale_crop_box(*frames.shape[1:3], spec.size, rng), spec.size)
  return video[:, :, ::-1] if spec.flip and rng.random() < 0.5 else video


def rate(fn, n: int) -> float:
  fn(0)  # warm-up
  t0 = time.perf_counter()
  for i in range(n):
    fn(i)
  return n / (time.perf_counter() - t0)


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--clips", type=int, default=16)
  ap.add_argument("--frames", type=int, default=250, help="source frames per video (10 s at 25 fps)")
  ap.add_argument("--height", type=int, default=360)
  ap.add_argument("--width", type=int, default=480)
  ap.add_argument("--iters", type=int, default=48, help="clips timed per path")
  args = ap.parse_args()
  spec = ip.ClipSpec(num_frames=8, sampling="segment", size=224, crop="multiscale", flip=True)
  with tempfile.TemporaryDirectory() as tmp:
    ann = make_videos(tmp, args.clips, args.frames, args.height, args.width, 25)
    out = os.path.join(tmp, "records")
    prepare.main(["--root", tmp, "--split", f"train={ann}", "--out", out, "--workers", "1",
                  "--clips_per_shard", str(args.clips)])
    ds = grain.MapDataset.source(ip.open_source(out, "train")).seed(0).random_map(ip.TrainClip(spec))
    videos = sorted(f for f in os.listdir(tmp) if f.endswith(".mp4"))
    rng = np.random.default_rng(0)
    assert ds[0]["video"].shape == mp4_clip(os.path.join(tmp, videos[0]), spec, rng).shape
    rec = rate(lambda i: ds[i % len(ds)], args.iters)
    mp4 = rate(lambda i: mp4_clip(os.path.join(tmp, videos[i % len(videos)]), spec, rng), args.iters)
  src = f"{args.width}x{args.height}, {args.frames} frames, H.264"
  print(f"\n| path | source | clips/s per worker |\n|---|---|---|")
  print(f"| (a) JPEG-frame ArrayRecord + grain random_map | 64 frames, short side 256, q90 | {rec:.1f} |")
  print(f"| (b) PyAV decode in the loop | {src} | {mp4:.1f} |")
  print(f"| speed-up (a)/(b) | | {rec / mp4:.1f}x |")


if __name__ == "__main__":
  main()
