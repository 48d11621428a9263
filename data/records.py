"""The record format: one clip per ArrayRecord record (group_size:1, random access), msgpack-encoded.

A record is a map:
  frames      list of JPEG bytes, the kept frames in time order
  label       int (-1 when the dataset has no labels)
  captions    list of str (empty when none)
  id          str, the source (video path relative to the root, or a synthetic id)
  fps         float, frame rate of the KEPT frames (original fps × kept / decoded)
  src_fps     float, original frame rate
  src_frames  int, frames decoded from the source
"""
from __future__ import annotations

import io
from typing import Any, Mapping

import msgpack
import simplejpeg
import numpy as np
from PIL import Image

FORMAT = "umt_jax.video_records/v1"


class CorruptRecord(ValueError):
  """A record whose bytes do not decode (msgpack, or one of its JPEG frames): bad data, not a bug."""


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


def decode_jpeg(data: bytes, min_size: int = 0) -> np.ndarray:
  """JPEG bytes -> (H, W, 3) uint8 (libjpeg-turbo through simplejpeg: a quarter of PIL's per-frame overhead).
  `min_size` > 0 decodes at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides >= it."""
  try:
    return simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=min_size, min_width=min_size)
  except ValueError as e:  # corrupt or truncated: libjpeg-turbo's message, e.g. "Premature end of JPEG file"
    raise CorruptRecord(f"JPEG frame of {len(data)} bytes does not decode: {e}") from e


def pack(frames: np.ndarray, *, label: int = -1, captions: list[str] = (), id: str, src_fps: float,
         src_frames: int, fps: float, quality: int = 90) -> bytes:
  """frames (T, H, W, 3) uint8 -> record bytes."""
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"{id}: frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
  return msgpack.packb({
      "frames": [encode_jpeg(f, quality) for f in frames], "label": int(label), "captions": list(captions),
      "id": id, "fps": float(fps), "src_fps": float(src_fps), "src_frames": int(src_frames),
      "height": int(frames.shape[1]), "width": int(frames.shape[2])}, use_bin_type=True)


def unpack(record: bytes | Mapping[str, Any]) -> dict:
  """Record bytes (ArrayRecord) or a TFDS example dict -> the record map."""
  if isinstance(record, Mapping):  # TFDS data source: features already decoded into a dict
    out = dict(record)
    out["frames"] = list(out["frames"])
    out["captions"] = [c.decode() if isinstance(c, bytes) else str(c) for c in out.get("captions", [])]
    out["id"] = out["id"].decode() if isinstance(out["id"], bytes) else str(out["id"])
    return out
  try:
    return msgpack.unpackb(record, raw=False)
  except ValueError as e:  # msgpack's unpack errors are ValueErrors
    raise CorruptRecord(f"record of {len(record)} bytes is not msgpack: {e}") from e
