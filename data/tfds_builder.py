"""A TFDS builder over the prepared records (`file_format='array_record'`), usable without TensorFlow.

  builder = UmtVideoRecords(source_dir="/data/k400_rec", data_dir="/data/tfds")
  builder.download_and_prepare(file_format="array_record")
  ds = builder.as_data_source("train")        # or tfds.data_source("umt_video_records", data_dir=..., split=...)

Examples carry the same fields as the records (JPEG frames as bytes), so the grain pipeline reads them through
`input_pipeline.Source(path="tfds:umt_video_records", data_dir=...)` with the same transforms.
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds
from array_record.python.array_record_module import ArrayRecordReader

from data import records


class UmtVideoRecords(tfds.core.GeneratorBasedBuilder):
  """Clips as lists of JPEG frames with label, captions and source info."""

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, source_dir: str | None = None, **kwargs):
    self._source_dir = source_dir
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    scalar = lambda dtype: tfds.features.Tensor(shape=(), dtype=dtype)
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "frames": tfds.features.Sequence(scalar(np.object_)),
        "label": scalar(np.int64),
        "captions": tfds.features.Sequence(tfds.features.Text()),
        "id": tfds.features.Text(),
        "fps": scalar(np.float32), "src_fps": scalar(np.float32), "src_frames": scalar(np.int64),
        "height": scalar(np.int64), "width": scalar(np.int64),
    }))

  def _split_generators(self, dl_manager):
    from umt_jax.input_pipeline import read_metadata
    if not self._source_dir:
      raise ValueError("UmtVideoRecords needs source_dir=<a folder written by data.prepare or data.synthetic>")
    meta = read_metadata(self._source_dir)
    return {split: self._generate_examples([os.path.join(self._source_dir, s) for s in info["shards"]])
            for split, info in meta["splits"].items()}

  def _generate_examples(self, shards):
    for shard in shards:
      reader = ArrayRecordReader(shard)
      try:
        for i in range(reader.num_records()):
          rec = records.unpack(reader.read([i])[0])
          yield f"{os.path.basename(shard)}/{i}", {k: rec[k] for k in (
              "frames", "label", "captions", "id", "fps", "src_fps", "src_frames", "height", "width")}
      finally:
        reader.close()
