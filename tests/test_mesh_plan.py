"""The mesh planner on a small config (8 simulated devices, and 16 through the command line), and the HLO
collective accounting it relies on."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from umt_jax import config_lib, flops
from umt_jax.models import vit
from umt_jax.tools import collectives, mesh_plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_umt():
  c = config_lib.base("umt")
  c.update(batch_size=16, min_fsdp_size=0)
  c.data.update(size=32, num_frames=2)
  c.model.update(embed_dim=64, depth=2, num_heads=4, mlp_dim=256, patch_size=8, drop_path=0.0)
  c.teacher.update(arch="tiny", image_size=32, align_layers=2)  # CLIP_PRESETS['tiny']: 32² / 8 -> grid 4
  return c


def test_collective_bytes_from_hlo_text():
  hlo = """
  %all-gather.1 = f32[8,64]{1,0} all-gather(f32[2,64]{1,0} %p), channel_id=1, replica_groups=[2,4]<=[8], dimensions={0}
  %all-reduce.2 = (f32[10]{0}, bf16[6]{0}) all-reduce(f32[10]{0} %a, bf16[6]{0} %b), replica_groups={{0,1,2,3,4,5,6,7}}
  %reduce-scatter.3 = f32[4]{0} reduce-scatter(f32[16]{0} %c), replica_groups=[4,2]<=[2,4]T(1,0), dimensions={0}
  %all-reduce-done = f32[3]{0} all-reduce-done(f32[3]{0} %s)
  """
  ops = collectives.parse(hlo, 8)
  assert [o.kind for o in ops] == ["all-gather", "all-reduce", "reduce-scatter"]
  ag, ar, rs = ops
  assert ag.result_bytes == 8 * 64 * 4 and ag.group_size == 4 and ag.bytes_moved() == 2048 * 3 / 4
  assert ar.result_bytes == 40 + 12 and ar.bytes_moved() == 2 * 52 * 7 / 8
  np.testing.assert_array_equal(rs.groups, [[0, 4], [1, 5], [2, 6], [3, 7]])  # transposed iota groups
  assert rs.bytes_moved() == 16 * 1
  # 4 devices per node: ag's groups {0..3}, {4..7} stay inside nodes; ar spans both; rs pairs i with i+4.
  assert not ag.crosses_nodes(4) and ar.crosses_nodes(4) and rs.crosses_nodes(4) and not rs.crosses_nodes(0)
  s = collectives.summarize(ops, fast_link=100.0, slow_link=1.0, per_node=4)
  assert s["counts"] == {"all-gather": 1, "all-reduce": 1, "reduce-scatter": 1}
  assert s["seconds"] == pytest.approx(1536 / 100.0 + 91 / 1.0 + 16 / 1.0)


def test_plan_compares_data_parallel_with_fsdp():
  c = small_umt()
  dp = mesh_plan.plan(c, {"data": 8}, "H100", jax.devices())
  fsdp = mesh_plan.plan(c, {"data": 2, "fsdp": 4}, "H100", jax.devices())
  assert dp["mesh"] == "data:8,fsdp:1,tensor:1" and fsdp["mesh"] == "data:2,fsdp:4,tensor:1"
  # FSDP shards params (embed dims divide by 4) and their Adam moments; pure data parallelism replicates them.
  assert fsdp["params"] < 0.5 * dp["params"] and fsdp["opt_state"] < 0.5 * dp["opt_state"]
  # Data parallelism reduces gradients; FSDP gathers weights before use.
  assert dp["collectives"].get("all-reduce", 0) >= 1
  assert fsdp["collectives"].get("all-gather", 0) > dp["collectives"].get("all-gather", 0)
  for r in (dp, fsdp):
    assert r["flops"] > 0 and r["xla_flops"] > 0 and r["comm_bytes"] > 0 and r["temporaries"] > 0
    assert r["step"] >= max(r["t_compute"], r["t_memory"]) and 0 < r["mfu"] < 1
  text = mesh_plan.table([dp, fsdp], "H100")
  assert "data:2,fsdp:4,tensor:1" in text and "MFU" in text


def test_plan_compiles_distillation_from_the_teacher_variant():
  # No teacher file: the planner compiles a Ti teacher (config.teacher.variant) beside a tiny student.
  c = config_lib.base("distill")
  c.update(batch_size=8, min_fsdp_size=0)
  c.data.update(size=32, num_frames=2)
  c.model.update(embed_dim=64, depth=2, num_heads=4, mlp_dim=256, patch_size=8, drop_path=0.0)
  c.teacher.variant = "Ti"
  dp = mesh_plan.plan(c, {"data": 8}, "H100", jax.devices(), num_classes=10)
  fsdp = mesh_plan.plan(c, {"data": 2, "fsdp": 4}, "H100", jax.devices(), num_classes=10)
  ti = vit.vit_kwargs("Ti")  # 192 wide, 12 deep, patch 16: 2·2·2 tokens of 32² clips
  teacher_params = 5_483_712 + 2 * 192 + 192 * 10 + 10  # the Ti encoder (README), fc_norm, a 10-class head
  assert dp["teacher"] == 4 * teacher_params and fsdp["teacher"] < 0.5 * dp["teacher"]  # replicated vs sharded
  student = flops.finetune_step(8, 2, 4, config_lib.student_kwargs(c.model), 10)
  assert dp["flops"] * 8 == pytest.approx(student + 8 * flops.classifier_forward(8, ti, 10))
  with pytest.raises(ValueError, match=r"config.teacher.variant='': compiling without the teacher's weights"):
    mesh_plan.plan(config_lib.base("distill"), {"data": 8}, "H100", jax.devices())


def test_parse_mesh_errors():
  assert mesh_plan.parse_mesh("data:32,fsdp:8") == {"data": 32, "fsdp": 8, "tensor": 1}
  with pytest.raises(ValueError, match="--mesh 'data=4'"):
    mesh_plan.parse_mesh("data=4")
  with pytest.raises(ValueError, match="expected axis:size"):
    mesh_plan.parse_mesh("model:4")


def test_command_line_on_16_virtual_devices():
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  cmd = [sys.executable, "-m", "umt_jax.tools.mesh_plan", "--config=configs/umt_k710.py:B", "--devices=16",
         "--mesh=data:16", "--mesh=data:4,fsdp:4", "--accelerator=v5p", "--config.batch_size=32",
         "--config.data.size=32", "--config.data.num_frames=2", "--config.model.variant=Ti",
         "--config.model.patch_size=8", "--config.model.depth=2", "--config.teacher.arch=tiny",
         "--config.teacher.image_size=32", "--config.teacher.align_layers=2", "--config.min_fsdp_size=0"]
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "16 devices" in out.stdout and "roofline on v5p" in out.stdout
  assert "| data:4,fsdp:4,tensor:1 |" in out.stdout and "| data:16,fsdp:1,tensor:1 |" in out.stdout
