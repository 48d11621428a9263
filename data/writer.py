"""Shard writing shared by the video converter and the synthetic generator.

A shard is written to `<name>.tmp-<pid>-<random>` (a name no other run or orphaned worker can share) and renamed
into place only when complete, then its `<name>.json` sidecar (counts, skip reasons, frame-size statistics); so a
shard either exists whole or not at all, no partial record is ever visible, and a re-run skips the shards that
exist. Pool workers exit within a second when the run that started them dies (`kill -9` included).
`exclusive_output` locks an output folder for one run and removes what a dead run left behind.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import json
import multiprocessing
import os
import re
import secrets
import sys
import threading
import time
from typing import Callable, Iterable, Iterator, Sequence

from array_record.python.array_record_module import ArrayRecordWriter


def shard_name(split: str, index: int, count: int) -> str:
  return f"{split}-{index:05d}-of-{count:05d}.array_record"


def shard_ranges(n: int, num_shards: int) -> list[tuple[int, int]]:
  """Deterministic contiguous [start, end) ranges of the n items, one per shard."""
  bounds = [round(i * n / num_shards) for i in range(num_shards + 1)]
  return [(bounds[i], bounds[i + 1]) for i in range(num_shards)]


LOCK_NAME = ".lock"
_TEMP = re.compile(r"\.(array_record|json)\.tmp(-\d+-[0-9a-f]+)?$")  # this module's temporary names (and older ones)


def temp_path(path: str) -> str:
  """A temporary name for `path` that no other process can pick."""
  return f"{path}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


def write_json(path: str, content) -> None:
  """Atomically (a unique temporary file, then a rename)."""
  tmp = temp_path(path)
  with open(tmp, "w") as f:
    json.dump(content, f, indent=1)
  os.replace(tmp, path)


@contextlib.contextmanager
def exclusive_output(out: str) -> Iterator[None]:
  """Holds `<out>/.lock` (flock, released by the kernel even on kill -9) while the body runs: a second run on the
  same folder fails at once, naming the first one's pid. Temporary files of a dead run are removed first."""
  os.makedirs(out, exist_ok=True)
  fd = os.open(os.path.join(out, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
      raise RuntimeError(f"{out} is being written by another run (pid {holder}, lock {out}/{LOCK_NAME}); wait "
                         "for it to finish (a re-run then resumes) or write to another folder") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    for name in os.listdir(out):  # holding the lock: any temporary file here belongs to a dead run
      if _TEMP.search(name):
        os.remove(os.path.join(out, name))
    yield
  finally:
    os.close(fd)


def shard_done(path: str) -> bool:
  return os.path.isfile(path) and os.path.isfile(path + ".json")


def write_shard(path: str, items: Iterable[tuple[str, bytes | None, str | None, dict | None]]) -> dict:
  """Writes one shard from (id, record or None, skip reason or None, stats) items; returns its report.

  report: {"written": n, "skipped": {reason: n}, "skipped_ids": [[id, reason, detail]], "stats": [...]}
  """
  tmp = temp_path(path)
  report = {"written": 0, "skipped": {}, "skipped_ids": [], "stats": []}
  try:
    writer = ArrayRecordWriter(tmp, "group_size:1")
    try:
      for item_id, record, reason, info in items:
        if record is None:
          report["skipped"][reason] = report["skipped"].get(reason, 0) + 1
          report["skipped_ids"].append([item_id, reason, (info or {}).get("detail", "")])
          continue
        writer.write(record)
        report["written"] += 1
        report["stats"].append(info)
    finally:
      writer.close()
    os.replace(tmp, path)  # the sidecar lands last: a shard without it is redone
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  write_json(path + ".json", report)
  return report


def merge_reports(reports: Sequence[dict]) -> dict:
  skipped: dict[str, int] = {}
  for r in reports:
    for k, v in r["skipped"].items():
      skipped[k] = skipped.get(k, 0) + v
  return {"written": sum(r["written"] for r in reports), "skipped": skipped,
          "skipped_ids": [x for r in reports for x in r["skipped_ids"]]}


def frame_stats(reports: Sequence[dict]) -> dict:
  """min / max / mean of stored frame height, width and count over all written records."""
  stats = [s for r in reports for s in r["stats"]]
  out = {}
  for key in ("height", "width", "frames"):
    vals = [s[key] for s in stats]
    out[key] = ({"min": min(vals), "max": max(vals), "mean": sum(vals) / len(vals)} if vals else None)
  return out


def load_report(path: str) -> dict:
  with open(path + ".json") as f:
    return json.load(f)


class Progress:
  """A one-line progress bar on stderr: items done / total, rate and ETA."""

  def __init__(self, total: int, label: str):
    self.total, self.label, self.done, self.start = total, label, 0, time.time()

  def update(self, n: int) -> None:
    self.done += n
    elapsed = max(time.time() - self.start, 1e-9)
    rate = self.done / elapsed
    eta = (self.total - self.done) / rate if rate > 0 else float("inf")
    width = 30
    filled = int(width * self.done / max(self.total, 1))
    sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                     f"{rate:.1f} clips/s ETA {eta:.0f}s   ")
    if self.done >= self.total:
      sys.stderr.write("\n")
    sys.stderr.flush()


def _exit_with_parent(parent: int) -> None:
  """Pool-worker initializer: a thread that ends this worker within half a second of the parent's death, so no
  orphan keeps writing into the output folder after the run is killed."""
  def watch():
    while os.getppid() == parent:
      time.sleep(0.5)
    os._exit(1)
  threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def run_shard_jobs(fn: Callable, jobs: Sequence, num_workers: int, label: str) -> list[dict]:
  """Runs `fn(job) -> report` for every job whose shard (`job.path`) is not finished yet, in a spawn pool
  when num_workers > 1; finished shards are read back, so a re-run resumes. Returns reports in job order."""
  reports: dict[int, dict] = {}
  todo = []
  for i, job in enumerate(jobs):
    if shard_done(job.path):
      reports[i] = load_report(job.path)
    else:
      todo.append(i)
  progress = Progress(sum(job.size for job in jobs), label)
  progress.update(sum(jobs[i].size for i in reports))
  if num_workers <= 1:
    for i in todo:
      reports[i] = fn(jobs[i])
      progress.update(jobs[i].size)
  else:
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=ctx, initializer=_exit_with_parent,
                                                initargs=(os.getpid(),)) as pool:
      futures = {pool.submit(fn, jobs[i]): i for i in todo}
      try:
        for fut in concurrent.futures.as_completed(futures):
          i = futures[fut]
          reports[i] = fut.result()
          progress.update(jobs[i].size)
      except BaseException:  # a failed shard or Ctrl-C: don't start the queued ones before re-raising
        pool.shutdown(cancel_futures=True)
        raise
  return [reports[i] for i in range(len(jobs))]
