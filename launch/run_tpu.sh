#!/bin/bash
# Cloud TPU pod slice: the same command on every worker. From your machine:
#
#   gcloud compute tpus tpu-vm scp --recurse . "$TPU_NAME":umt_jax --zone "$ZONE" --worker=all
#   gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command \
#     "cd umt_jax && bash launch/run_tpu.sh configs/umt_k710.py:L gs://BUCKET/runs/umt_l16 \
#        --config.data.path=/mnt/disks/k710_rec --config.teacher.path=/mnt/disks/clip_l14_196.npz"
#
# On first use it creates .venv with jax[tpu] and umt_jax. UMT_DISTRIBUTED=1 makes umt_jax.main call
# jax.distributed.initialize(), which finds the coordinator and the worker ids from the TPU metadata (the
# same command works on a single-host v5e-8, where JAX starts one process). Reads: UMT_DISTRIBUTED, PYTHON.
# Maintenance events and spot preemption send SIGTERM: the trainer saves at the next step and exits 0; rerun
# the same command (or let a queued resource retry it) to resume from the latest checkpoint in WORKDIR.
set -euo pipefail

CONFIG=${1:?usage: bash launch/run_tpu.sh CONFIG WORKDIR [--config.key=value ...]}
WORKDIR=${2:?usage: bash launch/run_tpu.sh CONFIG WORKDIR [--config.key=value ...]}
shift 2
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e . "jax[tpu]"
fi

export UMT_DISTRIBUTED=1
exec "${PYTHON:-.venv/bin/python}" -m umt_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
