"""One process of the 2-process input-pipeline test (jax.distributed over gloo on localhost)."""
import os
import sys

import jax

if __name__ == "__main__":
  data_dir, port, pid, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid,
                             initialization_timeout=120)
  import numpy as np
  from jax.experimental import multihost_utils

  from tests.test_input_pipeline import SPEC
  from umt_jax import input_pipeline as ip

  assert jax.process_count() == 2 and jax.device_count() == 4
  mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(4), ("data",))
  ds = ip.train_dataset([ip.Source(data_dir, "train", clip=SPEC)], global_batch=8, seed=3)
  it = ip.make_iterator(ds)
  videos = []
  for _ in range(3):
    local = next(it)
    assert local["video"].shape[0] == 4  # this process's rows
    batch = ip.to_global(local, mesh, ("data",))
    assert batch["video"].shape[0] == 8 and batch["video"].sharding.spec == jax.sharding.PartitionSpec(("data",))
    videos.append(multihost_utils.process_allgather(batch["video"], tiled=True))
  if pid == 0:
    np.save(out, np.stack(videos))
  multihost_utils.sync_global_devices("done")
  jax.distributed.shutdown()
