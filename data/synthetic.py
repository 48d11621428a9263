"""A built-in synthetic video dataset: procedural, deterministic from a seed, thousands of clips in seconds.

Each clip is a textured background with one primary object and 0-2 small static distractors. Temporal classes
are defined by the primary object's motion (direction of translation, sense of rotation, growing vs shrinking,
appearing vs disappearing): their single frames have the same distribution, so one frame cannot tell them
apart. Appearance classes are defined by the shape of a bouncing primary object drawn from a shape family that
temporal clips never use, so one frame suffices. Every clip gets a templated caption. Clips are written
through the same shard writer as real videos.

  python -m data.synthetic --out /tmp/synth --train 2000 --val 300 --test 300 --frames 16 --size 64
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from typing import Sequence

import numpy as np

from data import records, writer
from data.prepare import write_metadata
from umt_jax.descriptions import write_descriptions

TEMPORAL = ("move_left", "move_right", "move_up", "move_down", "rotate_cw", "rotate_ccw", "grow", "shrink",
            "appear", "disappear")
APPEARANCE = ("circle", "cross", "frame", "ring")
DEFAULT_CLASSES = ("move_left", "move_right", "rotate_cw", "rotate_ccw", "grow", "shrink") + APPEARANCE
TEMPORAL_SHAPES = ("square", "triangle", "bar")  # primaries of temporal clips, and distractors
COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240), "yellow": (240, 220, 40),
           "magenta": (220, 50, 220), "cyan": (40, 220, 230), "white": (245, 245, 245), "orange": (250, 140, 20)}
PHRASE = {"move_left": "moving left", "move_right": "moving right", "move_up": "moving up",
          "move_down": "moving down", "rotate_cw": "rotating clockwise", "rotate_ccw": "rotating anticlockwise",
          "grow": "growing", "shrink": "shrinking", "appear": "appearing", "disappear": "disappearing"}
TEXTURES = ("striped", "checkered", "noisy", "wavy")
# MSTA: the class text its prompts use ("a video of {}") and per-class descriptions (ETL4Video format,
# umt_jax/descriptions.py): spatial = appearance and background, temporal = the motion's sub-steps in order.
CLASS_TEXT = {**PHRASE, **{s: f"{s} bouncing" for s in APPEARANCE}}
SHAPE_TEXT = {"circle": "a round filled circle", "cross": "a plus-shaped cross", "frame": "a hollow square frame",
              "ring": "a hollow round ring"}
DESCRIPTION_COUNTS = (2, 4)
_END = {"left": "left", "right": "right", "up": "top", "down": "bottom"}
_START = {"left": "right", "right": "left", "up": "bottom", "down": "top"}


def _sub_steps(cls: str) -> list[str]:
  """Four ordered sub-steps of a class's motion."""
  if cls.startswith("move_"):
    d = cls[5:]
    return [f"the shape starts near the {_START[d]}", f"the shape moves {d}", f"the shape keeps moving {d}",
            f"the shape ends near the {_END[d]}"]
  if cls.startswith("rotate_"):
    sense = PHRASE[cls].split()[1]
    return ["the shape starts at an angle", f"the shape turns {sense}", f"the shape keeps turning {sense}",
            "the shape ends turned further"]
  ramps = {"grow": ("small", "bigger", "large"), "shrink": ("large", "smaller", "small"),
           "appear": ("invisible", "more visible", "solid"), "disappear": ("solid", "fainter", "invisible")}
  if cls in ramps:
    a, b, c = ramps[cls]
    return [f"the shape starts {a}", f"the shape becomes {b}", f"the shape keeps becoming {b}", f"the shape ends {c}"]
  return ["the shape sits on one side", "the shape bounces sideways", "the shape bounces back",
          "the shape bounces again"]


def descriptions(classes: Sequence[str], n: int) -> tuple[list[list[str]], list[list[str]]]:
  """-> (spatial, temporal) sentences, n per class, in the ETL4Video wording."""
  pick = np.linspace(0, 3, n).round().astype(int)
  spatial, temporal = [], []
  for cls in classes:
    # In the captions' words (a text tower trained on them reads these); temporal classes all look alike.
    shape = cls if cls in APPEARANCE else "square, triangle or bar"
    look = [f"a large {shape}", f"a small {shape} next to a square", SHAPE_TEXT.get(cls, "a bar or a triangle"),
            f"a {shape} on a striped, checkered, noisy or wavy background"]
    spatial.append([f"A video about {look[i]}." for i in pick])
    temporal.append([f"A video of {CLASS_TEXT[cls]} generally involves the following step: {_sub_steps(cls)[i]}, "
                     "which is a sub-step." for i in pick])
  return spatial, temporal


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
  """Inside-test of a shape centred at 0 with size r, in rotated coordinates u (right), v (up)."""
  au, av_ = np.abs(u), np.abs(v)
  if shape == "circle":
    return u * u + v * v < r * r
  if shape == "ring":
    d = u * u + v * v
    return (d < r * r) & (d > (0.55 * r) ** 2)
  if shape == "square":
    return np.maximum(au, av_) < 0.8 * r
  if shape == "triangle":
    return (v >= -0.5 * r) & (v <= r - np.sqrt(3.0) * au)
  if shape == "bar":
    return (au < r) & (av_ < 0.3 * r)
  if shape == "cross":
    return ((au < r) & (av_ < 0.28 * r)) | ((au < 0.28 * r) & (av_ < r))
  if shape == "frame":  # a hollow square
    m = np.maximum(au, av_)
    return (m < 0.85 * r) & (m > 0.5 * r)
  raise ValueError(f"unknown shape {shape!r}")


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
  y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
  kind = TEXTURES[rng.integers(len(TEXTURES))]
  theta, freq = rng.uniform(0, np.pi), rng.uniform(3, 8)
  if kind == "striped":
    m = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * freq * (x * np.cos(theta) + y * np.sin(theta))))
  elif kind == "checkered":
    m = ((np.floor(x * freq) + np.floor(y * freq)) % 2).astype(np.float32)
  elif kind == "wavy":
    m = 0.5 + 0.5 * np.sin(2 * np.pi * freq * x + 2 * np.sin(2 * np.pi * 2 * y))
  else:
    m = rng.uniform(0, 1, (size, size)).astype(np.float32)
  c1, c2 = rng.uniform(20, 110, 3).astype(np.float32), rng.uniform(20, 110, 3).astype(np.float32)
  return c1 * (1 - m[..., None]) + c2 * m[..., None], kind


@dataclasses.dataclass
class _Object:
  shape: str
  colour: str
  cx: np.ndarray  # (T,) centre x, pixels
  cy: np.ndarray  # (T,) centre y (down)
  r: np.ndarray  # (T,) size
  angle: np.ndarray  # (T,) radians, anticlockwise
  alpha: np.ndarray  # (T,) opacity


def _primary(rng: np.random.Generator, cls: str, size: int, t: int) -> _Object:
  s = np.arange(t, dtype=np.float32)
  r0 = size * rng.uniform(0.17, 0.23)
  travel = size * 0.4
  ones = np.ones(t, np.float32)
  cx = cy = None
  angle = rng.uniform(0, 2 * np.pi) * ones
  alpha, r = ones.copy(), r0 * ones
  lo, hi = r0 + 1, size - r0 - 1
  if cls.startswith("move_"):
    step = travel / (t - 1)
    sign = -1 if cls in ("move_left", "move_up") else 1
    start = rng.uniform(lo + (travel if sign < 0 else 0), hi - (travel if sign > 0 else 0))
    path = start + sign * step * s
    other = rng.uniform(lo, hi) * ones
    cx, cy = (path, other) if cls in ("move_left", "move_right") else (other, path)
  elif cls.startswith("rotate_"):
    sign = -1 if cls == "rotate_cw" else 1  # clockwise on screen = decreasing angle (v points up)
    angle = angle + sign * np.deg2rad(20.0) * s
  elif cls in ("grow", "shrink"):
    small, big = size * 0.09, size * 0.26
    ramp = s / (t - 1)
    r = small + (big - small) * (ramp if cls == "grow" else 1 - ramp)
    lo, hi = big + 1, size - big - 1
  elif cls in ("appear", "disappear"):
    ramp = np.clip((s + 0.5 - 0.25 * t) / (0.5 * t), 0, 1)  # symmetric: appear and disappear frames look alike
    alpha = ramp if cls == "appear" else 1 - ramp
  else:  # appearance class: the class is the shape; it bounces in place
    amp, phase = size * 0.08, rng.uniform(0, 2 * np.pi)
    lo, hi = r0 + amp + 1, size - r0 - amp - 1
    cx = rng.uniform(lo, hi) + amp * np.sin(2 * np.pi * 2 * s / t + phase)
    angle = 0 * ones  # upright, so e.g. a frame never looks like a rotated temporal-family square
  if cx is None:
    cx = rng.uniform(lo, hi) * ones
  if cy is None:
    cy = rng.uniform(lo, hi) * ones
  shape = cls if cls in APPEARANCE else TEMPORAL_SHAPES[rng.integers(len(TEMPORAL_SHAPES))]
  colour = list(COLOURS)[rng.integers(len(COLOURS))]
  return _Object(shape, colour, cx, cy, r, angle, alpha)


def render_clip(seed: int, split: str, index: int, cls: str, size: int = 64, frames: int = 16,
                primary_mask: bool = False) -> tuple:
  """Deterministic clip -> (frames (T, size, size, 3) uint8, caption[, where the primary object is visible
  (T, size, size) bool, with `primary_mask`])."""
  rng = np.random.default_rng([seed, sum(map(ord, split)), index])
  bg, texture = _background(rng, size)
  objs = [_primary(rng, cls, size, frames)]
  ones = np.ones(frames, np.float32)
  for _ in range(rng.integers(0, 3)):  # small static distractors
    r = size * 0.07
    objs.append(_Object(TEMPORAL_SHAPES[rng.integers(len(TEMPORAL_SHAPES))], list(COLOURS)[rng.integers(8)],
                        rng.uniform(r, size - r) * ones, rng.uniform(r, size - r) * ones, r * ones,
                        rng.uniform(0, 2 * np.pi) * ones, 0.8 * ones))
  y, x = np.mgrid[0:size, 0:size].astype(np.float32)
  video = np.repeat(bg.astype(np.float32)[None], frames, axis=0)
  mask = np.zeros((frames, size, size), bool)
  for o in reversed(objs):  # primary drawn last, on top
    reach = float(o.r.max()) * 1.5 + 1  # a box holding the object in every frame
    y0, x0 = (max(0, int(np.floor(c.min() - reach))) for c in (o.cy, o.cx))
    y1, x1 = (min(size, int(np.ceil(c.max() + reach))) for c in (o.cy, o.cx))
    dx = x[None, y0:y1, x0:x1] - o.cx[:, None, None]
    dy = -(y[None, y0:y1, x0:x1] - o.cy[:, None, None])
    c, s = np.cos(o.angle)[:, None, None], np.sin(o.angle)[:, None, None]
    u, v = c * dx + s * dy, -s * dx + c * dy
    t_idx, yy, xx = np.nonzero(_shape_mask(o.shape, u, v, o.r[:, None, None]))
    yy, xx = yy + y0, xx + x0
    a = o.alpha[t_idx, None].astype(np.float32)
    video[t_idx, yy, xx] = video[t_idx, yy, xx] * (1 - a) + np.asarray(COLOURS[o.colour], np.float32) * a
    if o is objs[0]:
      mask[t_idx, yy, xx] = o.alpha[t_idx] > 0
  p = objs[0]
  size_word = "large" if p.r.mean() > size * 0.2 else "small"
  motion = PHRASE.get(cls, "bouncing")
  caption = f"a {size_word} {p.colour} {p.shape} {motion}"
  if len(objs) > 1:
    caption += " next to " + " and ".join(f"a {o.colour} {o.shape}" for o in objs[1:])
  caption += f" on a {texture} background"
  video = np.clip(video, 0, 255).astype(np.uint8)
  return (video, caption, mask) if primary_mask else (video, caption)


@dataclasses.dataclass
class SynthJob:
  path: str
  split: str
  start: int
  end: int
  seed: int
  classes: tuple[str, ...]
  side: int
  frames: int
  fps: float
  quality: int

  @property
  def size(self) -> int:
    return self.end - self.start


def _items(job: SynthJob):
  for i in range(job.start, job.end):
    label = i % len(job.classes)  # balanced classes
    frames, caption = render_clip(job.seed, job.split, i, job.classes[label], job.side, job.frames)
    rec = records.pack(frames, label=label, captions=[caption], id=f"synthetic/{job.split}/{i:07d}",
                       src_fps=job.fps, src_frames=job.frames, fps=job.fps, quality=job.quality)
    yield str(i), rec, None, {"height": job.side, "width": job.side, "frames": job.frames}


def synth_shard(job: SynthJob) -> dict:
  return writer.write_shard(job.path, _items(job))


def generate(out: str, counts: dict[str, int], *, seed: int = 0, classes: tuple[str, ...] = DEFAULT_CLASSES,
             size: int = 64, frames: int = 16, fps: float = 8.0, quality: int = 90, clips_per_shard: int = 500,
             workers: int = 1, command: str = "") -> dict:
  """Writes the splits in `counts` under `out` (ArrayRecord shards + metadata.json); returns the metadata."""
  unknown = [c for c in classes if c not in TEMPORAL + APPEARANCE]
  if unknown:
    raise ValueError(f"unknown synthetic classes {unknown}; choose from {TEMPORAL + APPEARANCE}")
  reports = {}
  with writer.exclusive_output(out):  # one run per folder; a killed run's temporary files are removed
    for split, n in counts.items():
      num_shards = max(1, -(-n // clips_per_shard))
      jobs = [SynthJob(os.path.join(out, writer.shard_name(split, i, num_shards)), split, a, b, seed,
                       tuple(classes), size, frames, fps, quality)
              for i, (a, b) in enumerate(writer.shard_ranges(n, num_shards))]
      reports[split] = writer.run_shard_jobs(synth_shard, jobs, workers, f"synthetic {split}")
    for n in DESCRIPTION_COUNTS:
      write_descriptions(os.path.join(out, "descriptions"), n, "synthetic", *descriptions(classes, n))
    extra = {"temporal_classes": [c for c in classes if c in TEMPORAL], "direction_sensitive": True,
             "synthetic": {"seed": seed, "size": size, "frames": frames, "fps": fps},
             "class_text": [CLASS_TEXT[c] for c in classes],
             "descriptions": {"dir": "descriptions", "dataset": "synthetic", "counts": list(DESCRIPTION_COUNTS)}}
    return write_metadata(out, reports, list(classes), command, extra)


def main(argv: list[str] | None = None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--out", required=True)
  ap.add_argument("--train", type=int, default=2000)
  ap.add_argument("--val", type=int, default=300)
  ap.add_argument("--test", type=int, default=300)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--size", type=int, default=64)
  ap.add_argument("--frames", type=int, default=16)
  ap.add_argument("--classes", default="default", help="'default', 'all', or a comma-separated list")
  ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
  args = ap.parse_args(argv)
  classes = {"default": DEFAULT_CLASSES, "all": TEMPORAL + APPEARANCE}.get(args.classes)
  classes = classes or tuple(c.strip() for c in args.classes.split(","))
  command = "python -m data.synthetic " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
  meta = generate(args.out, {"train": args.train, "val": args.val, "test": args.test}, seed=args.seed,
                  classes=classes, size=args.size, frames=args.frames, workers=args.workers, command=command)
  print(f"wrote {args.out}: " + ", ".join(f"{n} {m['num_records']}" for n, m in meta["splits"].items()))
  return meta


if __name__ == "__main__":
  main()
