"""Temporal sampling and crops, against the official loaders' formulas (hand-computed cases)."""
import numpy as np
import pytest

from umt_jax import video_transforms as vt


def test_segment_indices_one_per_segment():
  rng = np.random.default_rng(0)
  for n in (8, 16, 61, 300):
    for _ in range(50):
      idx = vt.segment_indices(n, 8, rng)
      avg = n // 8
      assert np.all(idx // avg == np.arange(8)) if avg else True
  np.testing.assert_array_equal(vt.segment_indices(5, 8, rng), np.zeros(8))  # official: too short -> zeros
  short = vt.segment_indices(12, 8, rng)  # avg 1: every frame of the first 8
  np.testing.assert_array_equal(short, np.arange(8))


def test_sparse_indices_test_views_match_official():
  # kinetics_sparse._get_seq_frames(300, 8, clip_idx=c) with test_num_segment=4, computed by hand:
  # seg = 299/8 = 37.375; starts = round(37.375 i); offset = int(37.375/5 * (c+1))
  seg = 299 / 8
  for c in range(4):
    want = [min(int(round(seg * i)) + int(seg / 5 * (c + 1)), 299) for i in range(8)]
    np.testing.assert_array_equal(vt.sparse_indices(300, 8, None, c, 4), want)
  rng = np.random.default_rng(1)
  for _ in range(100):
    idx = vt.sparse_indices(300, 8, rng)
    starts = np.round(seg * np.arange(8))
    ends = np.round(seg * np.arange(1, 9))
    assert np.all((idx >= starts) & (idx <= ends))


def test_dense_indices():
  np.testing.assert_array_equal(vt.dense_indices(100, 4, 4, None, clip_idx=0, num_clips=3), [0, 4, 8, 12])
  np.testing.assert_array_equal(vt.dense_indices(100, 4, 4, None, clip_idx=2, num_clips=3), [84, 88, 92, 96])
  np.testing.assert_array_equal(vt.dense_indices(10, 4, 4, None, clip_idx=0), [0, 4, 8, 8])  # repeats at the end
  rng = np.random.default_rng(2)
  for _ in range(50):
    idx = vt.dense_indices(64, 16, 4, rng)
    assert np.all(np.diff(idx) == 4) and idx[0] == 0
    idx = vt.dense_indices(100, 8, 2, rng)
    assert np.all(np.diff(idx) == 2) and 0 <= idx[0] <= 84


def test_multi_scale_crop_boxes_are_the_official_candidates():
  rng = np.random.default_rng(3)
  h, w, size = 256, 340, 224
  sides = [224 if abs(int(256 * s) - 224) < 3 else int(256 * s) for s in (1, 0.875, 0.75, 0.66)]
  seen = set()
  for _ in range(500):
    y, x, ch, cw = vt.multi_scale_crop_box(h, w, size, rng)
    i, j = sides.index(ch), sides.index(cw)
    assert abs(i - j) <= 1
    hs, ws = (h - ch) // 4, (w - cw) // 4
    assert y in {0, hs, 2 * hs, 3 * hs, 4 * hs} and x in {0, ws, 2 * ws, 3 * ws, 4 * ws}
    if hs and ws:
      seen.add((y // hs, x // ws))
  assert seen == {(0, 0), (0, 4), (4, 0), (4, 4), (2, 2), (2, 0), (2, 4), (4, 2), (0, 2), (1, 1), (1, 3), (3, 1),
                  (3, 3)}  # the 13 fixed offsets, all used


def test_random_resized_crop_and_views():
  rng = np.random.default_rng(4)
  for _ in range(200):
    y, x, ch, cw = vt.random_resized_crop_box(60, 80, rng)
    assert 0 <= y and y + ch <= 60 and 0 <= x and x + cw <= 80 and ch > 0 and cw > 0
  frames = np.random.default_rng(5).integers(0, 255, (3, 48, 64, 3), dtype=np.uint8)
  out = vt.crop_resize(frames, (4, 8, 32, 40), 16)
  assert out.shape == (3, 16, 16, 3) and out.dtype == np.uint8
  views = vt.spatial_crops(frames, 32, 3)
  assert views.shape == (3, 3, 32, 32, 3)
  resized = vt.resize_short_side(frames, 32)
  np.testing.assert_array_equal(views[0], resized[:, :, :32])
  np.testing.assert_array_equal(views[2], resized[:, :, -32:])
  assert vt.spatial_crops(frames, 32, 1).shape == (1, 3, 32, 32, 3)


def _bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) matrix of an antialiased bilinear resize: the triangle filter widened by the scale when
  shrinking, pixel centres at +0.5 (what PIL's BILINEAR computes, in float)."""
  scale = n_in / n_out
  support = max(scale, 1.0)
  w = np.maximum(0.0, 1.0 - np.abs(np.arange(n_in)[None] + 0.5 - (np.arange(n_out)[:, None] + 0.5) * scale) / support)
  return w / w.sum(axis=1, keepdims=True)


def test_resize_is_antialiased_bilinear_and_crop_resize_crops_first():
  frames = np.random.default_rng(0).integers(0, 256, (2, 40, 37, 3), dtype=np.uint8)
  for oh, ow in ((32, 32), (64, 50), (40, 37), (9, 13)):
    want = np.einsum("yh,xw,thwc->tyxc", _bilinear_weights(40, oh), _bilinear_weights(37, ow), frames.astype(float))
    assert np.abs(vt.resize(frames, oh, ow).astype(int) - want).max() < 1.5  # PIL rounds after each pass
  box = (3, 5, 30, 24)
  np.testing.assert_array_equal(vt.crop_resize(frames, box, 16), vt.resize(frames[:, 3:33, 5:29].copy(), 16, 16))
  np.testing.assert_array_equal(vt.crop_resize(frames, (3, 5, 16, 16), 16), frames[:, 3:19, 5:21])


