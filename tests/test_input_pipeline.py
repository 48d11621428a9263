"""grain pipeline on the synthetic dataset: shapes, determinism, exact resume, mixtures, eval padding,
TFDS sources, global arrays, and a real 2-process run."""
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from data import records, synthetic
from tests.helpers import subprocess_env
from umt_jax import input_pipeline as ip

SPEC = ip.ClipSpec(num_frames=4, sampling="segment", size=24, crop="multiscale", flip=False, captions=True)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("synth"))
  synthetic.generate(out, {"train": 48, "val": 10}, seed=0, size=32, frames=8, clips_per_shard=20)
  return out


def _batches(ds, n, workers=0):
  it = ip.make_iterator(ds, workers)
  return [next(it) for _ in range(n)]


def test_train_batches_shapes_and_determinism(synth):
  ds = ip.train_dataset([ip.Source(synth, "train", clip=SPEC)], global_batch=6, seed=1, process_index=0,
                        process_count=1)
  a = _batches(ds, 3)
  assert a[0]["video"].shape == (6, 4, 24, 24, 3) and a[0]["video"].dtype == np.uint8
  assert a[0]["label"].dtype == np.int32 and set(a[0]["label"]) <= set(range(10))
  assert all(isinstance(c, str) and c.startswith("a ") for c in a[0]["caption"])
  b = _batches(ip.train_dataset([ip.Source(synth, "train", clip=SPEC)], 6, 1, 0, 1), 3)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["video"], y["video"])
  c = _batches(ip.train_dataset([ip.Source(synth, "train", clip=SPEC)], 6, 2, 0, 1), 1)
  assert not np.array_equal(a[0]["video"], c[0]["video"])


def test_epochs_are_reshuffled_and_cover_the_data(synth):
  ds = ip.train_dataset([ip.Source(synth, "train", clip=SPEC)], 8, 5, 0, 1)
  labels = [b["label"] for b in _batches(ds, 12)]  # 2 epochs of 48
  first, second = np.concatenate(labels[:6]), np.concatenate(labels[6:])
  assert sorted(first) == sorted(second) and not np.array_equal(first, second)
  assert np.bincount(first, minlength=10).min() >= 4  # balanced classes, each seen


@pytest.mark.parametrize("workers", [0, 2])
def test_exact_resume(synth, workers):
  ds = ip.train_dataset([ip.Source(synth, "train", clip=SPEC)], 4, 7, 0, 1)
  it = ip.make_iterator(ds, workers)
  for _ in range(3):
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(2)]
  it2 = ip.make_iterator(ds, workers)
  it2.set_state(state)
  for w, g in zip(want, [next(it2) for _ in range(2)]):
    np.testing.assert_array_equal(w["video"], g["video"])
    np.testing.assert_array_equal(w["label"], g["label"])


def test_iterator_state_through_orbax(synth, tmp_path):
  import grain
  import orbax.checkpoint as ocp
  ds = ip.train_dataset([ip.Source(synth, "train", clip=SPEC)], 4, 8, 0, 1)
  it = ip.make_iterator(ds)
  next(it)
  with ocp.CheckpointManager(str(tmp_path / "ckpt"), options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False)) as mgr:
    mgr.save(1, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  want = next(it)
  it2 = ip.make_iterator(ds)
  with ocp.CheckpointManager(str(tmp_path / "ckpt")) as mgr:
    mgr.restore(1, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(it2)))
  np.testing.assert_array_equal(next(it2)["video"], want["video"])


def test_process_rows_union_is_the_global_batch(synth):
  src = [ip.Source(synth, "train", clip=SPEC)]
  whole = _batches(ip.train_dataset(src, 8, 3, 0, 1), 3)
  parts = [_batches(ip.train_dataset(src, 8, 3, p, 2), 3) for p in range(2)]
  for s in range(3):
    np.testing.assert_array_equal(np.concatenate([parts[0][s]["video"], parts[1][s]["video"]]), whole[s]["video"])
  with pytest.raises(ValueError, match="not divisible by the 3 processes"):
    ip.train_dataset(src, 8, 3, 0, 3)


def test_two_processes_with_jax_distributed(synth, tmp_path):
  """Two real processes (gloo on localhost) build global arrays; gathered, they equal one process's batches."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  env = {**subprocess_env(2), "PYTHONPATH": os.getcwd()}
  out = str(tmp_path / "gathered.npy")
  procs = [subprocess.Popen([sys.executable, "-m", "tests.multihost_worker", synth, str(port), str(i), out],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
  for p in procs:
    log = p.communicate(timeout=300)[0].decode()
    assert p.returncode == 0, log[-3000:]
  whole = _batches(ip.train_dataset([ip.Source(synth, "train", clip=SPEC)], 8, 3, 0, 1), 3)
  np.testing.assert_array_equal(np.load(out), np.stack([b["video"] for b in whole]))


def test_mixture_draws_from_both_sources(synth):
  a = ip.Source(synth, "train", weight=3.0, clip=SPEC)
  b = ip.Source(synth, "val", weight=1.0, clip=SPEC)
  caps = np.concatenate([x["caption"] for x in _batches(ip.train_dataset([a, b], 8, 0, 0, 1), 10)])
  # val clips are rendered with another split seed, so captions tell the sources apart
  val_caps = {synthetic.render_clip(0, "val", i, synthetic.DEFAULT_CLASSES[i % 10], 32, 8)[1] for i in range(10)}
  frac = np.mean([c in val_caps for c in caps])
  assert 0.1 < frac < 0.45  # about 1/4


def test_eval_views_padding_and_valid(synth):
  spec = ip.ClipSpec(num_frames=4, sampling="sparse", size=24, test_clips=2, test_crops=3)
  ds, n = ip.eval_dataset(ip.Source(synth, "val", clip=spec), global_batch=4, process_index=0, process_count=1)
  batches = list(ds)
  assert n == 10 and len(batches) == 3
  assert batches[0]["video"].shape == (4, 6, 4, 24, 24, 3)
  np.testing.assert_array_equal(np.concatenate([b["valid"] for b in batches]), [1] * 10 + [0] * 2)
  np.testing.assert_array_equal(batches[0]["video"], list(ds)[0]["video"])  # deterministic
  # a Source's `indices` subset (MSTA's few-shot sets) is what evaluation reads too, in that order
  sub, n = ip.eval_dataset(ip.Source(synth, "val", clip=spec, indices=(7, 2, 5)), 4, 0, 1)
  got = next(iter(sub))
  assert n == 3 and got["label"][:3].tolist() == [7, 2, 5]
  np.testing.assert_array_equal(got["video"][1], batches[0]["video"][2])


def test_tfds_source_reads_the_same_records(synth, tmp_path):
  import tensorflow_datasets as tfds
  from data.tfds_builder import UmtVideoRecords
  UmtVideoRecords(source_dir=synth, data_dir=str(tmp_path)).download_and_prepare(file_format="array_record")
  tf_src = tfds.data_source("umt_video_records", split="val", data_dir=str(tmp_path))
  ar_src = ip.open_source(synth, "val")
  ours = {r["id"]: r for r in (records.unpack(ar_src[i]) for i in range(len(ar_src)))}
  assert len(tf_src) == len(ours)
  for i in range(len(tf_src)):
    rec = records.unpack(tf_src[i])
    want = ours[rec["id"]]
    assert rec["frames"] == want["frames"] and rec["label"] == want["label"] and rec["captions"] == want["captions"]
  ds = ip.train_dataset([ip.Source("tfds:umt_video_records", "train", clip=SPEC, data_dir=str(tmp_path))], 4, 0, 0, 1)
  assert _batches(ds, 1)[0]["video"].shape == (4, 4, 24, 24, 3)
  assert "tensorflow" not in sys.modules


def test_global_arrays_on_a_mesh(synth):
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "fsdp"))
  local = _batches(ip.train_dataset([ip.Source(synth, "train", clip=SPEC)], 8, 0, 0, 1), 1)[0]
  batch = ip.to_global(local, mesh)
  assert batch["video"].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
  assert len(batch["video"].addressable_shards) == 8 and batch["video"].addressable_shards[0].data.shape[0] == 1
  np.testing.assert_array_equal(np.asarray(batch["video"]), local["video"])
  assert isinstance(batch["caption"], np.ndarray) and batch["caption"].dtype.kind == "U"
  x = ip.normalize(batch["video"])
  np.testing.assert_allclose(np.asarray(x)[0, 0, 0, 0], (local["video"][0, 0, 0, 0] / 255 - ip.IMAGENET_MEAN)
                             / ip.IMAGENET_STD, rtol=1e-5)


def test_bad_sources(synth, tmp_path):
  with pytest.raises(FileNotFoundError, match="metadata.json"):
    ip.open_source(str(tmp_path), "train")
  with pytest.raises(ValueError, match="no split 'test'"):
    ip.open_source(synth, "test")
  with pytest.raises(ValueError, match="ClipSpec.crop='square'"):
    ip.ClipSpec(crop="square")
