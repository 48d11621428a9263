"""Run one training stage.

  python -m umt_jax.main --config=configs/<recipe>.py[:arg] --workdir=DIR [--config.key=value ...]

The config's `trainer` picks the stage (clip, umt, umt_stage2, finetune, videomae, distill, msta). A workdir with checkpoints resumes from the
latest. Multi-host: `jax.distributed.initialize()` runs when SLURM or a TPU pod is detected, when
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID are set (launch/local.py), or with
`--config.distributed=True`; see `distributed_args` and launch/ for which GPUs each process takes.
"""
from __future__ import annotations

import importlib
import json
import os
import re
from typing import Mapping

from absl import app, flags, logging as absl_logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "recipe file (configs/*.py[:arg])", lock_config=True)
flags.DEFINE_string("workdir", None, "stage directory: checkpoints, logs, params.npz")
flags.mark_flags_as_required(["config", "workdir"])

TRAINERS = {"clip": "umt_jax.trainers.clip_pretrain", "umt": "umt_jax.trainers.umt_pretrain",
            "umt_stage2": "umt_jax.trainers.umt_stage2", "finetune": "umt_jax.trainers.finetune",
            "videomae": "umt_jax.trainers.videomae_pretrain", "distill": "umt_jax.trainers.distill",
            "msta": "umt_jax.trainers.msta"}


def _tasks_per_node(env: Mapping[str, str]) -> int:
  """SLURM_STEP_TASKS_PER_NODE looks like '8(x2)' or '1,2'; the first node's count is enough here."""
  raw = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_NTASKS_PER_NODE") or "1"
  return int(re.match(r"\d+", raw).group())


def distributed_args(env: Mapping[str, str], force: bool = False) -> dict | None:
  """kwargs for `jax.distributed.initialize` from the environment; None: a single-process run.

  - Explicit (launch/local.py, any scheduler): JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID.
  - SLURM with more than one task: JAX reads the rest from SLURM, but assumes one process per GPU with every
    GPU visible and picks GPU SLURM_LOCALID. Here one task per node gets all its GPUs, and a task that sees a
    single GPU (--gpus-per-task=1) gets that one; JAX_LOCAL_DEVICE_IDS, when set, wins.
  - TPU pods (or UMT_DISTRIBUTED=1, or config.distributed): JAX auto-detects everything.
  """
  if "JAX_NUM_PROCESSES" in env:
    missing = [k for k in ("JAX_COORDINATOR_ADDRESS", "JAX_PROCESS_ID") if k not in env]
    if missing:
      raise ValueError(f"JAX_NUM_PROCESSES is set but {', '.join(missing)} is not: set all three (host:port, "
                       "count, this process's id 0..count-1)")
    return {"coordinator_address": env["JAX_COORDINATOR_ADDRESS"], "num_processes": int(env["JAX_NUM_PROCESSES"]),
            "process_id": int(env["JAX_PROCESS_ID"])}
  if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
    visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
    n_gpus = len(visible) or int(env.get("SLURM_GPUS_ON_NODE", "0") or 0)
    if "JAX_LOCAL_DEVICE_IDS" in env or not n_gpus:
      return {}
    if _tasks_per_node(env) == 1:
      return {"local_device_ids": list(range(n_gpus))}
    return {"local_device_ids": [0] if n_gpus == 1 else [int(env["SLURM_LOCALID"])]}
  on_tpu_pod = "TPU_WORKER_HOSTNAMES" in env or "MEGASCALE_COORDINATOR_ADDRESS" in env
  if force or on_tpu_pod or env.get("UMT_DISTRIBUTED") == "1":
    return {}
  return None


def maybe_initialize_distributed(force: bool) -> None:
  import jax
  kwargs = distributed_args(os.environ, force)
  if kwargs is None:
    return
  if os.environ.get("JAX_PLATFORMS") == "cpu":  # multi-process CPU (tests, launch/local.py): gloo collectives
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)


def run(config, workdir: str, devices=None):
  """Dispatches to the config's trainer (on `devices`, default all) -> its train() result."""
  if config.trainer not in TRAINERS:
    raise ValueError(f"config.trainer={config.trainer!r}; expected one of {sorted(TRAINERS)}")
  import jax
  try:
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
      with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(config.to_dict(), f, indent=1)
  except OSError as e:  # a read-only filesystem, a path under a file: fail before any work, naming it
    raise OSError(f"workdir {workdir!r} is not writable ({e.strerror or e}); choose another --workdir") from None
  return importlib.import_module(TRAINERS[config.trainer]).train(config, workdir, devices)


def main(argv):
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax and grain are chatty at INFO
  maybe_initialize_distributed(FLAGS.config.distributed)
  result = run(FLAGS.config, FLAGS.workdir)
  if result.eval:
    print("final eval: " + json.dumps({k: round(float(v), 3) for k, v in result.eval.items()}))
  if result.preempted:
    print(f"preempted: saved step {result.step} in {FLAGS.workdir}; re-run the same command to resume")


if __name__ == "__main__":
  app.run(main)
