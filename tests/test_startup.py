"""Start-up: the persistent compilation cache (config.compile_cache_dir) is on by default, so a second run in a
fresh process loads the compiled train step instead of compiling it; the loop prints the time to the first step."""
import os
import subprocess
import sys

from tests.helpers import subprocess_env
from tests.test_training import ROOT, data, teacher  # noqa: F401 (module fixtures)

# A fresh process: counts JAX's persistent-cache hits per program (its DEBUG log), then trains the tiny stage 1.
SCRIPT = """
import logging, sys
hits = []
class Hits(logging.Handler):
  def emit(self, record):
    if record.getMessage().startswith("Persistent compilation cache hit for"):
      hits.append(record.args[0])
log = logging.getLogger("jax._src.compiler")
log.setLevel(logging.DEBUG)
log.addHandler(Hits())
from tests.test_training import tiny
from umt_jax.trainers import umt_pretrain
data, teacher, workdir, cache = sys.argv[1:]
c = tiny("umt", data, **{"teacher.path": teacher, "total_steps": 2, "compile_cache_dir": cache})
umt_pretrain.train(c, workdir)
print("HITS", ",".join(hits))
"""


def _run(data: str, teacher: str, workdir: str, cache: str) -> subprocess.CompletedProcess:
  env = {k: v for k, v in subprocess_env(1).items() if k != "JAX_COMPILATION_CACHE_DIR"}  # the config decides
  env["PYTHONPATH"] = ROOT
  out = subprocess.run([sys.executable, "-c", SCRIPT, data, teacher, workdir, cache], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  return out


def _hits(out: subprocess.CompletedProcess) -> list[str]:
  line = [s for s in out.stdout.splitlines() if s.startswith("HITS")][-1]
  return [h for h in line[5:].split(",") if h]


def test_second_run_loads_the_compiled_step_and_time_to_first_step_is_printed(data, teacher, tmp_path):
  cache = str(tmp_path / "xla_cache")
  first = _run(data, teacher, str(tmp_path / "a"), cache)
  assert "jit_train_step" not in _hits(first)
  assert os.listdir(cache), "nothing was written to config.compile_cache_dir"
  line = [s for s in first.stderr.splitlines() if s.startswith("time to first step")]
  assert len(line) == 1 and "init" in line[0] and "step compile" in line[0], first.stderr[-2000:]
  second = _run(data, teacher, str(tmp_path / "b"), cache)  # a new workdir: no checkpoint, same programs
  assert "jit_train_step" in _hits(second), _hits(second)
  assert "time to first step" in second.stderr
  assert "WARNING" not in second.stderr and "Warning" not in second.stderr, second.stderr[-3000:]
