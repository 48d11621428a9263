"""One process of the 2-process training tests: jax.distributed over gloo on localhost, 2 CPU devices each.

  python -m tests.multihost_train_worker DATA PORT PID WORKDIR [STAGE2_SETUP_JSON]
Fine-tuning for 3 steps, or (with the stage-2 test's setup as JSON) UMT stage 2 for 2 steps.
"""
import json
import sys

import jax

if __name__ == "__main__":
  data_dir, port, pid, workdir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.config.update("jax_default_matmul_precision", "highest")
  jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid,
                             initialization_timeout=120)
  assert jax.process_count() == 2 and jax.device_count() == 4
  if len(sys.argv) > 5:
    from tests.test_umt_stage2 import stage2_config
    from umt_jax.trainers import umt_stage2
    result = umt_stage2.train(stage2_config(json.loads(sys.argv[5]), total_steps=2), workdir)
    assert result.step == 2
  else:
    from tests.test_training import tiny
    from umt_jax.trainers import finetune
    result = finetune.train(tiny("finetune", data_dir, total_steps=3), workdir)
    assert result.step == 3
  jax.distributed.shutdown()
