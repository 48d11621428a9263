"""grain input pipelines: pre-decoded JPEG-frame records -> augmented uint8 clips -> global jax.Arrays.

Train: source -> seeded shuffle -> random_map (temporal sampling, JPEG decode of only the sampled frames,
augmentation) -> repeat (reshuffled and re-augmented each epoch) -> skip corrupt records -> [mixture]
-> per-process block slice -> batch -> multiprocess prefetch. The random_map runs on the GLOBAL element index,
and process p takes rows [p·L, (p+1)·L) of every global batch, so the union of all processes' batches is
exactly the single-process global batch, in order (what `jax.make_array_from_process_local_data` assembles).
Normalisation happens on device (`normalize`).
"""
from __future__ import annotations

import bisect
import dataclasses
import functools
import json
import os
import sys
import zlib
from typing import Any, Mapping, Sequence

import grain
import jax
import jax.numpy as jnp
import numpy as np

from data import records
from umt_jax import bad_records, video_transforms as vt

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """How clips are sampled and augmented."""
  num_frames: int = 8
  sampling: str = "segment"  # 'segment' (UMT pretraining), 'sparse' (fine-tuning), 'dense' (VideoMAE),
  # 'middle' (stage-2 retrieval test: fixed middle frames)
  stride: int = 4  # dense sampling only
  size: int = 224
  crop: str = "multiscale"  # 'multiscale' (UMT pretraining), 'rrc' (fine-tuning), 'center'
  rrc_scale: tuple[float, float] = (0.08, 1.0)
  flip: bool = True  # switch off for direction-sensitive data (SSv2, the synthetic set)
  captions: bool = False  # also return one caption per clip (random in training)
  test_clips: int = 1  # eval views: temporal clips × spatial crops
  test_crops: int = 1
  num_sample: int = 1  # repeated augmentation: > 1 gives 'video' (num_sample, T, S, S, 3), each cropped anew

  def __post_init__(self):
    for name, value, allowed in (("sampling", self.sampling, ("segment", "sparse", "dense", "middle")),
                                 ("crop", self.crop, ("multiscale", "rrc", "center"))):
      if value not in allowed:
        raise ValueError(f"ClipSpec.{name}={value!r}; expected one of {allowed}")


def _decode(frames: Sequence[bytes], idx: np.ndarray, min_short_side: int) -> np.ndarray:
  """JPEG-decode only the frames in `idx` (each distinct frame once); with `min_short_side`, libjpeg decodes
  at the smallest power-of-two scale that keeps the short side >= it (much faster for large frames)."""
  cache: dict[int, np.ndarray] = {}
  for i in map(int, idx):
    if i not in cache:
      cache[i] = records.decode_jpeg(frames[i], min_short_side)
  return np.stack([cache[int(i)] for i in idx])


def _indices(spec: ClipSpec, n: int, rng: np.random.Generator | None, clip_idx: int = -1) -> np.ndarray:
  if spec.sampling == "middle":
    return vt.middle_indices(n, spec.num_frames)
  if spec.sampling == "segment":
    if clip_idx != -1:  # test-time for segment sampling: the fine-tuning views
      return vt.sparse_indices(n, spec.num_frames, None, clip_idx, spec.test_clips)
    return vt.segment_indices(n, spec.num_frames, rng)
  if spec.sampling == "sparse":
    return vt.sparse_indices(n, spec.num_frames, rng, clip_idx, spec.test_clips)
  return vt.dense_indices(n, spec.num_frames, spec.stride, rng, clip_idx, spec.test_clips)


class TrainClip(grain.transforms.RandomMap):
  """record -> {'video': (T, S, S, 3) uint8, 'label': int32[, 'caption': str]}; with `num_sample` > 1 the
  video is (num_sample, T, S, S, 3): the same decoded frames, each with its own crop and flip (the official
  repeated augmentation)."""

  def __init__(self, spec: ClipSpec):
    self.spec = spec

  def random_map(self, record, rng: np.random.Generator) -> dict:
    spec, rec = self.spec, records.unpack(record)
    idx = _indices(spec, len(rec["frames"]), rng)
    min_side = {"multiscale": int(np.ceil(spec.size / 0.66)), "rrc": 0, "center": spec.size}[spec.crop]
    frames = _decode(rec["frames"], idx, min_side)
    views = [self._augment(frames, rng) for _ in range(spec.num_sample)]
    video = views[0] if spec.num_sample == 1 else np.stack(views)
    out = {"video": np.ascontiguousarray(video), "label": np.int32(rec["label"])}
    if spec.captions:
      caps = rec["captions"] or [""]
      out["caption"] = caps[int(rng.integers(len(caps)))]
      out["idx"] = media_index(rec["id"])
    return out

  def _augment(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(T, H, W, 3) decoded frames -> (T, S, S, 3): a random crop (spec.crop), resized, maybe flipped."""
    spec = self.spec
    h, w = frames.shape[1:3]
    if spec.crop == "multiscale":
      box = vt.multi_scale_crop_box(h, w, spec.size, rng)
    elif spec.crop == "rrc":
      box = vt.random_resized_crop_box(h, w, rng, spec.rrc_scale)
    else:
      s = min(h, w)
      box = ((h - s) // 2, (w - s) // 2, s, s)
    video = vt.crop_resize(frames, box, spec.size)
    if spec.flip and rng.random() < 0.5:
      video = video[:, :, ::-1]
    return video


def media_index(source_id: str) -> np.int32:
  """A stable int32 per source video / image (crc32 of its id): clips that share it are positives of each
  other in the contrastive loss (several captions of one video), as the official `idx`."""
  return np.int32(zlib.crc32(source_id.encode()) & 0x7FFFFFFF)


class EvalClips(grain.transforms.Map):
  """record -> {'video': (clips·crops, T, S, S, 3) uint8, 'label'[, 'caption']}: every test view."""

  def __init__(self, spec: ClipSpec):
    self.spec = spec

  def map(self, record) -> dict:
    spec, rec = self.spec, records.unpack(record)
    n = len(rec["frames"])
    views = []
    for c in range(spec.test_clips):
      frames = _decode(rec["frames"], _indices(spec, n, None, clip_idx=c), spec.size)
      views.append(vt.spatial_crops(frames, spec.size, spec.test_crops))
    out = {"video": np.concatenate(views), "label": np.int32(rec["label"])}
    if spec.captions:
      out["caption"] = (rec["captions"] or [""])[0]
    return out


def read_metadata(path: str) -> dict:
  meta_path = os.path.join(path, "metadata.json")
  if not os.path.isfile(meta_path):
    raise FileNotFoundError(f"{meta_path!r} not found: {path!r} is not a dataset written by data.prepare or "
                            "data.synthetic (or pass 'tfds:NAME' for a TFDS dataset)")
  with open(meta_path) as f:
    meta = json.load(f)
  if meta.get("format") != records.FORMAT:
    raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {records.FORMAT!r}")
  return meta


def open_source(path: str, split: str, data_dir: str | None = None):
  """An ArrayRecord dataset folder, or 'tfds:NAME' (read through tfds.data_source, no TensorFlow)."""
  if path.startswith("tfds:"):
    import tensorflow_datasets as tfds
    from data import tfds_builder  # noqa: F401  (registers the builder)
    return tfds.data_source(path[5:], split=split, data_dir=data_dir)
  meta = read_metadata(path)
  if split not in meta["splits"]:
    raise ValueError(f"{path}: no split {split!r}; it has {sorted(meta['splits'])}")
  files = [os.path.join(path, s) for s in meta["splits"][split]["shards"]]
  missing = [f for f in files if not os.path.isfile(f)]
  if missing:
    raise FileNotFoundError(f"{path}: shard files missing: {missing[:3]}")
  return grain.sources.ArrayRecordDataSource(files)


@dataclasses.dataclass(frozen=True)
class Source:
  """One dataset of a (possibly mixed) pipeline."""
  path: str
  split: str = "train"
  weight: float = 1.0
  clip: ClipSpec = ClipSpec()
  data_dir: str | None = None  # for tfds: sources
  indices: tuple[int, ...] | None = None  # training on a subset of the split's records (MSTA's few-shot sets)

  def open_records(self) -> Sequence:
    """The split's records (random access), or the `indices` subset of them."""
    recs = open_source(self.path, self.split, self.data_dir)
    return recs if self.indices is None else _Subset(recs, self.indices)

  def bad_record(self, index: int, record: Any, err: Exception) -> str:
    """Record `index` of the split that failed with `err` -> "<shard file>:<index in it> (id ...): <err>"."""
    index = index if self.indices is None else self.indices[index]
    if self.path.startswith("tfds:"):
      where = f"{self.path} split {self.split!r} record {index}"
    else:
      files, ends = _shard_ends(self.path, self.split)
      k = bisect.bisect_right(ends, index)
      where = f"{files[k]}:{index - (ends[k - 1] if k else 0)}"
    try:
      rid = repr(records.unpack(record).get("id"))
    except records.CorruptRecord:
      rid = "unreadable"
    return f"{where} (id {rid}): {err}"


class _Subset(Sequence):
  """records[indices[i]] for i < len(indices)."""

  def __init__(self, records: Sequence, indices: Sequence[int]):
    self._records, self._indices = records, tuple(int(i) for i in indices)

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, i: int):
    return self._records[self._indices[i]]


@functools.lru_cache(maxsize=None)
def _shard_ends(path: str, split: str) -> tuple[list[str], list[int]]:
  """The split's shard files and their cumulative record counts (read only when a record turns out bad)."""
  from array_record.python.array_record_module import ArrayRecordReader
  files, ends = [os.path.join(path, s) for s in read_metadata(path)["splits"][split]["shards"]], []
  for f in files:
    reader = ArrayRecordReader(f)
    ends.append((ends[-1] if ends else 0) + reader.num_records())
    reader.close()
  return files, ends


class _ProcessRows(grain.MapDataset):
  """Process p's rows of each global batch: element i -> global element (i // L)·G + p·L + i % L."""

  def __init__(self, parent: grain.MapDataset, index: int, count: int, local_batch: int):
    super().__init__(parent)
    self._index, self._count, self._local = index, count, local_batch

  def __len__(self) -> int:
    return len(self._parent) // self._count

  def _global(self, i: int) -> int:
    return (i // self._local) * self._local * self._count + self._index * self._local + i % self._local

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self._global(index)]

  def __str__(self) -> str:
    return f"_ProcessRows(process {self._index} of {self._count}, {self._local} rows)"


def train_dataset(sources: Sequence[Source], global_batch: int, seed: int, process_index: int | None = None,
                  process_count: int | None = None, transform: grain.transforms.Map | None = None
                  ) -> grain.MapDataset:
  """The infinite, batched training MapDataset of this process (process index/count default to jax's).
  `transform` (e.g. a tokenizer) runs on every element after sampling and augmentation. A record that does not
  decode is replaced deterministically (bad_records.SkipBad); each batch carries 'skipped' (B,) int32 and
  'bad_records' (B,) str, which `make_iterator` takes out, logs and counts."""
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  if global_batch % pc:
    raise ValueError(f"global batch {global_batch} is not divisible by the {pc} processes")
  parts = []
  for k, src in enumerate(sources):
    recs = grain.MapDataset.source(src.open_records())
    ds = recs.map_with_index(bad_records.Tag(len(recs))).seed(seed + 7919 * k)
    clips = ds.shuffle().random_map(bad_records.Guarded(TrainClip(src.clip), src))
    parts.append(bad_records.SkipBad(clips.repeat(None), len(recs)))
  ds = parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, [s.weight for s in sources])
  if transform is not None:
    ds = ds.map(transform)
  local = global_batch // pc
  return _ProcessRows(ds, pi, pc, local).batch(local, drop_remainder=True)


class _Interleave(grain.MapDataset):
  """Batched datasets, one per media type -> element i is a whole batch of one of them. Each round of
  sum(counts) batches takes counts[m] batches of part m, in an order shuffled by (seed, round): the official
  MetaLoader's interleaving, identical on every process, and resumable (random access by index)."""

  def __init__(self, parts: Sequence[grain.MapDataset], counts: Sequence[int], seed: int):
    super().__init__(list(parts))
    if not counts or min(counts) < 1:
      raise ValueError(f"every media type needs at least one batch per round, got {list(counts)}")
    self._counts, self._seed, self._cache = np.asarray(counts), seed, (-1, None)

  def __len__(self) -> int:
    return sys.maxsize

  def _order(self, r: int) -> np.ndarray:
    if self._cache[0] != r:
      order = np.repeat(np.arange(len(self._counts)), self._counts)
      self._cache = (r, np.random.default_rng([self._seed, r]).permutation(order))
    return self._cache[1]

  def media_of(self, index: int) -> int:
    r, pos = divmod(int(index), int(self._counts.sum()))
    return int(self._order(r)[pos])

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    r, pos = divmod(int(index), int(self._counts.sum()))
    order = self._order(r)
    m = int(order[pos])
    return self._parents[m][r * int(self._counts[m]) + int(np.sum(order[:pos] == m))]

  def __str__(self) -> str:
    return f"_Interleave(counts={self._counts.tolist()})"


def interleave_media(parts: Sequence[grain.MapDataset], counts: Sequence[int], seed: int) -> grain.MapDataset:
  """Batched training datasets (e.g. video-text and image-text, from `train_dataset`) -> one dataset whose
  every batch holds a single media type; `counts` batches of each per round (the official: one epoch of each
  loader), in a seeded random order."""
  return _Interleave(parts, counts, seed)


def eval_dataset(source: Source, global_batch: int, process_index: int | None = None,
                 process_count: int | None = None) -> tuple[grain.MapDataset, int]:
  """Batched eval MapDataset of this process, padded to whole global batches -> (dataset, num_examples).

  Each element carries 'valid' (0 for padding rows, which repeat example 0). A record that does not decode
  stops evaluation, naming its shard and index: skipping it would change the metrics' denominator."""
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  src = grain.MapDataset.source(source.open_records())  # the `indices` subset, if any
  n = len(src)
  padded = -(-n // global_batch) * global_batch
  views = src.map_with_index(bad_records.Checked(EvalClips(source.clip), source))

  ds = grain.MapDataset.range(padded).map(_Padded(views, n))
  local = global_batch // pc
  return _ProcessRows(ds, pi, pc, local).batch(local), n


class _Padded(grain.transforms.Map):
  def __init__(self, views: grain.MapDataset, n: int):
    self.views, self.n = views, n

  def map(self, i: int) -> dict:
    return {**self.views[int(i) % self.n], "valid": np.int32(int(i) < self.n)}


def make_iterator(ds: grain.MapDataset, worker_count: int = 0, buffer: int = 2) -> bad_records.SkipCount:
  """Iterator over a `train_dataset`, prefetched by `worker_count` spawn processes (0: in this thread)."""
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=buffer))
  if worker_count > 0:
    from absl import flags
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; outside absl.app nobody parsed them
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=buffer))
  return bad_records.SkipCount(iter(it))


def to_global(batch: Mapping[str, Any], mesh: jax.sharding.Mesh,
              batch_axes: tuple[str, ...] = ("data", "fsdp")) -> dict:
  """Process-local numpy batch -> global jax.Arrays sharded over `batch_axes` (strings stay host-local)."""
  axes = tuple(a for a in batch_axes if a in mesh.axis_names)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axes))
  return {k: (jax.make_array_from_process_local_data(sharding, v)
              if isinstance(v, np.ndarray) and v.dtype.kind in "uifb" else v) for k, v in batch.items()}


def normalize(video: jax.Array, dtype=jnp.float32) -> jax.Array:
  """uint8 (..., 3) -> ImageNet mean/std normalised, on device."""
  mean = jnp.asarray(IMAGENET_MEAN, jnp.float32) * 255
  std = jnp.asarray(IMAGENET_STD, jnp.float32) * 255
  return ((video.astype(jnp.float32) - mean) / std).astype(dtype)
