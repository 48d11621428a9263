"""UMT stage 1: align the student's unmasked tokens with a frozen frame-wise CLIP teacher.

Per step: teacher forward on all frames (no gradient, its own compute dtype) -> semantic mask from its last
block's CLS attention (keep 1 - ratio of each frame's tokens; the teacher finishes that block on those tokens
only) -> student on the visible tokens -> K alignment decoders -> `uta_loss` against the teacher's last K
layers at the same positions. The teacher comes from a params file
(`umt-import-clip` for real CLIPs, or the demo's stage 0) and is passed into the step as a sharded argument,
so it is neither optimised nor checkpointed.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from umt_jax import config_lib, flops, input_pipeline as ip, losses, masking, sharding
from umt_jax.convert.clip_import import load_teacher
from umt_jax.models.clip import CLIPConfig, CLIPTeacher
from umt_jax.models.heads import UMTPretrain
from umt_jax.train_loop import Task, run_and_save, setup_mesh


def build(config: ml_collections.ConfigDict, tcfg: CLIPConfig) -> tuple[UMTPretrain, CLIPTeacher]:
  """-> (student UMTPretrain, CLIPTeacher) for a teacher of architecture `tcfg`."""
  enc = config_lib.student_kwargs(config.model)
  if config.model.tubelet_size != 1:
    raise ValueError("config.model.tubelet_size: UMT aligns frame-wise teacher tokens, so it must be 1")
  if config.data.size // enc["patch_size"] != tcfg.grid:
    raise ValueError(f"student grid {config.data.size}/{enc['patch_size']} != teacher grid {tcfg.image_size}/"
                     f"{tcfg.patch_size}: the teacher's tokens must line up with the student's")
  dtype = jnp.dtype(config.model.dtype)
  student = UMTPretrain(encoder=enc, clip_dim=tcfg.embed_dim, num_align_layers=config.teacher.align_layers,
                        dtype=dtype)
  teacher = CLIPTeacher(tcfg, num_layers=config.teacher.align_layers, dtype=jnp.dtype(config.teacher.dtype))
  return student, teacher


def alignment(student: UMTPretrain, teacher: CLIPTeacher, mask_ratio: float, dtype):
  """The stage-1 objective: loss(params, batch, rng, teacher_params) -> (uta_loss, {})."""
  def loss(params, batch, rng, teacher_params):
    video = ip.normalize(batch["video"], dtype)
    k_mask, k_drop = jax.random.split(rng)
    select = lambda attn: masking.semantic_frame_mask(k_mask, attn, mask_ratio)
    target, _, visible = jax.lax.stop_gradient(teacher.apply({"params": teacher_params}, video, select))
    pred = student.apply({"params": params}, video, visible, deterministic=False, rngs={"dropout": k_drop})
    return losses.uta_loss(pred, target), {}  # target (K, B, T·Nv, E): the teacher at the visible tokens
  return loss


def model_task(config: ml_collections.ConfigDict, tcfg: CLIPConfig, tparams=None, devices=None) -> Task:
  """The stage without data: student init, loss, the teacher sharded by rule, analytic FLOPs.

  tparams: the teacher's params (numpy); None gives ShapeDtypeStructs (compile-only: the mesh planner).
  """
  student, teacher = build(config, tcfg)
  t_params, t_sh = place_teacher(config, teacher, tparams, devices)
  ratio, frames = config.teacher.mask_ratio, config.data.num_frames
  nv = masking.num_visible(tcfg.grid ** 2, ratio) * frames
  init = lambda rng: student.init({"params": rng}, _dummy(config), jnp.zeros((1, nv), jnp.int32))["params"]
  step_flops = flops.umt_step(config.batch_size, frames, tcfg.grid, ratio, student.encoder, tcfg.embed_dim,
                              config.teacher.align_layers, tcfg)
  return Task(init=init, loss=alignment(student, teacher, ratio, jnp.dtype(config.model.dtype)),
              flops_per_step=step_flops, extra=t_params, extra_shardings=t_sh)


def place_teacher(config: ml_collections.ConfigDict, teacher: CLIPTeacher, tparams=None, devices=None):
  """The frozen teacher's params in `config.teacher.dtype`, sharded by the config's rules -> (params, shardings).
  tparams None: ShapeDtypeStructs carrying the shardings (compile-only)."""
  mesh, rules = setup_mesh(config, devices)
  t_boxed = jax.eval_shape(lambda: teacher.init(jax.random.key(0), _dummy(config)))["params"]
  t_sh = sharding.param_shardings(t_boxed, mesh, rules, config.min_fsdp_size)
  t_dtype = jnp.dtype(config.teacher.dtype)
  if tparams is None:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, t_dtype, sharding=s), nn.meta.unbox(t_boxed),
                        t_sh), t_sh
  return jax.tree.map(lambda x, s: jax.device_put(jnp.asarray(x, t_dtype), s), tparams, t_sh), t_sh


def make_task(config: ml_collections.ConfigDict, devices=None) -> Task:
  meta = config_lib.check_data(config, (config.data.split,))
  tcfg, tparams = load_teacher(config.teacher.path)
  spec = config_lib.clip_spec(config.data)
  data = ip.train_dataset([ip.Source(config.data.path, config.data.split, clip=spec)], config.batch_size,
                          config.seed)
  n_train = meta["splits"][config.data.split]["num_records"] if meta else 0
  return dataclasses.replace(model_task(config, tcfg, tparams, devices), train_data=data, clips_per_epoch=n_train)


def _dummy(config) -> jax.Array:
  s = config.data.size
  return jnp.zeros((1, config.data.num_frames, s, s, 3), jnp.float32)


def train(config: ml_collections.ConfigDict, workdir: str, devices=None):
  return run_and_save(config, workdir, make_task(config, devices),
                      config_lib.student_export_meta(config, "umt_pretrain"), devices)
