"""The converter on image-text data: every PIL mode, EXIF rotation, animations, the annotation formats, hostile
files, and the records read back by the input pipeline as 1-frame clips."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from data import prepare, records
from tests.videos import read_records, write_video


def _read_all(out, split):
  meta, recs = read_records(out, split)
  return meta, {r["id"]: r for r in recs}


def _frame(rec):
  assert len(rec["frames"]) == 1 and rec["fps"] == 0 and rec["src_fps"] == 0 and rec["src_frames"] == 1
  return records.decode_jpeg(rec["frames"][0]).astype(int)


def make_image_folder(root: str) -> dict[str, tuple[int, int]]:
  """Good images of every kind under root; returns {name: stored (h, w) at --short_side 32}."""
  os.makedirs(root, exist_ok=True)
  p = lambda name: os.path.join(root, name)
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 255, (40, 60, 3), np.uint8)).save(p("rgb.jpg"))
  Image.fromarray(np.full((48, 32), 100, np.uint8)).save(p("gray.png"))
  Image.new("CMYK", (64, 32), (0, 0, 0, 0)).save(p("cmyk.jpg"))  # no ink: white
  rgba = np.zeros((32, 32, 4), np.uint8)
  rgba[:, :16] = (255, 0, 0, 255)  # left half opaque red, right half fully transparent
  Image.fromarray(rgba).save(p("rgba.png"))
  Image.fromarray(np.full((32, 40), 40000, np.uint16)).save(p("i16.png"))  # 16-bit grey: 40000 >> 8 = 156
  pal = Image.new("P", (32, 32), 1)
  pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
  pal.paste(0, (16, 0, 32, 32))
  pal.save(p("pal.png"), transparency=0)  # left green, right transparent
  stored = np.zeros((80, 160, 3), np.uint8)
  stored[:20, :40] = 255  # a top-left patch, to see the rotation (decoded at 1/2 scale: PIL's draft)
  exif = Image.Exif()
  exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
  Image.fromarray(stored).save(p("exif.jpg"), exif=exif.tobytes())
  for ext in ("gif", "webp"):
    first, second = Image.new("RGB", (32, 32), (255, 0, 0)), Image.new("RGB", (32, 32), (0, 0, 255))
    first.save(p(f"anim.{ext}"), save_all=True, append_images=[second], duration=100, loop=0)
  Image.new("RGB", (32, 32), (0, 0, 200)).save(p("blue.BMP"))
  Image.new("RGB", (36, 32), (0, 200, 0)).save(p("green.tiff"))
  write_video(p("clip.mp4"))
  return {"rgb.jpg": (32, 48), "gray.png": (48, 32), "cmyk.jpg": (32, 64), "rgba.png": (32, 32),
          "i16.png": (32, 40), "pal.png": (32, 32), "exif.jpg": (64, 32), "anim.gif": (32, 32),
          "anim.webp": (32, 32), "blue.BMP": (32, 32), "green.tiff": (32, 36)}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """One run over four splits: a JSON list (all images + a video), COCO JSON, CSV and CC3M-style TSV."""
  tmp = tmp_path_factory.mktemp("images")
  root = str(tmp / "media")
  sizes = make_image_folder(root)
  items = [{"image": n, "caption": [f"{n} one", f"{n} two"]} for n in sorted(sizes)]
  items += [{"video": "clip.mp4", "caption": "a clip", "id": 7}]
  (tmp / "list.json").write_text(json.dumps(items))
  coco = {"images": [{"id": 1, "file_name": "rgb.jpg"}, {"id": 2, "file_name": "gray.png"},
                     {"id": 3, "file_name": "exif.jpg"}],
          "annotations": [{"image_id": 2, "caption": "grey a"}, {"image_id": 1, "caption": "rgb a"},
                          {"image_id": 2, "caption": "grey b\n"}, {"image_id": 9, "caption": "no such image"},
                          {"image_id": 1}]}
  (tmp / "coco.json").write_text(json.dumps(coco))
  (tmp / "list.csv").write_text('path,caption\ncmyk.jpg,"white, empty"\ni16.png,grey sixteen\n')
  (tmp / "cc3m.tsv").write_text('a "quoted" red gif\tanim.gif\nblue square\tblue.BMP\n')
  out = str(tmp / "rec")
  meta = prepare.main(["--root", root, "--split", f"train={tmp}/list.json", "--split", f"coco={tmp}/coco.json",
                       "--split", f"csv={tmp}/list.csv", "--split", f"cc3m={tmp}/cc3m.tsv", "--out", out,
                       "--short_side", "32", "--min_frames", "8", "--workers", "1"])
  return out, meta, sizes


def test_every_image_kind_becomes_an_rgb_frame(converted):
  out, meta, sizes = converted
  _, recs = _read_all(out, "train")
  assert sorted(recs) == sorted([*sizes, "clip.mp4"])
  for name, size in sizes.items():
    assert _frame(recs[name]).shape == (*size, 3), name
    assert recs[name]["captions"] == [f"{name} one", f"{name} two"] and recs[name]["label"] == -1
    assert (recs[name]["height"], recs[name]["width"]) == size
  assert abs(_frame(recs["gray.png"]) - 100).max() <= 2
  assert _frame(recs["cmyk.jpg"]).min() >= 250
  rgba = _frame(recs["rgba.png"])
  assert np.abs(rgba[:, :12] - (255, 0, 0)).max() < 40 and rgba[:, 20:].min() > 240  # alpha: on white
  assert abs(_frame(recs["i16.png"]) - 156).max() <= 2
  pal = _frame(recs["pal.png"])
  assert np.abs(pal[:, :12] - (0, 255, 0)).max() < 40 and pal[:, 20:].min() > 240
  exif = _frame(recs["exif.jpg"])  # stored 80x160, top-left patch; shown 160x80, patch top-right
  assert exif[:12, 26:].mean() > 200 and exif[:12, :8].mean() < 50 and exif[40:].mean() < 50
  for name in ("anim.gif", "anim.webp"):  # the first frame (red), not the second (blue)
    assert np.abs(_frame(recs[name]) - (255, 0, 0)).max() < 40, name
  video = recs["clip.mp4"]
  assert len(video["frames"]) == 24 and video["src_fps"] == 12 and video["captions"] == ["a clip"]
  assert meta["splits"]["train"]["media"] == {"image": len(sizes), "video": 1}


def test_annotation_formats(converted):
  out, meta, _ = converted
  _, coco = _read_all(out, "coco")
  assert {k: v["captions"] for k, v in coco.items()} == {"rgb.jpg": ["rgb a"], "gray.png": ["grey a", "grey b"],
                                                          "exif.jpg": []}
  report = json.load(open(os.path.join(out, "report.json")))
  assert report["coco"]["skipped"] == {"bad_annotation": 2}  # unknown image_id, an annotation without caption
  _, csv_recs = _read_all(out, "csv")
  assert {k: v["captions"] for k, v in csv_recs.items()} == {"cmyk.jpg": ["white, empty"],
                                                              "i16.png": ["grey sixteen"]}
  _, tsv_recs = _read_all(out, "cc3m")
  assert {k: v["captions"] for k, v in tsv_recs.items()} == {"anim.gif": ['a "quoted" red gif'],
                                                              "blue.BMP": ["blue square"]}
  assert meta["splits"]["coco"]["media"] == {"image": 3, "video": 0}
  assert meta["frame_stats"]["frames"]["min"] == 1


def test_hostile_images_are_skipped_with_their_reason(tmp_path):
  root = tmp_path / "media"
  root.mkdir()
  Image.new("RGB", (40, 40), (10, 20, 30)).save(root / "ok.jpg")
  Image.new("L", (40, 40), 7).save(root / "ok.png")
  (root / "empty.png").write_bytes(b"")
  (root / "garbage.jpg").write_bytes(np.random.default_rng(1).integers(0, 256, 4096, np.uint8).tobytes())
  rng = np.random.default_rng(2)
  for ext in ("jpg", "png"):
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(root / f"full.{ext}")
    blob = (root / f"full.{ext}").read_bytes()
    (root / f"truncated.{ext}").write_bytes(blob[: len(blob) * 3 // 4])
  Image.new("L", (2000, 6), 128).save(root / "thin.png")  # short side 6 < --min_side
  Image.new("L", (33000, 16), 128).save(root / "wide.png")  # 32 x 66000 after resizing: beyond JPEG
  items = [{"image": n, "caption": n} for n in ("ok.jpg", "missing.jpg", "empty.png", "garbage.jpg",
                                                "truncated.jpg", "truncated.png", "thin.png", "wide.png", "ok.png")]
  items += [{"image": "ok.jpg", "caption": 5}, {"caption": "no path"}]
  (tmp_path / "ann.json").write_text(json.dumps(items))
  out = str(tmp_path / "rec")
  prepare.main(["--root", str(root), "--split", f"train={tmp_path}/ann.json", "--out", out, "--short_side", "32",
                "--clips_per_shard", "4", "--workers", "2"])
  meta, recs = _read_all(out, "train")
  assert list(recs) == ["ok.jpg", "ok.png"]  # in annotation order across shards
  assert _frame(recs["ok.png"]).shape == (32, 32, 3)
  report = json.load(open(os.path.join(out, "report.json")))["train"]
  assert report["written"] == 2 and report["skipped"] == {
      "missing_file": 1, "empty_file": 1, "corrupt": 3, "too_small": 1, "too_large": 1, "bad_annotation": 2}
  reasons = {i: r for i, r, _ in report["skipped_ids"]}
  assert reasons["truncated.jpg"] == reasons["truncated.png"] == "corrupt" and reasons["wide.png"] == "too_large"
  assert meta["splits"]["train"]["media"] == {"image": 2, "video": 0}
  assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_decompression_bomb_and_forced_media(tmp_path, monkeypatch):
  Image.new("RGB", (40, 40)).save(tmp_path / "big.png")
  for pixels in (1000, 700):  # 1600 px: over the limit, PIL's warning (skipped too); over twice it, its error
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pixels)
    with pytest.raises(prepare.SkipClip) as e:
      prepare.decode_image(str(tmp_path / "big.png"), 32, 16)
    assert e.value.reason == "too_large"
  assert prepare.media_kind("a/B.JPEG", "auto") == "image" and prepare.media_kind("a/b.mp4", "auto") == "video"
  assert prepare.media_kind("a/b.mp4", "image") == "image" and prepare.media_kind("b.png", "video") == "video"
  monkeypatch.undo()
  Image.new("RGB", (40, 40)).save(tmp_path / "photo.dat", format="PNG")
  (tmp_path / "a.csv").write_text("image,caption\nphoto.dat,x\n")
  meta = prepare.main(["--root", str(tmp_path), "--split", f"train={tmp_path}/a.csv", "--out", str(tmp_path / "o"),
                       "--media", "image", "--workers", "1"])
  assert meta["splits"]["train"]["media"] == {"image": 1, "video": 0}


def test_image_records_feed_the_input_pipeline(converted):
  from umt_jax.input_pipeline import ClipSpec, Source, train_dataset
  out, _, _ = converted
  spec = ClipSpec(num_frames=1, size=32, crop="rrc", captions=True)
  ds = train_dataset([Source(out, "coco", clip=spec)], global_batch=2, seed=0, process_index=0, process_count=1)
  batch = ds[0]
  assert batch["video"].shape == (2, 1, 32, 32, 3) and batch["video"].dtype == np.uint8
  assert all(isinstance(c, str) for c in batch["caption"])
