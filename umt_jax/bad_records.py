"""Corrupt records in the input pipeline: skipped deterministically in training, fatal in evaluation.

A training record that does not decode (data.records.CorruptRecord) becomes a `Bad` marker; `SkipBad` replaces
it by the element one epoch later, so batches stay a pure function of the step and resume is exact. `SkipCount`
takes the descriptions out of each batch, logs and counts them, and keeps the count in the iterator state.
The `source` these classes take is an input_pipeline.Source (its `bad_record` names shard, index and id).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import grain
import numpy as np

from data import records

log = logging.getLogger(__name__)


class Tag(grain.transforms.MapWithIndex):
  """record -> (its index in the split, record); placed before the shuffle, which passes epoch·n + index."""

  def __init__(self, n: int):
    self.n = n

  def map_with_index(self, index: int, record: Any) -> tuple[int, Any]:
    return index % self.n, record


@dataclasses.dataclass(frozen=True)
class Bad:
  """A training element whose record does not decode; `where` is Source.bad_record's description."""
  where: str


class Guarded(grain.transforms.RandomMap):
  """(index, record) -> `clip`'s element, or a Bad when the record is corrupt (records.CorruptRecord)."""

  def __init__(self, clip: grain.transforms.RandomMap, source: Source):
    self.clip, self.source = clip, source

  def random_map(self, element: tuple[int, Any], rng: np.random.Generator) -> dict | Bad:
    index, record = element
    try:
      return self.clip.random_map(record, rng)
    except records.CorruptRecord as e:
      return Bad(self.source.bad_record(index, record, e))


class SkipBad(grain.MapDataset):
  """Element i of an infinite (repeated) training dataset, or when its record is corrupt element i + n (the same
  place one epoch of n later: another record, not a duplicate in the batch), i + 2n, ...: a pure function of i,
  so a resumed run gets the same batches. Adds 'skipped' (int32, records passed over) and 'bad_records' (str,
  their descriptions one a line)."""

  MAX_TRIES = 8  # more bad records at one place in a row: most of the split is corrupt

  def __init__(self, parent: grain.MapDataset, n: int):
    super().__init__(parent)
    self._n = n

  def __len__(self) -> int:
    return len(self._parent)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    bad = []
    for k in range(self.MAX_TRIES):
      element = self._parent[index + k * self._n]
      if not isinstance(element, Bad):
        return {**element, "skipped": np.int32(len(bad)), "bad_records": "\n".join(bad)}
      bad.append(element.where)
    raise records.CorruptRecord(f"{self.MAX_TRIES} records in a row do not decode, so most of the split is "
                                "corrupt: " + "; ".join(bad))

  def __str__(self) -> str:
    return "SkipBad"


class Checked(grain.transforms.MapWithIndex):
  """(index, record) -> `clip`(record); a corrupt record raises records.CorruptRecord naming it."""

  def __init__(self, clip: grain.transforms.Map, source: Source):
    self.clip, self.source = clip, source

  def map_with_index(self, index: int, record: Any) -> dict:
    try:
      return self.clip.map(record)
    except records.CorruptRecord as e:
      raise records.CorruptRecord(f"eval split {self.source.split!r}: {self.source.bad_record(index, record, e)}. "
                                  "Evaluation does not skip records (its metrics would cover fewer clips): "
                                  "re-convert the video or drop it from the split") from e


class SkipCount(grain.DatasetIterator):
  """A `train_dataset` iterator whose batches lose 'skipped' and 'bad_records': each bad record is logged
  (a warning naming its shard, index and id) and counted. `skipped` (records this process passed over) and
  `last_bad` (the latest few) are part of the iterator state, so a resumed run continues the count."""

  KEEP = 5

  def __init__(self, parent: grain.DatasetIterator):
    super().__init__(parent)
    self.skipped, self.last_bad = 0, []

  def __next__(self) -> dict:
    batch = next(self._parent)
    self.skipped += int(batch.pop("skipped").sum())
    bad = [w for lines in batch.pop("bad_records") if lines for w in str(lines).split("\n")]
    for where in bad:
      log.warning("skipped bad record %s", where)
    self.last_bad = (self.last_bad + bad)[-self.KEEP:]
    return batch

  def get_state(self) -> dict:
    return {"pipeline": self._parent.get_state(), "skipped": self.skipped, "last_bad": self.last_bad}

  def set_state(self, state: dict) -> None:
    if "pipeline" not in state:  # a checkpoint written before the count existed
      state = {"pipeline": state, "skipped": 0, "last_bad": []}
    self._parent.set_state(state["pipeline"])
    self.skipped, self.last_bad = int(state["skipped"]), list(state["last_bad"])
