"""The synthetic dataset: determinism, class semantics (temporal vs appearance), captions, the writer path."""
import json
import os

import numpy as np
import pytest

from data import records, synthetic


def test_deterministic_and_split_dependent():
  a, ca = synthetic.render_clip(0, "train", 5, "move_left")
  b, cb = synthetic.render_clip(0, "train", 5, "move_left")
  np.testing.assert_array_equal(a, b)
  assert ca == cb and "moving left" in ca
  c, _ = synthetic.render_clip(0, "val", 5, "move_left")
  d, _ = synthetic.render_clip(1, "train", 5, "move_left")
  assert not np.array_equal(a, c) and not np.array_equal(a, d)
  assert a.shape == (16, 64, 64, 3) and a.dtype == np.uint8
  # the primary object's mask (vid-TLDR's object-drop count): the same clip, the pixels that moved left
  m_video, _, mask = synthetic.render_clip(0, "train", 5, "move_left", primary_mask=True)
  np.testing.assert_array_equal(m_video, a)
  assert mask.shape == (16, 64, 64) and mask.any(axis=(1, 2)).all()
  xs = [np.nonzero(f)[1].mean() for f in mask]
  assert xs[-1] < xs[0] - 10


def test_class_catalogue_is_at_least_half_temporal():
  for classes in (synthetic.DEFAULT_CLASSES, synthetic.TEMPORAL + synthetic.APPEARANCE):
    assert sum(c in synthetic.TEMPORAL for c in classes) * 2 >= len(classes)


@pytest.mark.parametrize("pair,attr", [(("move_left", "move_right"), "cx"), (("move_up", "move_down"), "cy"),
                                       (("grow", "shrink"), "r"), (("appear", "disappear"), "alpha")])
def test_temporal_pairs_differ_in_time_but_not_in_single_frames(pair, attr):
  """Single-frame statistics of the two classes agree; their temporal trends are opposite."""
  stats = {}
  for cls in pair:
    rng = np.random.default_rng(0)
    objs = [synthetic._primary(rng, cls, 64, 16) for _ in range(3000)]
    vals = np.stack([getattr(o, attr) for o in objs])  # (N, T)
    frame = vals[np.arange(len(vals)), rng.integers(16, size=len(vals))]
    stats[cls] = (frame.mean(), frame.std(), np.sign(vals[:, -1] - vals[:, 0]).mean())
  (m0, s0, d0), (m1, s1, d1) = stats[pair[0]], stats[pair[1]]
  assert abs(m0 - m1) < 0.06 * (s0 + s1) + 1e-3 and abs(s0 - s1) < 0.1 * (s0 + s1) + 1e-3
  assert d0 == -d1 and abs(d0) == 1


def test_rotation_sense_and_appearance_shapes():
  rng = np.random.default_rng(0)
  cw, ccw = synthetic._primary(rng, "rotate_cw", 64, 16), synthetic._primary(rng, "rotate_ccw", 64, 16)
  assert np.all(np.diff(cw.angle) < 0) and np.all(np.diff(ccw.angle) > 0)
  for shape in synthetic.APPEARANCE:
    assert synthetic._primary(rng, shape, 64, 16).shape == shape
    assert shape not in synthetic.TEMPORAL_SHAPES
  assert synthetic._primary(rng, "grow", 64, 16).shape in synthetic.TEMPORAL_SHAPES


def test_generate_writes_records_through_the_shared_writer(tmp_path):
  meta = synthetic.generate(str(tmp_path), {"train": 30, "test": 10}, size=32, frames=8, clips_per_shard=16)
  assert meta["splits"]["train"]["num_records"] == 30 and len(meta["splits"]["train"]["shards"]) == 2
  assert meta["label_names"] == list(synthetic.DEFAULT_CLASSES)
  assert meta["temporal_classes"] == [c for c in synthetic.DEFAULT_CLASSES if c in synthetic.TEMPORAL]
  assert meta["direction_sensitive"] is True
  from array_record.python.array_record_module import ArrayRecordReader
  r = ArrayRecordReader(os.path.join(tmp_path, meta["splits"]["test"]["shards"][0]))
  rec = records.unpack(r.read([3])[0])
  r.close()
  assert rec["label"] == 3 and len(rec["frames"]) == 8 and rec["captions"][0].startswith("a ")
  frames, caption = synthetic.render_clip(0, "test", 3, synthetic.DEFAULT_CLASSES[3], 32, 8)
  assert rec["captions"] == [caption]
  for stored, rendered in zip(rec["frames"], frames):  # the record holds exactly the JPEG of the rendered frame
    np.testing.assert_array_equal(records.decode_jpeg(stored), records.decode_jpeg(records.encode_jpeg(rendered, 90)))
  with pytest.raises(ValueError, match="unknown synthetic classes"):
    synthetic.generate(str(tmp_path / "x"), {"train": 1}, classes=("dance",))
  assert json.load(open(tmp_path / "report.json"))["train"]["written"] == 30
