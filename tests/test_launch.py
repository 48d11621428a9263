"""Launching: which devices each process takes under SLURM / explicit variables, and launch/local.py running
2 processes over gloo, forwarding SIGTERM so both save and exit cleanly, then resuming to the end."""
import signal
import subprocess
import sys

import pytest

from tests.test_training import ROOT, _cli, _env, _run_until, data, losses_of  # noqa: F401 (data: fixture)
from umt_jax.main import distributed_args

SLURM = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "gpu[01-02]", "SLURM_NTASKS": "16", "SLURM_PROCID": "9",
         "SLURM_LOCALID": "1"}


def test_distributed_args_from_the_environment():
  assert distributed_args({}) is None
  assert distributed_args({}, force=True) == {}
  assert distributed_args({"UMT_DISTRIBUTED": "1"}) == {}
  assert distributed_args({"JAX_COORDINATOR_ADDRESS": "h:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}) == {
      "coordinator_address": "h:1234", "num_processes": 2, "process_id": 1}
  with pytest.raises(ValueError, match="JAX_PROCESS_ID"):
    distributed_args({"JAX_COORDINATOR_ADDRESS": "h:1234", "JAX_NUM_PROCESSES": "2"})
  # One process per GPU, every GPU visible to every task: JAX's own choice (GPU = local id).
  per_gpu = {**SLURM, "SLURM_STEP_TASKS_PER_NODE": "8(x2)", "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}
  assert distributed_args(per_gpu) == {"local_device_ids": [1]}
  # One process per GPU bound with --gpus-per-task=1: the task sees one GPU, which is its device 0.
  assert distributed_args({**per_gpu, "CUDA_VISIBLE_DEVICES": "5"}) == {"local_device_ids": [0]}
  # One process per node: all of the node's GPUs, not just GPU 0.
  per_node = {**SLURM, "SLURM_NTASKS": "2", "SLURM_LOCALID": "0", "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
              "SLURM_GPUS_ON_NODE": "8"}
  assert distributed_args(per_node) == {"local_device_ids": list(range(8))}
  assert distributed_args({**per_node, "JAX_LOCAL_DEVICE_IDS": "0,1"}) == {}  # JAX reads the override
  assert distributed_args({**SLURM, "SLURM_NTASKS": "1"}) is None  # a single-task job is a local run


def test_local_launcher_forwards_sigterm_and_resumes(data, tmp_path):
  w = str(tmp_path / "two")
  cmd = [sys.executable, "launch/local.py", "--processes", "2", "--cpu_devices", "2", "--", *_cli(w, data)]
  first = _run_until(cmd, w, 5, signal.SIGTERM)
  assert first.returncode == 0, first.stdout[-3000:]
  assert first.stdout.count("preempted: saved step") == 2, first.stdout[-3000:]  # both processes saved
  assert max(losses_of(w)) < 12
  again = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
  assert again.returncode == 0 and "resumed" in again.stderr, again.stderr[-3000:]
  assert sorted(losses_of(w)) == list(range(1, 13))


def test_local_launcher_stops_everything_when_a_process_fails(tmp_path):
  cmd = [sys.executable, "launch/local.py", "--processes", "2", "--", sys.executable, "-c",
         "import os, sys, time; sys.exit(3) if os.environ['JAX_PROCESS_ID'] == '1' else time.sleep(60)"]
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=30)
  assert r.returncode == 3 and "stopping the others" in r.stderr
