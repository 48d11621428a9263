"""The analytic step FLOPs (umt_jax.flops) agree with XLA's cost_analysis() of the compiled step, every stage."""
import jax
import jax.numpy as jnp
import pytest

from data import synthetic
from umt_jax import config_lib, flops, train_loop
from umt_jax.models.clip import CLIPConfig
from umt_jax.trainers import clip_pretrain, finetune, umt_pretrain

WIDTH = 256  # wide enough that matmuls dominate, as in real models; XLA also counts elementwise work


def xla_flops(task, config, batch_shapes) -> float:
  dev = jax.devices()[:1]
  ts = train_loop.build_step(config, task, steps=10, per_epoch=1.0, devices=dev)
  return float(train_loop.xla_cost(ts.lower(batch_shapes, task.extra))["flops"])


def student_config(trainer: str):
  c = config_lib.base(trainer)
  c.update(batch_size=4, min_fsdp_size=0)
  c.data.update(size=64, num_frames=4)
  c.model.update(embed_dim=WIDTH, depth=2, num_heads=4, mlp_dim=4 * WIDTH, patch_size=8, drop_path=0.0)
  return c


def test_umt_step_flops_match_xla():
  c = student_config("umt")
  c.teacher.update(align_layers=2, mask_ratio=0.5)
  tcfg = CLIPConfig(embed_dim=WIDTH // 2, image_size=64, patch_size=8, vision_width=WIDTH, vision_layers=3,
                    vision_heads=4)
  task = umt_pretrain.model_task(c, tcfg, None, jax.devices()[:1])
  xla = xla_flops(task, c, {"video": ((4, 4, 64, 64, 3), jnp.uint8)})
  assert task.flops_per_step == pytest.approx(xla, rel=0.1)
  # The teacher runs on all tokens, the student only on the visible half: masking more must cost less.
  c.teacher.mask_ratio = 0.9
  assert umt_pretrain.model_task(c, tcfg, None, jax.devices()[:1]).flops_per_step < task.flops_per_step


def test_finetune_step_flops_match_xla():
  c = student_config("finetune")
  task = finetune.model_task(c, num_classes=10)
  xla = xla_flops(task, c, {"video": ((4, 4, 64, 64, 3), jnp.uint8), "label": ((4,), jnp.int32)})
  assert task.flops_per_step == pytest.approx(xla, rel=0.1)


def test_clip_step_flops_match_xla(tmp_path):
  data = str(tmp_path / "data")
  synthetic.generate(data, {"pretrain": 8}, size=64, frames=2)
  c = config_lib.base("clip")
  c.update(batch_size=8)
  c.data.update(path=data, split="pretrain", size=64)
  c.clip.update(embed_dim=WIDTH // 2, patch_size=8, vision_width=WIDTH, vision_layers=2, vision_heads=4,
                context_length=24, text_width=WIDTH, text_layers=2, text_heads=4)
  task, _ = clip_pretrain.make_task(c, str(tmp_path / "w"))
  xla = xla_flops(task, c, {"video": ((8, 1, 64, 64, 3), jnp.uint8), "text": ((8, 24), jnp.int32)})
  assert task.flops_per_step == pytest.approx(xla, rel=0.1)


def test_transformer_count_by_hand():
  # One block, 10 tokens, width 8, MLP 32: qkv 2·10·8·24 + QKᵀ and AV 2·2·10·10·8 + proj 2·10·8·8 + MLP 2·2·10·8·32.
  assert flops.blocks(10, 8, 1, 32) == 3840 + 3200 + 1280 + 10240
