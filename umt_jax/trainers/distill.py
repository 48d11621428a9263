"""Logit distillation, VideoMAE V2's last stage: a frozen fine-tuned classifier (e.g. g/14 after K710) teaches a
smaller one (S or B, initialised from its own post-pretrained K710 classifier).

Per step: the batch's clips (repeated views folded in, Mixup/CutMix applied once: teacher and student see the
same clip) -> teacher logits (no gradient, `teacher.dtype`) and student logits -> `losses.distill_loss`
(T²·KL(softmax(t/T) ‖ softmax(s/T)), T = `distill.temperature`) + `distill.label_weight` × the soft-target CE.
The teacher is a classifier params file: `teacher.path`, or `teacher.workdir` (a finished fine-tune or distill
workdir: its params.npz), of any size, patch and tubelet, with the student's class count. It is sharded by rule
and passed into the step (Task.extra): neither optimised nor checkpointed. Everything else is the fine-tuning
trainer's: the student's init (`init_from.*`), data, layer decay, multi-view evaluation, `mode=eval`, and the
classifier params.npz it writes.
"""
from __future__ import annotations

import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from umt_jax import flops, losses, mixup, params_io
from umt_jax.models import vit
from umt_jax.models.heads import VideoClassifier
from umt_jax.train_loop import Task, run_and_save
from umt_jax.trainers import finetune
from umt_jax.trainers.umt_pretrain import place_teacher


def teacher_file(config: ml_collections.ConfigDict) -> str:
  """config.teacher.path, or `<config.teacher.workdir>/params.npz`."""
  t = config.teacher
  if bool(t.path) == bool(t.workdir):
    raise ValueError("set one of config.teacher.path (a classifier params file) and config.teacher.workdir (a "
                     f"fine-tune workdir); got path={t.path!r}, workdir={t.workdir!r}")
  path = t.path or os.path.join(t.workdir, "params.npz")
  if t.workdir and not os.path.isfile(path):
    raise FileNotFoundError(f"config.teacher.workdir={t.workdir!r} has no params.npz (did that fine-tune finish?)")
  return path


def load_teacher(config: ml_collections.ConfigDict, num_classes: int) -> tuple[VideoClassifier, dict, str]:
  """-> (the teacher classifier as its file's metadata describes it, its params (numpy, shape-checked), file)."""
  path = teacher_file(config)
  params, meta = params_io.load_params(path)
  if meta.get("kind") != "classifier" or "head" not in params:
    raise ValueError(f"teacher {path!r} holds {meta.get('kind')!r} params; distillation needs a fine-tuned "
                     "classifier (kind 'classifier': a fine-tune workdir's params.npz, or umt-import-umt --kind "
                     "classifier)")
  classes = params["head"]["bias"].shape[0]
  if classes != num_classes:
    raise ValueError(f"teacher {path!r} has {classes} classes, the student {num_classes}: distil on the "
                     "teacher's label set (config.model.num_classes / config.data.path)")
  teacher = VideoClassifier(encoder=meta["encoder"], num_classes=classes, dtype=jnp.dtype(config.teacher.dtype))
  s = config.data.size
  abstract = jax.eval_shape(teacher.init, jax.random.key(0), jnp.zeros((1, config.data.num_frames, s, s, 3)))
  params_io.check_fits(params, nn.meta.unbox(abstract["params"]), f"teacher {path!r}")
  return teacher, params, path


def distillation(student: VideoClassifier, teacher: VideoClassifier, config: ml_collections.ConfigDict):
  """The objective: loss(params, batch, rng, teacher_params) -> (total, {'loss_distill', 'loss_label'})."""
  dtype, d = jnp.dtype(config.model.dtype), config.distill

  def loss(params, batch, rng, teacher_params):
    k_mix, k_drop = jax.random.split(rng)
    video, targets = finetune.training_clips(k_mix, batch, student.num_classes, config.mixup)
    t_logits = jax.lax.stop_gradient(teacher.apply({"params": teacher_params}, video.astype(teacher.dtype)))
    logits = student.apply({"params": params}, video.astype(dtype), deterministic=False, rngs={"dropout": k_drop})
    return losses.combine({"distill": losses.distill_loss(logits, t_logits, d.temperature),
                           "label": mixup.soft_cross_entropy(logits, targets)},
                          {"distill": 1.0, "label": d.label_weight})
  return loss


def abstract_teacher(config: ml_collections.ConfigDict, num_classes: int) -> VideoClassifier:
  """The teacher as `config.teacher.variant` describes it (the variant's sizes and patch, the student's tubelet):
  what the mesh planner compiles without the teacher's weights."""
  if config.teacher.variant not in vit.VARIANTS:
    raise ValueError(f"config.teacher.variant={config.teacher.variant!r}: compiling without the teacher's weights "
                     f"needs its ViT variant, one of {'|'.join(vit.VARIANTS)}")
  enc = vit.vit_kwargs(config.teacher.variant, tubelet_size=config.model.tubelet_size)
  return VideoClassifier(encoder=enc, num_classes=num_classes, dtype=jnp.dtype(config.teacher.dtype))


def with_teacher(config: ml_collections.ConfigDict, task: Task, teacher: VideoClassifier, tparams=None,
                 devices=None) -> Task:
  """The student's fine-tuning Task + the frozen `teacher` -> the distillation Task (its loss, the teacher as the
  step's sharded argument, its forward FLOPs). tparams None: abstract arrays (compile-only)."""
  abstract = nn.meta.unbox(jax.eval_shape(task.init, jax.random.key(0)))
  student = finetune.build(config, teacher.num_classes, "pos_embed" in abstract["encoder"])
  t_params, t_sh = place_teacher(config, teacher, tparams, devices)
  t = teacher.encoder
  n = config.data.num_frames // t["tubelet_size"] * (config.data.size // t["patch_size"]) ** 2
  teacher_flops = config.batch_size * config.data.num_sample * flops.classifier_forward(
      n, t, teacher.num_classes, t["tubelet_size"])
  return dataclasses.replace(task, loss=distillation(student, teacher, config), extra=t_params, extra_shardings=t_sh,
                             flops_per_step=task.flops_per_step + teacher_flops)


def make_task(config: ml_collections.ConfigDict, devices=None) -> Task:
  task = finetune.make_task(config, devices)  # the student, its init, data and evaluation
  if config.mode == "eval":
    return task
  num_classes = nn.meta.unbox(jax.eval_shape(task.init, jax.random.key(0)))["head"]["bias"].shape[0]
  teacher, tparams, _ = load_teacher(config, num_classes)
  return with_teacher(config, task, teacher, tparams, devices)


def train(config: ml_collections.ConfigDict, workdir: str, devices=None):
  task = make_task(config, devices)
  if config.mode == "eval":
    return finetune.evaluate_only(config, workdir, task, devices)
  return run_and_save(config, workdir, task, finetune.export_meta(config, task), devices)
