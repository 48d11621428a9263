"""benchmarks/vs_pytorch.py's profile: thunks classified from the HLO, wall time split among them, PyTorch's ops."""
import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks import vs_pytorch

HLO = """HloModule m

%fused_computation.1 (p0: f32[4,8], p1: f32[8,2]) -> f32[4,2] {
  %p0 = f32[4,8]{1,0} parameter(0)
  %p1 = f32[8,2]{1,0} parameter(1)
  ROOT %dot.1 = f32[4,2]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_computation.2 (p0: f32[4,8]) -> f32[4] {
  %p0 = f32[4,8]{1,0} parameter(0)
  %c = f32[] constant(0)
  ROOT %reduce.1 = f32[4]{0} reduce(%p0, %c), dimensions={1}, to_apply=%add
}

ENTRY %main.9 (a: f32[4,8], b: f32[8,2]) -> (f32[4,2], f32[4], f32[8,4]) {
  %a = f32[4,8]{1,0} parameter(0)
  %b = f32[8,2]{1,0} parameter(1)
  %ynn_fusion.1 = f32[4,2]{1,0} fusion(%a, %b), kind=kCustom, calls=%fused_computation.1
  %ynn_fusion.2 = f32[4]{0} fusion(%a), kind=kCustom, calls=%fused_computation.2
  %transpose_copy_fusion = f32[8,4]{1,0} fusion(%a), kind=kLoop, calls=%fused_computation.3
  %copy.1 = f32[8,4]{1,0} copy(%transpose_copy_fusion)
  %while.1 = (s32[], f32[4]{0}) while(%t), condition=%cond, body=%body
  %dot.7 = f32[4,2]{1,0} dot(%a, %b), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %tuple = (f32[4,2], f32[4], f32[8,4]) tuple(%ynn_fusion.1, %ynn_fusion.2, %copy.1)
}
"""


def test_hlo_kinds_go_by_what_an_instruction_computes():
  kinds = vs_pytorch.hlo_kinds(HLO)
  assert kinds["ynn_fusion.1"] == "matmul" and kinds["dot.7"] == "matmul"
  assert kinds["ynn_fusion.2"] == "rest"  # an XNNPACK fusion that only reduces
  assert kinds["transpose_copy_fusion"] == "layout copies" and kinds["copy.1"] == "layout copies"
  assert "while.1" not in kinds  # a loop's thunk holds its body's, which are counted themselves


def test_profiles_split_each_side_into_kinds():
  a = jnp.asarray(np.random.default_rng(0).standard_normal((256, 256)), jnp.float32)
  f = jax.jit(lambda a: jnp.tanh(a @ a.T).sum(0))
  compiled = f.lower(a).compile()
  kinds = vs_pytorch.hlo_kinds(compiled.as_text())
  assert "matmul" in kinds.values()
  prof = vs_pytorch.profile_jax(lambda: compiled(a).block_until_ready(), compiled.as_text(), 3)
  assert set(prof) == set(vs_pytorch.KINDS) | {"step"} and prof["matmul"] > 0
  assert min(prof.values()) >= 0 and sum(prof[k] for k in vs_pytorch.KINDS) <= prof["step"] * 1.001

  t = torch.randn(256, 256)
  tp = vs_pytorch.profile_torch(lambda: torch.tanh(t @ t.T).contiguous().sum(0), 3)
  assert tp["matmul"] > 0 and tp["rest"] > 0
  assert abs(tp["step"] - sum(tp[k] for k in vs_pytorch.KINDS)) < 1e-9
  table = vs_pytorch.profile_table([("tiny", tp, prof, 2.0)])
  assert "| tiny | PyTorch |" in table and "| tiny | umt_jax |" in table and "1.3× needs umt_jax ≤ | 2 |" in table
  assert "| profiled step ms |" in table and "| profiled forward ms |" in vs_pytorch.profile_table(
      [("tiny", tp, prof, 2.0)], "forward")
