"""Train-step benchmark: one config on the local devices, then a sweep over the knobs that matter.

  python -m benchmarks.train_step --config=configs/umt_k710.py:B --config.batch_size=64 --steps 10 \\
      --sweep model.attn_impl=xla,cudnn --sweep model.remat=none,dots_no_batch,full \\
      --sweep model.dtype=float32,bfloat16 --sweep batch_size=32,128 --sweep teacher.mask_ratio=0.5,0.9
  python -m benchmarks.train_step --config=configs/videomae_v2.py:B --config.batch_size=8 \
      --sweep videomae.decoder_mask_ratio=0.0,0.5    # dual masking: decoder masking off vs running cell 0.5

Every row compiles the real step (`train_loop.build_step`, the stage's teacher as `config.teacher.arch` with
random weights), runs `--warmup` steps, then times `--steps` steps one by one (blocking on each) and reports
the median: steps/s, clips/s (loaded clips: a VideoMAE step trains num_sample views of each), analytic GFLOP per
clip, TFLOP/s per device and MFU from the analytic FLOPs (umt_jax.flops), and peak
memory per device (the allocator's peak where the backend reports one, else the compiled step's
arguments + temporaries). The baseline row is the config as given; each sweep row changes one knob.
"""
from __future__ import annotations

import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging as absl_logging
from ml_collections import config_flags

from umt_jax import hardware, sharding, stages, train_loop

FLAGS = flags.FLAGS


def parse_sweep(text: str, config) -> tuple[str, list]:
  """'model.remat=none,full' -> ('model.remat', ['none', 'full']) with values cast to the config field's type."""
  key, sep, values = text.partition("=")
  if not sep or not values:
    raise ValueError(f"--sweep {text!r}: expected key=v1,v2,...")
  node = config
  for part in key.split("."):
    if part not in node:
      raise ValueError(f"--sweep {text!r}: the config has no field {key!r}")
    node = node[part]
  cast = type(node)
  return key, [cast(v) for v in values.split(",")]


def _set(config, key: str, value) -> None:
  *path, name = key.split(".")
  node = config
  for p in path:
    node = node[p]
  node[name] = value


def run_row(config, steps: int, warmup: int, peak: float | None) -> dict:
  """Compiles and times `config`'s step on all local devices -> one row."""
  task, batch_shapes = stages.stage_task(config)
  ts = train_loop.build_step(config, task, steps=1000, per_epoch=100.0)
  compiled = ts.lower(batch_shapes, task.extra)
  key = jax.random.key(0)
  state = ts.init_state(ts.init_params(key))
  extra = None if task.extra is None else jax.jit(  # random teacher weights: timing does not need trained ones
      lambda k: jax.tree.map(lambda x: 0.02 * jax.random.normal(k, x.shape, x.dtype), task.extra),
      out_shardings=task.extra_shardings)(key)
  b_sh = sharding.batch_sharding(ts.mesh)
  rng = np.random.default_rng(0)
  batch = {k: jax.device_put(rng.integers(0, 10 if k == "label" else 256, s).astype(d), b_sh)
           for k, (s, d) in batch_shapes.items()}
  times = []
  for i in range(warmup + steps):
    t0 = time.perf_counter()
    state, out = compiled(state, batch, extra)
    jax.block_until_ready(out)
    if i >= warmup:
      times.append(time.perf_counter() - t0)
  dt = statistics.median(times)
  n = jax.device_count()
  stats = jax.devices()[0].memory_stats() or {}
  mem = stats.get("peak_bytes_in_use")
  if mem is None:
    m = compiled.memory_analysis()
    mem = m.argument_size_in_bytes + m.temp_size_in_bytes if m is not None else float("nan")
  tflops = task.flops_per_step / n / dt / 1e12
  return {"step_ms": dt * 1e3, "steps_s": 1 / dt, "clips_s": config.batch_size / dt, "tflops": tflops,
          "gflop_clip": task.flops_per_step / config.batch_size / 1e9,
          "mfu": tflops * 1e12 / peak if peak else None, "mem_gib": mem / 2 ** 30,
          "loss": float(jnp.asarray(out["loss"]))}


def main(argv) -> None:
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)
  base = FLAGS.config
  acc = hardware.detect(jax.devices()[0])
  peak = FLAGS.peak_flops or (acc.peak_flops if acc else None)
  rows = [("baseline", None, None)] + [(k, k, v) for s in FLAGS.sweep for k, vs in [parse_sweep(s, base)]
                                       for v in vs]
  print(f"{base.name}: {base.trainer}, {jax.device_count()}× {jax.devices()[0].device_kind}, "
        f"global batch {base.batch_size}, {base.data.num_frames}×{base.data.size}², model {base.model.variant}, "
        f"median of {FLAGS.steps} steps after {FLAGS.warmup} warm-up")
  head = "| setting | step ms | steps/s | clips/s | GFLOP/clip | TFLOP/s/device | MFU | peak GiB/device |"
  print(head + "\n|" + "---|" * 8)
  for label, key, value in rows:
    c = base.copy_and_resolve_references()
    if key is not None:
      _set(c, key, value)
      label = f"{key}={value}"
    try:
      r = run_row(c, FLAGS.steps, FLAGS.warmup, peak)
    except Exception as e:  # e.g. cudnn attention on CPU: report the row, keep sweeping
      print(f"| {label} | failed: {type(e).__name__}: {str(e).splitlines()[0][:100]} ||||||| ")
      continue
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
    print(f"| {label} | {r['step_ms']:.1f} | {r['steps_s']:.2f} | {r['clips_s']:.1f} | {r['gflop_clip']:.1f} "
          f"| {r['tflops']:.3f} | {mfu} "
          f"| {r['mem_gib']:.2f} |")
    sys.stdout.flush()


def define_flags() -> None:
  """Flags are defined only when run as a program, so the module can be imported next to umt_jax.main."""
  config_flags.DEFINE_config_file("config", None, "recipe (configs/*.py[:arg])", lock_config=False)
  flags.DEFINE_integer("steps", 10, "timed steps per row")
  flags.DEFINE_integer("warmup", 2, "untimed steps per row (after compilation)")
  flags.DEFINE_multi_string("sweep", [], "key=v1,v2,...: rows that change one config key")
  flags.DEFINE_float("peak_flops", 0.0, "peak FLOP/s per device for MFU (0: umt_jax.hardware table)")
  flags.mark_flags_as_required(["config"])


if __name__ == "__main__":
  define_flags()
  app.run(main)
