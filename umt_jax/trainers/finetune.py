"""Fine-tuning for classification: a stage-1 student (or a random init) -> mean pool -> fc_norm -> head.

Recipe pieces from the official fine-tuning: layer-wise lr decay (patch_embed -> 0, blocks.i -> i+1, head ->
depth+1), no weight decay on 1-D params and position tables, drop path, Mixup/CutMix with label smoothing and a
soft-target cross entropy, and evaluation that averages softmax over clips × crops, reporting top-1/top-5 (and
top-1 per temporal / appearance class group when the data marks them).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from umt_jax import checkpoint, config_lib, evaluation, flops, input_pipeline as ip, mixup
from umt_jax.models.heads import VideoClassifier
from umt_jax.train_loop import Task, run_and_save, setup_mesh


def build(config: ml_collections.ConfigDict, num_classes: int) -> VideoClassifier:
  return VideoClassifier(encoder=config_lib.student_kwargs(config.model), num_classes=num_classes,
                         fc_drop_rate=config.model.fc_drop, dtype=jnp.dtype(config.model.dtype))


def model_task(config: ml_collections.ConfigDict, num_classes: int) -> Task:
  """The stage without data: init, the Mixup/CutMix soft-target loss, depth for layer decay, analytic FLOPs."""
  model = build(config, num_classes)
  dtype, m = jnp.dtype(config.model.dtype), config.mixup
  s = config.data.size
  init = lambda rng: model.init({"params": rng}, jnp.zeros((1, config.data.num_frames, s, s, 3)))["params"]

  def loss(params, batch, rng, _):
    k_mix, k_drop = jax.random.split(rng)
    video, targets = mixup.mix(k_mix, ip.normalize(batch["video"], jnp.float32), batch["label"], num_classes,
                               m.mixup_alpha, m.cutmix_alpha, m.prob, m.switch_prob, m.label_smoothing)
    logits = model.apply({"params": params}, video.astype(dtype), deterministic=False, rngs={"dropout": k_drop})
    return mixup.soft_cross_entropy(logits, targets), {}

  enc = model.encoder
  step_flops = flops.finetune_step(config.batch_size, config.data.num_frames, s // enc["patch_size"], enc,
                                   num_classes, config.model.tubelet_size)
  return Task(init=init, loss=loss, flops_per_step=step_flops, depth=enc.get("depth", 12))


def make_task(config: ml_collections.ConfigDict, devices=None) -> Task:
  meta = config_lib.check_data(config, (config.data.split, config.data.eval_split))
  num_classes = config.model.num_classes or len(meta.get("label_names") or [])
  if not num_classes:
    raise ValueError(f"config.model.num_classes is 0 and {config.data.path} names no labels")
  model = build(config, num_classes)
  dtype = jnp.dtype(config.model.dtype)
  task = model_task(config, num_classes)
  load_init = None
  if config.init_from.workdir:
    def load_init(abstract, shardings):
      params = jax.jit(lambda k: nn.meta.unbox(task.init(k)), out_shardings=shardings)(jax.random.key(config.seed))
      enc, step = checkpoint.restore_subtree(config.init_from.workdir, ("params", "encoder"), abstract["encoder"],
                                             shardings["encoder"])
      print(f"initialised the encoder from {config.init_from.workdir} (step {step})")
      return {**params, "encoder": enc}

  mesh, _ = setup_mesh(config, devices)
  evaluate = None
  if config.data.eval_split:
    src = ip.Source(config.data.path, config.data.eval_split, clip=config_lib.clip_spec(config.data))
    fn = evaluation.softmax_views(lambda p, v: model.apply({"params": p}, v.astype(dtype)))
    eval_bs = config.data.eval_batch_size or config.batch_size

    def evaluate(params, step):
      del step
      probs, labels = evaluation.predict(fn, params, src, eval_bs, mesh)
      return evaluation.accuracy(probs, labels, meta.get("label_names"), meta.get("temporal_classes", ()))

  train_spec = config_lib.clip_spec(config.data)
  data = ip.train_dataset([ip.Source(config.data.path, config.data.split, clip=train_spec)], config.batch_size,
                          config.seed)
  return dataclasses.replace(task, train_data=data, clips_per_epoch=meta["splits"][config.data.split]["num_records"],
                             load_init=load_init, evaluate=evaluate)


def train(config: ml_collections.ConfigDict, workdir: str, devices=None):
  return run_and_save(config, workdir, make_task(config, devices),
                      config_lib.student_export_meta(config, "classifier"), devices)
