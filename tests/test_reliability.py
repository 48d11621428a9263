"""Issue 17: the converter under kill -9, concurrent runs, spreadsheet files and wrongly typed entries; training
under failing checkpoint saves, unwritable workdirs, bad params files and wrongly typed configs."""
import json
import os
import resource
import signal
import subprocess
import sys
import time
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import psutil
import pytest
from array_record.python.array_record_module import ArrayRecordReader

from data import prepare, records, synthetic, writer
from tests.helpers import subprocess_env
from tests.videos import write_video
from umt_jax import checkpoint, params_io
from umt_jax.convert.clip_import import load_teacher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**subprocess_env(2), "PYTHONPATH": ROOT}


def _records(out: str, split: str = "train") -> list[bytes]:
  meta = json.load(open(os.path.join(out, "metadata.json")))
  got = []
  for shard in meta["splits"][split]["shards"]:
    r = ArrayRecordReader(os.path.join(out, shard))
    got += r.read_all()
    r.close()
  return got


def _temps(out: str) -> list[str]:
  return [f for f in os.listdir(out) if ".tmp" in f]


def _convert(root, ann, out, *extra) -> dict:
  return prepare.main(["--root", str(root), "--split", f"train={ann}", "--out", str(out), "--short_side", "32",
                       "--min_frames", "4", "--workers", "1", *extra])


def _report(out) -> dict:
  return json.load(open(os.path.join(out, "report.json")))["train"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
  root = tmp_path_factory.mktemp("videos")
  write_video(str(root / "a.mp4"), frames=8)
  write_video(str(root / "b.mp4"), frames=8, size=(64, 48))
  return root


# --- the converter ---------------------------------------------------------------------------------------------

def test_kill_9_mid_run_no_orphans_and_the_rerun_equals_an_uninterrupted_run(tmp_path):
  root = tmp_path / "v"
  root.mkdir()
  names = [f"c{i:02d}.mp4" for i in range(12)]
  for n in names:
    write_video(str(root / n), frames=48, size=(96, 128))
  ann = tmp_path / "ann.csv"
  ann.write_text("path,label\n" + "".join(f"{n},{i % 3}\n" for i, n in enumerate(names)))
  args = ["--root", str(root), "--split", f"train={ann}", "--short_side", "64", "--min_frames", "4",
          "--clips_per_shard", "1"]
  out = tmp_path / "killed"
  cmd = [sys.executable, "-m", "data.prepare", *args, "--out", str(out), "--workers", "2"]
  p = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline, children = time.time() + 120, []
  while time.time() < deadline and p.poll() is None:
    if out.is_dir() and any(f.endswith(".array_record.json") for f in os.listdir(out)):
      children = psutil.Process(p.pid).children(recursive=True)
      p.send_signal(signal.SIGKILL)
      break
    time.sleep(0.01)
  p.wait(30)
  assert p.returncode == -signal.SIGKILL and len(children) >= 2
  done = sum(f.endswith(".array_record.json") for f in os.listdir(out))
  assert done < len(names), "the run finished before the kill; give it more work"
  time.sleep(2)
  alive = [c.pid for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
  assert not alive, f"orphaned workers still running 2 s after the converter died: {alive}"
  again = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0, again.stderr[-3000:]
  assert not _temps(out)
  prepare.main([*args, "--out", str(tmp_path / "whole"), "--workers", "1"])
  assert _records(out) == _records(tmp_path / "whole") and len(_records(out)) == len(names)


def test_a_second_run_on_the_folder_is_refused_and_a_dead_runs_temp_files_are_removed(videos, tmp_path):
  ann = tmp_path / "ann.csv"
  ann.write_text("path\na.mp4\nb.mp4\n")
  out = tmp_path / "out"
  with writer.exclusive_output(str(out)):
    with pytest.raises(RuntimeError, match=rf"{out} is being written by another run \(pid {os.getpid()}"):
      _convert(videos, ann, out)
  stale = [f"train-00000-of-00001.array_record.tmp-{99999}-0123abcd", "train-00000-of-00001.array_record.tmp",
           "train-00000-of-00001.array_record.json.tmp-1-ff00ff00", "metadata.json.tmp-5-00aa00aa"]
  for f in stale:
    (out / f).write_bytes(b"half written")
  _convert(videos, ann, out)
  assert not _temps(out) and len(_records(out)) == 2


def test_spreadsheet_files_bom_crlf_utf16_read_like_any_other(videos, tmp_path):
  (tmp_path / "excel.csv").write_bytes("\ufeffpath,caption\r\na.mp4,\"un caf\u00e9,\r\nsur deux lignes\"\r\n"
                                       "b.mp4,b\r\n".encode("utf-8"))
  meta = _convert(videos, tmp_path / "excel.csv", tmp_path / "csv")
  recs = {r["id"]: r for r in map(records.unpack, _records(tmp_path / "csv"))}
  assert meta["splits"]["train"]["num_records"] == 2 and _report(tmp_path / "csv")["skipped"] == {}
  assert recs["a.mp4"]["captions"] == ["un caf\u00e9,\r\nsur deux lignes"] and recs["b.mp4"]["captions"] == ["b"]
  (tmp_path / "unicode.tsv").write_bytes("path\tlabel\r\na.mp4\t1\r\nb.mp4\t2\r\n".encode("utf-16"))  # BOM'd LE
  assert _convert(videos, tmp_path / "unicode.tsv", tmp_path / "tsv")["splits"]["train"]["num_records"] == 2
  (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps([{"video": "a.mp4", "label": 0}]).encode()
                                      .replace(b", ", b",\r\n"))
  assert _convert(videos, tmp_path / "bom.json", tmp_path / "json")["splits"]["train"]["num_records"] == 1
  (tmp_path / "latin1.csv").write_bytes("path,caption\na.mp4,ok\nb.mp4,caf\u00e9\n".encode("latin-1"))
  with pytest.raises(ValueError, match=r"latin1.csv' is not UTF-8 text \(line 3.*save it as UTF-8"):
    _convert(videos, tmp_path / "latin1.csv", tmp_path / "x")
  (tmp_path / "broken.json").write_text('[{"video": "a.mp4"},]')
  with pytest.raises(ValueError, match=r"broken.json' is not valid JSON: .*line 1 column"):
    _convert(videos, tmp_path / "broken.json", tmp_path / "x")
  (tmp_path / "huge.csv").write_text('path,caption\na.mp4,"' + "x" * 200_000 + '"\n')
  with pytest.raises(ValueError, match=r"huge.csv', line 2: field larger than field limit"):
    _convert(videos, tmp_path / "huge.csv", tmp_path / "x")


def test_json_entries_of_the_wrong_type_are_bad_annotations(videos, tmp_path):
  ann = tmp_path / "ann.json"
  ann.write_text(json.dumps([5, {"video": ["a.mp4"]}, {"video": "a.mp4", "caption": ["x", 3]},
                             {"video": "a.mp4", "label": [1]}, "b.mp4", {"video": "b.mp4", "caption": "fine"}]))
  meta = _convert(videos, ann, tmp_path / "out")
  rep = _report(tmp_path / "out")
  assert meta["splits"]["train"]["num_records"] == 1 and rep["skipped"] == {"bad_annotation": 5}
  assert [s[0] for s in rep["skipped_ids"]] == [f"{ann}#{i}" for i in range(5)]
  assert "entry 0 is not an object: 5" in rep["skipped_ids"][0][2]
  assert "media path must be a non-empty string, got ['a.mp4']" in rep["skipped_ids"][1][2]
  (tmp_path / "coco.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.mp4"}, [2]],
                                                  "annotations": [{"image_id": 1, "caption": 7}, 3]}))
  _convert(videos, tmp_path / "coco.json", tmp_path / "coco")
  assert _report(tmp_path / "coco")["skipped"] == {"bad_annotation": 3} and len(_records(tmp_path / "coco")) == 1


def test_a_2000x6_video_is_skipped_with_a_reason_and_no_temp_file(videos, tmp_path):
  write_video(str(tmp_path / "wide.mp4"), frames=8, size=(6, 2000))
  os.link(videos / "a.mp4", tmp_path / "a.mp4")
  ann = tmp_path / "ann.csv"
  ann.write_text("path\nwide.mp4\na.mp4\n")
  _convert(tmp_path, ann, tmp_path / "small")  # short side 6 < --min_side 16
  assert _report(tmp_path / "small")["skipped"] == {"too_small": 1} and len(_records(tmp_path / "small")) == 1
  _convert(tmp_path, ann, tmp_path / "large", "--min_side", "1", "--short_side", "256")  # 85333 px wide
  assert _report(tmp_path / "large")["skipped"] == {"too_large": 1} and len(_records(tmp_path / "large")) == 1
  assert not _temps(tmp_path / "small") and not _temps(tmp_path / "large")


def test_label_names_that_look_like_numbers_do_not_crash():
  rows = [prepare.Row("a", label="--3"), prepare.Row("b", label="\u00b2"), prepare.Row("c", label="7")]
  assert prepare.label_table(rows) == ({"--3": 0, "7": 1, "\u00b2": 2}, ["--3", "7", "\u00b2"])
  assert prepare.label_table([prepare.Row("a", label="-3"), prepare.Row("b", label=4)])[1] is None


# --- params files and configs ----------------------------------------------------------------------------------

def test_truncated_or_wrong_kind_params_files_name_the_file_and_what_was_expected(tmp_path):
  good = str(tmp_path / "bert.npz")
  params_io.save_params(good, {"w": np.random.default_rng(0).normal(size=(64, 64))}, {"kind": "bert"})
  with pytest.raises(ValueError, match=r"bert.npz' holds 'bert' params; expected a CLIP image tower \(kind 'clip'"):
    load_teacher(good)
  blob = open(good, "rb").read()
  cases = {"cut.npz": blob[: len(blob) // 2], "tail.npz": blob[:-30], "text.npz": b"{'not': 'params'}"}
  for name, data in cases.items():
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ValueError, match=rf"{name}' is not a umt_jax params file .*expected a .npz from umt-import"):
      load_teacher(str(tmp_path / name))
  damaged = bytearray(blob)
  start = blob.index(b"\x93NUMPY") + 200  # inside the first array, after its header
  damaged[start:start + 64] = bytes(64)
  (tmp_path / "damaged.npz").write_bytes(bytes(damaged))
  with pytest.raises(ValueError, match=r"damaged.npz' is truncated or corrupt \(BadZipFile: .*CRC"):
    params_io.load_params(str(tmp_path / "damaged.npz"))
  with zipfile.ZipFile(tmp_path / "model.pt", "w") as z:  # the layout of torch.save
    z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
  with pytest.raises(ValueError, match=r"model.pt' has no '__meta__' metadata \(it looks like a PyTorch checkpoint"):
    load_teacher(str(tmp_path / "model.pt"))
  with pytest.raises(FileNotFoundError, match=f"params file '{tmp_path}' is a directory"):
    params_io.load_params(str(tmp_path))


@pytest.mark.parametrize("override,key", [("--config.batch_size=abc", "config.batch_size"),
                                          ("--config.data.size=[1,2]", "config.data.size")])
def test_a_config_value_of_the_wrong_type_names_the_key(tmp_path, override, key):
  r = subprocess.run([sys.executable, "-m", "umt_jax.main", "--config=configs/demo.py:finetune",
                      f"--workdir={tmp_path}", override], cwd=ROOT, env=ENV, capture_output=True, text=True,
                     timeout=120)
  assert r.returncode != 0 and f"flag --{key}=" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
  assert not os.listdir(tmp_path)  # nothing started


# --- training ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bad_data(tmp_path_factory):
  """16 synthetic clips (the unwritable-workdir run needs a dataset)."""
  out = str(tmp_path_factory.mktemp("bad_data"))
  synthetic.generate(out, {"train": 16}, size=20, frames=4, clips_per_shard=8)
  return out, ""


def _state() -> dict:
  """A small state whose save writes well over the 1 KiB limit below."""
  return {"w": jnp.arange(4096, dtype=jnp.float32).reshape(64, 64), "step": jnp.int32(1)}


def test_a_failing_save_names_the_path_and_keeps_the_previous_checkpoint(tmp_path):
  state = _state()
  ck = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  ck.save(1, state, None, {"step": 1})
  ck.wait()
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (1024, hard))  # writes past 1 KiB fail (EFBIG), as on a full disk
  try:
    with pytest.raises(OSError, match=rf"saving checkpoint step 2 in {tmp_path}/checkpoints failed .*File too "
                                      r"large.*the previous checkpoint \(1\) is kept"):
      ck.save(2, state, None, {"step": 2})
      ck.wait()
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, old)
  assert any(".orbax-checkpoint-tmp" in d for d in os.listdir(tmp_path / "checkpoints"))
  again = checkpoint.Checkpointer(str(tmp_path))  # the next start: partial save removed, step 1 restores
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]
  step, got = again.restore_latest(state, jax.tree.map(lambda x: x.sharding, state), None)
  assert step == 1
  np.testing.assert_array_equal(np.asarray(got["w"]), np.asarray(state["w"]))


def test_an_unwritable_workdir_fails_at_start_up(bad_data, tmp_path):
  from tests.test_training import tiny
  from umt_jax.trainers import finetune
  (tmp_path / "file").write_text("a regular file: nothing can be created under it, even by root")
  workdir = tmp_path / "file" / "run"
  with pytest.raises(OSError, match=rf"the checkpoint directory {workdir}/checkpoints is not writable"):
    checkpoint.Checkpointer(str(workdir))
  t = time.time()
  with pytest.raises(OSError, match="is not writable"):
    finetune.train(tiny("finetune", bad_data[0], total_steps=1000), str(workdir))
  assert time.time() - t < 30  # before any step


# --- corrupt records -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corrupt_data(tmp_path_factory):
  """12 train clips in 2 shards: shard 1's record 2 has garbage JPEG frames, its record 4 truncated ones; val
  record 1 is truncated too."""
  import msgpack
  from array_record.python.array_record_module import ArrayRecordWriter
  out = str(tmp_path_factory.mktemp("corrupt"))
  synthetic.generate(out, {"train": 12, "val": 4}, size=20, frames=4, clips_per_shard=6)
  for shard, bad in (("train-00001-of-00002.array_record", {2: "garbage", 4: "cut"}),
                     ("val-00000-of-00001.array_record", {1: "cut"})):
    path = os.path.join(out, shard)
    r = ArrayRecordReader(path)
    recs = r.read_all()
    r.close()
    for i, kind in bad.items():
      rec = records.unpack(recs[i])
      rec["frames"] = [bytes(64) if kind == "garbage" else f[: len(f) // 2] for f in rec["frames"]]
      recs[i] = msgpack.packb(rec, use_bin_type=True)
    w = ArrayRecordWriter(path, "group_size:1")
    for b in recs:
      w.write(b)
    w.close()
  return out


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_training_records_are_skipped_logged_counted_and_resume_exactly(corrupt_data, workers, caplog):
  from umt_jax import input_pipeline as ip
  spec = ip.ClipSpec(num_frames=4, size=16, flip=False)
  ds = ip.train_dataset([ip.Source(corrupt_data, "train", clip=spec)], 4, 0, 0, 1)
  it = ip.make_iterator(ds, workers)
  first = [next(it) for _ in range(3)]  # one epoch: each bad record met once
  assert it.skipped == 2 and "skipped" not in first[0] and all(b["video"].shape[0] == 4 for b in first)
  for i in (2, 4):
    shard = f"{corrupt_data}/train-00001-of-00002.array_record"
    assert f"skipped bad record {shard}:{i} (id 'synthetic/train/{6 + i:07d}')" in caplog.text
  assert "does not decode: tjDecompressHeader3()" in caplog.text
  state = it.get_state()
  want = [next(it) for _ in range(3)]
  again = ip.make_iterator(ds, workers)
  again.set_state(state)
  assert again.skipped == 2
  for w, g in zip(want, [next(again) for _ in range(3)]):
    np.testing.assert_array_equal(w["video"], g["video"])
    np.testing.assert_array_equal(w["label"], g["label"])
  assert again.skipped == it.skipped == 4


def test_the_trainer_counts_skipped_records_and_stops_past_the_limit(corrupt_data, tmp_path):
  from tests.test_training import tiny
  from umt_jax.trainers import finetune
  res = finetune.train(tiny("finetune", corrupt_data, total_steps=3, batch_size=8), str(tmp_path / "ok"))
  assert [h.get("data/skipped_records") for h in res.history] == [1.0, 3.0, 4.0]  # 2 epochs of 12
  with pytest.raises(records.CorruptRecord, match=r"4 training records do not decode, more than config.data."
                     r"max_bad_records=3; the latest .*train-00001-of-00002.array_record:[24] \(id"):
    finetune.train(tiny("finetune", corrupt_data, total_steps=3, batch_size=8, **{"data.max_bad_records": 3}),
                   str(tmp_path / "stop"))


def test_a_corrupt_eval_record_stops_evaluation_naming_it(corrupt_data):
  from umt_jax import input_pipeline as ip
  ds, _ = ip.eval_dataset(ip.Source(corrupt_data, "val", clip=ip.ClipSpec(num_frames=4, size=16)), 4, 0, 1)
  with pytest.raises(records.CorruptRecord, match=rf"eval split 'val': {corrupt_data}/val-00000-of-00001.array_"
                     r"record:1 \(id 'synthetic/val/0000001'\): JPEG frame of \d+ bytes does not decode.*does not "
                     r"skip records"):
    list(ds)
