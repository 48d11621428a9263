"""The video converter on real mp4 files made with PyAV, including every kind of broken input."""
import json
import os

import numpy as np
import pytest

from data import prepare, records
from tests.videos import make_video_folder, read_records


@pytest.fixture()
def folder(tmp_path):
  root = str(tmp_path / "videos")
  expected = make_video_folder(root)
  names = sorted(expected)
  with open(tmp_path / "train.csv", "w") as f:
    f.write("path,label\n")
    for i, name in enumerate(names):
      f.write(f"{name},{'walking' if i % 2 else 'jumping'}\n")
    f.write("only_one_field\n")  # malformed row
  return root, tmp_path, expected


def test_converts_good_videos_and_reports_every_bad_one(folder):
  root, tmp, expected = folder
  out = str(tmp / "rec")
  meta = prepare.main(["--root", root, "--split", f"train={tmp}/train.csv", "--out", out, "--max_frames", "16",
                       "--short_side", "32", "--min_frames", "8", "--clips_per_shard", "3", "--workers", "1"])
  assert meta["label_names"] == ["jumping", "walking"]
  _, recs = read_records(out, "train")
  assert sorted(r["id"] for r in recs) == ["good_a.mp4", "good_b.mp4"]
  a = next(r for r in recs if r["id"] == "good_a.mp4")
  assert len(a["frames"]) == 16 and a["src_frames"] == 24 and a["src_fps"] == 12
  frame = records.decode_jpeg(a["frames"][0])
  assert frame.shape == (32, 43, 3)  # short side 32, aspect kept (48x64 source)
  b = next(r for r in recs if r["id"] == "good_b.mp4")
  assert records.decode_jpeg(b["frames"][0]).shape == (43, 32, 3) and b["src_frames"] == 40
  brightness = [records.decode_jpeg(f)[20:, 20:].mean() for f in a["frames"]]
  assert np.all(np.diff(brightness) > 0)  # frames kept in time order, spread over the clip
  report = json.load(open(os.path.join(out, "report.json")))["train"]
  want = {}
  for reason in [r for r in expected.values() if r] + ["bad_annotation"]:
    want[reason] = want.get(reason, 0) + 1
  assert report["skipped"] == want and report["written"] == 2
  assert meta["frame_stats"]["frames"] == {"min": 16, "max": 16, "mean": 16}
  assert "--short_side 32" in meta["command"]
  assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_fps_sampling_json_captions_and_resume(folder, tmp_path):
  root, tmp, _ = folder
  ann = tmp / "caps.json"
  ann.write_text(json.dumps([{"video": "good_b.mp4", "caption": ["a person jumps", "someone jumping"]},
                             {"video": "good_a.mp4", "caption": "a walk"}]))
  out = str(tmp / "rec2")
  args = ["--root", root, "--split", f"train={ann}", "--out", out, "--fps", "5", "--max_frames", "100",
          "--short_side", "0", "--clips_per_shard", "1", "--workers", "2"]
  prepare.main(args)
  meta, recs = read_records(out, "train")
  b = next(r for r in recs if r["id"] == "good_b.mp4")
  assert b["captions"] == ["a person jumps", "someone jumping"] and b["label"] == -1
  assert len(b["frames"]) == 8 and abs(b["fps"] - 5.0) < 0.3  # 40 frames at 25 fps -> 1.6 s at 5 fps
  assert records.decode_jpeg(b["frames"][0]).shape == (64, 48, 3)  # --short_side 0 keeps the size
  shards = [os.path.join(out, s) for s in meta["splits"]["train"]["shards"]]
  mtimes = [os.path.getmtime(s) for s in shards]
  os.remove(shards[1])  # as if the run died before this shard finished
  os.remove(shards[1] + ".json")
  prepare.main(args)
  assert os.path.getmtime(shards[0]) == mtimes[0]  # finished shard skipped
  assert os.path.isfile(shards[1])
  _, again = read_records(out, "train")
  assert [r["id"] for r in again] == [r["id"] for r in recs]


def test_fatal_input_errors(folder):
  root, tmp, _ = folder
  with pytest.raises(FileNotFoundError, match="is not a directory"):
    prepare.main(["--root", str(tmp / "nope"), "--split", f"train={tmp}/train.csv", "--out", str(tmp / "o")])
  (tmp / "empty.csv").write_text("")
  with pytest.raises(ValueError, match="empty.csv' is empty"):
    prepare.main(["--root", root, "--split", f"train={tmp}/empty.csv", "--out", str(tmp / "o")])
  (tmp / "cols.csv").write_text("path,label,duration\na.mp4,1,3\n")
  with pytest.raises(ValueError, match=r"unknown column\(s\) \['duration'\]"):
    prepare.main(["--root", root, "--split", f"train={tmp}/cols.csv", "--out", str(tmp / "o")])
  (tmp / "nopath.csv").write_text("label,caption\n1,x\n")
  with pytest.raises(ValueError, match="no 'path' column"):
    prepare.main(["--root", root, "--split", f"train={tmp}/nopath.csv", "--out", str(tmp / "o")])
  with pytest.raises(ValueError, match="expected NAME=ANNOTATION_FILE"):
    prepare.main(["--root", root, "--split", f"{tmp}/train.csv", "--out", str(tmp / "o")])
  assert not os.path.exists(tmp / "o" / "metadata.json")


def test_select_frames():
  np.testing.assert_array_equal(prepare.select_frames(10, 30, 16, None), np.arange(10))
  np.testing.assert_array_equal(prepare.select_frames(100, 30, 5, None), [0, 25, 50, 74, 99])
  np.testing.assert_array_equal(prepare.select_frames(30, 30, 100, 10), np.arange(0, 30, 3))
