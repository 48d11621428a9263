"""Local multi-process launcher: N processes of one command on this machine, wired for jax.distributed.

  python launch/local.py --processes 2 --cpu_devices 4 -- \\
      python -m umt_jax.main --config=configs/demo.py:umt --workdir=/tmp/w --config.data.path=/tmp/umt_demo/data

Each process gets JAX_COORDINATOR_ADDRESS (localhost and a free port), JAX_NUM_PROCESSES and JAX_PROCESS_ID,
which `umt_jax.main` turns into `jax.distributed.initialize(...)`. With --cpu_devices, each process runs on
CPU with that many virtual devices and gloo collectives (a multi-host run on one machine); without it, on GPUs
each process takes GPU `JAX_PROCESS_ID` (JAX_LOCAL_DEVICE_IDS). SIGTERM / SIGINT to the launcher go to every
process (the trainers save a checkpoint and exit 0); the launcher exits with the first non-zero status, and
stops the others when one fails.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def process_env(base: dict, pid: int, n: int, port: int, cpu_devices: int) -> dict:
  env = {**base, "JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": str(n),
         "JAX_PROCESS_ID": str(pid)}
  if cpu_devices:
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags + [f"--xla_force_host_platform_device_count={cpu_devices}"]))
  else:
    env.setdefault("JAX_LOCAL_DEVICE_IDS", str(pid))
  return env


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--processes", type=int, default=2)
  ap.add_argument("--cpu_devices", type=int, default=0, help="virtual CPU devices per process (0: use GPUs)")
  ap.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command each process runs")
  args = ap.parse_args(argv)
  cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not cmd or args.processes < 1:
    ap.error("expected --processes N >= 1 and a command after --")
  port = free_port()
  procs = [subprocess.Popen(cmd, env=process_env(dict(os.environ), i, args.processes, port, args.cpu_devices))
           for i in range(args.processes)]

  def forward(signum, _frame):
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, forward)
  status = 0
  while any(p.poll() is None for p in procs):
    failed = [p for p in procs if p.poll() not in (None, 0)]
    if failed and not status:
      status = failed[0].returncode
      print(f"launch/local.py: a process exited with status {status}; stopping the others", file=sys.stderr)
      forward(signal.SIGKILL, None)
    time.sleep(0.2)
  return status or next((p.returncode for p in procs if p.returncode), 0)


if __name__ == "__main__":
  sys.exit(main())
