"""Logging for trainers: a console progress line (ETA, clips/s, loss, TFLOP/s per device, MFU), TensorBoard
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

# Dense bf16 peak FLOP/s per device, for MFU. Unknown devices (CPU) report no MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12, "TPU v5 lite": 197e12,
              "TPU v5p": 459e12, "TPU v6 lite": 918e12}


def peak_flops(device: jax.Device) -> float | None:
  kind = getattr(device, "device_kind", "")
  return next((v for k, v in PEAK_FLOPS.items() if k in kind), None)


class Writer:
  """Scalars to console, TensorBoard and metrics.jsonl."""

  def __init__(self, workdir: str, total_steps: int, clips_per_step: int, flops_per_step: float | None = None,
               name: str = "train"):
    self.active = jax.process_index() == 0
    self.total, self.clips, self.name = total_steps, clips_per_step, name
    self.flops_per_device = flops_per_step / jax.device_count() if flops_per_step else None
    self.peak = peak_flops(jax.devices()[0])
    self._t, self._step, self._tb = None, None, None
    if self.active:
      os.makedirs(workdir, exist_ok=True)
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tb"))
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")

  def start(self, step: int) -> None:
    self._t, self._step = time.perf_counter(), step

  def write(self, step: int, scalars: Mapping[str, float], console: bool = True) -> dict:
    """Logs `scalars` at `step`; adds throughput since the previous call. Returns what was logged."""
    out = {k: float(v) for k, v in scalars.items()}
    now = time.perf_counter()
    if self._t is not None and step > self._step:
      dt = (now - self._t) / (step - self._step)
      out["clips_per_s"] = self.clips / dt
      if self.flops_per_device:
        out["tflops_per_device"] = self.flops_per_device / dt / 1e12
        if self.peak:
          out["mfu"] = self.flops_per_device / dt / self.peak
      eta = dt * (self.total - step)
      self._t, self._step = now, step
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
