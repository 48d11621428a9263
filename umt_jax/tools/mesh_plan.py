"""Mesh planner: compile the real train step ahead of time for many virtual devices and compare mesh shapes.

  python -m umt_jax.tools.mesh_plan --config=configs/umt_k710.py:B --devices=256 \\
      --mesh=data:256 --mesh=data:32,fsdp:8 --accelerator=H100

Nothing runs. The step (the same `train_loop.build_step` a training run uses, with the stage's teacher as
abstract arrays of `config.teacher.arch`) is lowered for `--devices` CPU-simulated devices and compiled by XLA's
SPMD partitioner. Per device it reports parameter, optimizer-state and teacher memory (from the shardings),
temporaries (activations, from `memory_analysis`), FLOPs (analytic, and XLA's count of the partitioned program),
the collectives in the compiled HLO and the bytes they move, and a roofline estimate on `--accelerator`:
  compute = XLA FLOPs / peak, memory = XLA bytes accessed / HBM bandwidth, comm = bytes over the link,
  step ≈ max(compute, memory) + comm (no overlap; XLA's latency-hiding scheduler overlaps some of comm),
  MFU = analytic FLOPs / step / peak.
The CPU compiler fuses differently from GPU/TPU backends, so memory time and temporaries are indicative only.
"""
from __future__ import annotations

import os
import sys

import jax
import numpy as np
from absl import app, flags, logging as absl_logging
from ml_collections import config_flags

from umt_jax import hardware, stages, train_loop  # importing JAX does not start a backend: flags still apply
from umt_jax.tools import collectives

FLAGS = flags.FLAGS


def parse_mesh(text: str) -> dict[str, int]:
  """'data:32,fsdp:8' -> {'data': 32, 'fsdp': 8, 'tensor': 1}."""
  out = {"data": 1, "fsdp": 1, "tensor": 1}
  for part in text.split(","):
    name, sep, size = part.partition(":")
    if not sep or name not in out or not size.lstrip("-").isdigit():
      raise ValueError(f"--mesh {text!r}: expected axis:size pairs over {sorted(out)}, e.g. data:32,fsdp:8")
    out[name] = int(size)
  return out


def _per_device_bytes(tree, shardings) -> float:
  leaves = jax.tree.leaves(jax.tree.map(
      lambda x, s: int(np.prod(s.shard_shape(x.shape))) * x.dtype.itemsize, tree, shardings))
  return float(sum(leaves))


def plan(config, mesh_spec: dict[str, int], accelerator: str, devices=None, num_classes: int = 400) -> dict:
  """Compiles `config`'s train step on `mesh_spec` -> one row of per-device figures (bytes, FLOPs, seconds)."""
  acc = hardware.lookup(accelerator)
  config = config.copy_and_resolve_references()
  config.mesh.update(mesh_spec)
  if config.model.attn_impl in ("auto", "blocked"):  # on CPU they run attention as a loop over blocks of heads,
    config.model.attn_impl = "xla"  # whose FLOPs XLA's cost analysis counts once; accelerators run it unlooped
  devices = list(jax.devices() if devices is None else devices)
  task, batch = stages.stage_task(config, devices, num_classes)
  ts = train_loop.build_step(config, task, steps=1000, per_epoch=100.0, devices=devices)
  compiled = ts.lower(batch, task.extra)
  n = len(devices)
  cost = train_loop.xla_cost(compiled)
  mem = compiled.memory_analysis()
  ops = collectives.parse(compiled.as_text(), n)
  comm = collectives.summarize(ops, acc.fast_link, acc.slow_link, acc.per_node)
  opt_sh = ts.state_shardings["opt_state"]
  row = {
      "mesh": ",".join(f"{k}:{v}" for k, v in zip(("data", "fsdp", "tensor"), ts.mesh.devices.shape)),
      "params": _per_device_bytes(ts.abstract_state["params"], ts.state_shardings["params"]),
      "opt_state": _per_device_bytes(ts.abstract_state["opt_state"], opt_sh),
      "teacher": _per_device_bytes(task.extra, task.extra_shardings) if task.extra is not None else 0.0,
      "temporaries": float(mem.temp_size_in_bytes) if mem is not None else float("nan"),
      "flops": task.flops_per_step / n, "xla_flops": float(cost.get("flops", 0.0)),
      "hbm_bytes": float(cost.get("bytes accessed", 0.0)),
      "collectives": comm["counts"], "comm_bytes": comm["bytes"], "t_comm": comm["seconds"],
  }
  row["t_compute"] = row["xla_flops"] / acc.peak_flops
  row["t_memory"] = row["hbm_bytes"] / acc.hbm_bytes_per_s
  row["step"] = max(row["t_compute"], row["t_memory"]) + row["t_comm"]
  row["mfu"] = row["flops"] / row["step"] / acc.peak_flops if row["step"] else float("nan")
  row["fits"] = row["params"] + row["opt_state"] + row["teacher"] + row["temporaries"] <= acc.hbm_bytes
  return row


def table(rows: list[dict], accelerator: str) -> str:
  gib = lambda b: f"{b / 2 ** 30:.2f}"
  ms = lambda s: f"{s * 1e3:.1f}"
  short = {"all-gather": "AG", "all-reduce": "AR", "reduce-scatter": "RS", "all-to-all": "A2A",
           "collective-permute": "CP"}
  head = ["mesh", "params GiB", "opt GiB", "teacher GiB", "temp GiB", "TFLOP", "XLA TFLOP", "collectives",
          "comm GB", "compute ms", "HBM ms", "comm ms", "step ms", "MFU"]
  lines = [f"per device, roofline on {accelerator}", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    coll = " ".join(f"{short[k]}×{v}" for k, v in sorted(r["collectives"].items())) or "none"
    cells = [r["mesh"], gib(r["params"]), gib(r["opt_state"]), gib(r["teacher"]),
             gib(r["temporaries"]) + ("" if r["fits"] else " (!)"), f"{r['flops'] / 1e12:.2f}",
             f"{r['xla_flops'] / 1e12:.2f}", coll, f"{r['comm_bytes'] / 1e9:.2f}", ms(r["t_compute"]),
             ms(r["t_memory"]), ms(r["t_comm"]), ms(r["step"]), f"{100 * r['mfu']:.0f}%"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv) -> None:
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)
  if FLAGS.devices:  # before JAX creates its CPU client
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={FLAGS.devices}").strip()
  jax.config.update("jax_platforms", "cpu")  # virtual devices: never touch an accelerator
  devices = jax.devices()
  if FLAGS.devices and len(devices) != FLAGS.devices:
    sys.exit(f"--devices={FLAGS.devices}: JAX already started with {len(devices)} devices; run in a fresh process")
  meshes = [parse_mesh(m) for m in FLAGS.mesh] or [FLAGS.config.mesh.to_dict()]
  c = FLAGS.config
  print(f"{c.name}: {c.trainer}, global batch {c.batch_size}, {len(devices)} devices, "
        f"{c.data.num_frames}×{c.data.size}², model {c.model.variant} ({c.model.dtype}, remat {c.model.remat})")
  rows = []
  for m in meshes:
    rows.append(plan(c, m, FLAGS.accelerator, devices, FLAGS.num_classes))
    print(f"compiled {rows[-1]['mesh']}", file=sys.stderr)
  print(table(rows, FLAGS.accelerator))


def define_flags() -> None:
  """Flags are defined only when run as a program, so the module can be imported next to umt_jax.main."""
  config_flags.DEFINE_config_file("config", None, "recipe (configs/*.py[:arg])", lock_config=False)
  flags.DEFINE_integer("devices", 0, "virtual device count (0: the devices JAX already has)")
  flags.DEFINE_multi_string("mesh", [], "mesh shapes to compare, e.g. data:32,fsdp:8 (default: config.mesh)")
  flags.DEFINE_string("accelerator", "H100", "roofline target: H100, H200, A100, v4, v5e, v5p, v6e")
  flags.DEFINE_integer("num_classes", 400, "classes, for fine-tuning configs")
  flags.mark_flags_as_required(["config"])


if __name__ == "__main__":
  define_flags()
  app.run(main)
