"""Test setup: 8 simulated CPU devices for sharding tests (before jax initialises), offline HF, and a persistent
compilation cache for this session (a fresh temporary folder, shared with the tests' subprocesses through the
environment): the many runs that compile the same step (resume, eval-only, 1-vs-N processes) compile it once."""
import os
import tempfile

# Tests compile many tiny programs and run each for a few steps: XLA:CPU's LLVM optimisation costs more than it
# saves there (a stage-2 step: 85 s -> 38 s to compile and run). Subprocesses get it too (helpers.subprocess_env).
FAST_COMPILE = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_force_host_platform_device_count=8 {FAST_COMPILE}").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="umt_jax_test_xla_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
