"""A config's training stage without data: the Task and global batch shapes that the mesh planner compiles and
the step benchmark runs. The teacher is `config.teacher.arch` (UMT) or `config.teacher.variant` (distillation):
abstract arrays, no weights are needed.
"""
from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from umt_jax.models.clip import teacher_arch
from umt_jax.train_loop import Task
from umt_jax.trainers import distill, finetune, umt_pretrain, videomae_pretrain


def stage_task(config: ml_collections.ConfigDict, devices=None, num_classes: int = 400) -> tuple[Task, dict]:
  """-> (data-free Task, {name: (global shape, dtype)}); fine-tuning uses `num_classes` when the config has 0."""
  b, t, s = config.batch_size, config.data.num_frames, config.data.size
  batch = {"video": ((b, t, s, s, 3), jnp.uint8)}
  if config.trainer == "umt":
    tcfg = teacher_arch(config.teacher.arch, config.teacher.image_size)
    return umt_pretrain.model_task(config, tcfg, None, devices), batch
  if config.trainer == "videomae":
    return videomae_pretrain.model_task(config), videomae_pretrain.batch_shapes(config)
  classes = config.model.num_classes or num_classes
  labelled = {**videomae_pretrain.batch_shapes(config), "label": ((b,), jnp.int32)}  # with its repeated views
  if config.trainer == "finetune":
    return finetune.model_task(config, classes), labelled
  if config.trainer == "distill":  # the teacher as config.teacher.variant describes it
    return distill.with_teacher(config, finetune.model_task(config, classes), distill.abstract_teacher(config, classes),
                                None, devices), labelled
  raise ValueError(f"config.trainer={config.trainer!r}: only the 'umt', 'videomae', 'finetune' and 'distill' stages "
                   "run without data")
