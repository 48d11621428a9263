"""Logging for trainers: a console progress line (ETA, clips/s, loss, TFLOP/s per device, MFU, step time and
the part of it spent waiting for data), TensorBoard
event files written by tensorboardX (no TensorFlow), and `metrics.jsonl` (one JSON object per logged step),
all from process 0 only.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Mapping

import jax

from umt_jax import hardware


def peak_flops(device: jax.Device) -> float | None:
  """Dense bf16 peak of a known accelerator (umt_jax.hardware); None for others (CPU): then no MFU unless the
  config sets `peak_flops`."""
  acc = hardware.detect(device)
  return acc.peak_flops if acc else None


def _summary_writer():
  """tensorboardX's SummaryWriter class, imported with torch hidden unless it is loaded already: tensorboardX
  imports torch (when installed) only to accept its tensors, which cost 3-5 s of start-up here; we log floats."""
  if "torch" in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules["torch"] = None  # `import torch` raises ImportError while this is set
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules["torch"]
  return SummaryWriter


class Writer:
  """Scalars to console, TensorBoard and metrics.jsonl."""

  def __init__(self, workdir: str, total_steps: int, clips_per_step: int, name: str = "train",
               peak: float | None = None):
    self.active = jax.process_index() == 0
    self.total, self.clips, self.name = total_steps, clips_per_step, name
    self.peak = peak or peak_flops(jax.devices()[0])
    self._t, self._step, self._tb, self._wait, self._flops = None, None, None, 0.0, 0.0
    if self.active:
      os.makedirs(workdir, exist_ok=True)
      self._tb = _summary_writer()(os.path.join(workdir, "tb"))
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")

  def start(self, step: int) -> None:
    self._t, self._step, self._wait, self._flops = time.perf_counter(), step, 0.0, 0.0

  def count_flops(self, flops_per_step: float | None) -> None:
    """Adds one step's FLOPs (all devices); steps of different shapes (video / image) may differ."""
    self._flops += flops_per_step or 0.0

  def data_wait(self, seconds: float) -> None:
    """Adds time the loop spent blocked on the input pipeline."""
    self._wait += seconds

  def write(self, step: int, scalars: Mapping[str, float], console: bool = True) -> dict:
    """Logs `scalars` at `step`; adds throughput since the previous call. Returns what was logged."""
    out = {k: float(v) for k, v in scalars.items()}
    now = time.perf_counter()
    if self._t is not None and step > self._step:
      dt = (now - self._t) / (step - self._step)
      out["clips_per_s"] = self.clips / dt
      out["step_s"], out["data_wait_s"] = dt, self._wait / (step - self._step)
      if self._flops:
        per_device = self._flops / jax.device_count() / (now - self._t)
        out["tflops_per_device"] = per_device / 1e12
        if self.peak:
          out["mfu"] = per_device / self.peak
      eta = dt * (self.total - step)
      self._t, self._step, self._wait, self._flops = now, step, 0.0, 0.0
    else:
      eta = None
    if self.active:
      for k, v in out.items():
        self._tb.add_scalar(k, v, step)
      self._jsonl.write(json.dumps({"step": step, **out}) + "\n")
      self._jsonl.flush()
      if console:
        self._console(step, out, eta)
    return out

  def _console(self, step: int, out: dict, eta: float | None) -> None:
    frac = step / max(self.total, 1)
    bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
    shown = " ".join(f"{k}={v:.4g}" for k, v in out.items() if k not in ("lr",))
    eta_s = f"ETA {eta:.0f}s" if eta is not None else ""
    sys.stderr.write(f"{self.name} [{bar}] {step}/{self.total} {shown} {eta_s}\n")
    sys.stderr.flush()

  def close(self) -> None:
    if self.active:
      self._tb.close()
      self._jsonl.close()
