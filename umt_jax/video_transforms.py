"""Temporal sampling and spatial augmentation of clips (numpy; PIL for the resize), following the official loaders.

Index functions return 0-based frame indices into the stored frames. `rng` is a numpy Generator (grain's
random_map hands one per element, derived from the pipeline seed and the element index).
"""
from __future__ import annotations

import numpy as np
from PIL import Image


# ----------------------------------------------------------------------------- temporal sampling
def segment_indices(n: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
  """UMT pretraining (TSN, `mae.py::_sample_train_indices` with sparse sampling): one random frame from each
  of `num_segments` equal segments; shorter videos as the official code (sorted random, or all zeros)."""
  avg = n // num_segments
  if avg > 0:
    return np.arange(num_segments) * avg + rng.integers(avg, size=num_segments)
  if n > num_segments:
    return np.sort(rng.integers(n, size=num_segments))
  return np.zeros(num_segments, np.int64)


def middle_indices(n: int, num_frames: int) -> np.ndarray:
  """Stage-2 test sampling (`video_utils.get_frame_indices`, 'middle'): the middle frame of each of `num_frames`
  equal segments (segment bounds `linspace(0, n, T+1)` cast to int)."""
  bounds = np.linspace(0, n, num_frames + 1).astype(np.int64)
  return (bounds[:-1] + bounds[1:] - 1) // 2


def sparse_indices(n: int, num_frames: int, rng: np.random.Generator | None = None, clip_idx: int = -1,
                   num_clips: int = 1) -> np.ndarray:
  """Fine-tuning (`kinetics_sparse.py::_get_seq_frames`): train (clip_idx -1) draws a random frame in each of
  `num_frames` segments (bounds inclusive); test takes clip `clip_idx` of `num_clips` evenly offset views."""
  seg = max(0.0, (n - 1) / num_frames)
  starts = np.round(seg * np.arange(num_frames)).astype(np.int64)
  if clip_idx == -1:
    ends = np.round(seg * np.arange(1, num_frames + 1)).astype(np.int64)
    idx = np.array([rng.integers(s, e + 1) for s, e in zip(starts, ends)])
  else:
    idx = starts + int(seg / (num_clips + 1) * (clip_idx + 1))
  return np.minimum(idx, n - 1)


def dense_indices(n: int, num_frames: int, stride: int, rng: np.random.Generator | None = None,
                  clip_idx: int = -1, num_clips: int = 1) -> np.ndarray:
  """VideoMAE dense sampling: `num_frames` frames `stride` apart from a random start (train) or from starts
  spread evenly over the video (test); past the end the last reachable frame repeats, as the official loop."""
  span = num_frames * stride
  if clip_idx == -1:
    start = int(rng.integers(n - span + 1)) if n >= span else 0
  else:
    start = int(max(n - span, 0) / max(num_clips - 1, 1) * clip_idx)
  idx, cur = [], start
  for _ in range(num_frames):
    idx.append(min(cur, n - 1))
    if cur + stride < n:
      cur += stride
  return np.array(idx, np.int64)


# ----------------------------------------------------------------------------- spatial augmentation
Box = tuple[int, int, int, int]  # (y, x, h, w)


def multi_scale_crop_box(h: int, w: int, size: int, rng: np.random.Generator,
                         scales: tuple[float, ...] = (1, 0.875, 0.75, 0.66), max_distort: int = 1,
                         more_fix_crop: bool = True) -> Box:
  """UMT pretraining's `GroupMultiScaleCrop(fix_crop=True)`: crop sides are scales × the short side (snapped to
  `size` within 3 px), aspect distortion ≤ max_distort scale steps, at one of 13 fixed offsets."""
  base = min(h, w)
  sides = [int(base * s) for s in scales]
  snap = [size if abs(s - size) < 3 else s for s in sides]
  pairs = [(ch, cw) for i, ch in enumerate(snap) for j, cw in enumerate(snap) if abs(i - j) <= max_distort]
  ch, cw = pairs[rng.integers(len(pairs))]
  ws, hs = (w - cw) // 4, (h - ch) // 4
  offsets = [(0, 0), (0, 4 * ws), (4 * hs, 0), (4 * hs, 4 * ws), (2 * hs, 2 * ws)]
  if more_fix_crop:
    offsets += [(2 * hs, 0), (2 * hs, 4 * ws), (4 * hs, 2 * ws), (0, 2 * ws), (hs, ws), (hs, 3 * ws), (3 * hs, ws),
                (3 * hs, 3 * ws)]
  y, x = offsets[rng.integers(len(offsets))]
  return y, x, ch, cw


def random_resized_crop_box(h: int, w: int, rng: np.random.Generator, scale: tuple[float, float] = (0.08, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Box:
  """torchvision's RandomResizedCrop box (10 tries, then a centre crop with the ratio clamped)."""
  area = h * w
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    cw, ch = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      return int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1)), ch, cw
  in_ratio = w / h
  if in_ratio < ratio[0]:
    cw, ch = w, int(round(w / ratio[0]))
  elif in_ratio > ratio[1]:
    ch, cw = h, int(round(h * ratio[1]))
  else:
    cw, ch = w, h
  return (h - ch) // 2, (w - cw) // 2, ch, cw


def resize(frames: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """(T, H, W, 3) uint8 -> (T, out_h, out_w, 3) uint8: PIL's BILINEAR resize of each frame (antialiased when
  shrinking, as the official loaders' PIL transforms). PIL's C loop is 8× a float32 separable matmul of the
  same resize here, and uses no BLAS threads in the workers."""
  if frames.shape[1:3] == (out_h, out_w):
    return frames
  out = np.empty((frames.shape[0], out_h, out_w, frames.shape[3]), np.uint8)
  for i, frame in enumerate(frames):
    image = Image.fromarray(np.ascontiguousarray(frame))
    out[i] = np.asarray(image.resize((out_w, out_h), Image.Resampling.BILINEAR))
  return out


def crop_resize(frames: np.ndarray, box: Box, size: int) -> np.ndarray:
  """(T, H, W, 3) uint8 -> (T, size, size, 3): the same crop on every frame, then the bilinear resize (cropped
  first, as the official loaders do: PIL's own `box` argument would let the filter read pixels outside it)."""
  y, x, ch, cw = box
  return resize(frames[:, y:y + ch, x:x + cw], size, size)


def resize_short_side(frames: np.ndarray, size: int) -> np.ndarray:
  """(T, H, W, 3) -> short side = size, aspect kept (bilinear)."""
  h, w = frames.shape[1:3]
  if min(h, w) == size:
    return frames
  s = size / min(h, w)
  return resize(frames, max(size, int(round(h * s))), max(size, int(round(w * s))))


def spatial_crops(frames: np.ndarray, size: int, num_crops: int) -> np.ndarray:
  """Test-time views: resize the short side to `size`, then `num_crops` (1: centre; 3: start/centre/end along
  the long side) size×size crops -> (num_crops, T, size, size, 3)."""
  frames = resize_short_side(frames, size)
  h, w = frames.shape[1:3]
  long_h = h > w
  extent = (h if long_h else w) - size
  starts = [extent // 2] if num_crops == 1 else [int(round(extent * i / (num_crops - 1))) for i in range(num_crops)]
  crops = [frames[:, s:s + size, (w - size) // 2:(w - size) // 2 + size] if long_h
           else frames[:, (h - size) // 2:(h - size) // 2 + size, s:s + size] for s in starts]
  return np.stack(crops)
