"""One process of the 2-process training test: jax.distributed over gloo on localhost, 2 CPU devices each."""
import sys

import jax

if __name__ == "__main__":
  data_dir, port, pid, workdir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.config.update("jax_default_matmul_precision", "highest")
  jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid,
                             initialization_timeout=120)
  from tests.test_training import tiny
  from umt_jax.trainers import finetune

  assert jax.process_count() == 2 and jax.device_count() == 4
  result = finetune.train(tiny("finetune", data_dir, total_steps=3), workdir)
  assert result.step == 3
  jax.distributed.shutdown()
