"""Run one training stage.

  python -m umt_jax.main --config=configs/<recipe>.py[:arg] --workdir=DIR [--config.key=value ...]

The config's `trainer` picks the stage (clip, umt, finetune). A workdir with checkpoints resumes from the
latest. Multi-host: `jax.distributed.initialize()` runs when SLURM or a TPU pod is detected, or with
`--config.distributed=True` (then the usual JAX_COORDINATOR_ADDRESS / process id / count variables apply).
"""
from __future__ import annotations

import importlib
import json
import os

from absl import app, flags, logging as absl_logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "recipe file (configs/*.py[:arg])", lock_config=True)
flags.DEFINE_string("workdir", None, "stage directory: checkpoints, logs, params.npz")
flags.mark_flags_as_required(["config", "workdir"])

TRAINERS = {"clip": "umt_jax.trainers.clip_pretrain", "umt": "umt_jax.trainers.umt_pretrain",
            "finetune": "umt_jax.trainers.finetune"}


def maybe_initialize_distributed(force: bool) -> None:
  """jax.distributed for SLURM jobs, TPU pods (auto-detected by JAX), or when forced by the config."""
  import jax
  on_slurm = "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1
  on_tpu_pod = "TPU_WORKER_HOSTNAMES" in os.environ or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ
  if force or on_slurm or on_tpu_pod:
    jax.distributed.initialize()


def run(config, workdir: str, devices=None):
  """Dispatches to the config's trainer (on `devices`, default all) -> its train() result."""
  if config.trainer not in TRAINERS:
    raise ValueError(f"config.trainer={config.trainer!r}; expected one of {sorted(TRAINERS)}")
  import jax
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump(config.to_dict(), f, indent=1)
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
