"""Fine-tuning for classification: a stage-1 student (or a random init) -> mean pool -> fc_norm -> head.

Recipe pieces from the official fine-tuning: layer-wise lr decay (patch_embed -> 0, blocks.i -> i+1, head ->
depth+1), no weight decay on 1-D params and position tables, drop path, repeated augmentation (`data.num_sample`
views of each clip folded into the batch), Mixup/CutMix with label smoothing and a soft-target cross entropy,
and evaluation that averages softmax over clips × crops, reporting top-1/top-5 (and top-1 per temporal /
appearance class group when the data marks them).

Init: `init_from.workdir` (a stage-1 workdir: its encoder) or `init_from.params` (a params file: a classifier
gives everything when its class count matches, or when `init_from.label_map` picks its head rows, else all but
the head; a umt_pretrain / umt_stage2 file gives its encoder). `mode=eval`: only the multi-view test of the init
params, written to `<workdir>/eval.json`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from umt_jax import checkpoint, config_lib, evaluation, flops, input_pipeline as ip, mixup, params_io, sharding
from umt_jax.models.heads import VideoClassifier
from umt_jax.train_loop import Result, Task, run_and_save, setup_mesh

# Where each params-file kind keeps the encoder.
ENCODER_AT = {"classifier": ("encoder",), "umt_pretrain": ("encoder",), "videomae_pretrain": ("encoder",),
              "umt_stage2": ("vision_encoder", "encoder")}


def build(config: ml_collections.ConfigDict, num_classes: int, pos_param: bool = False) -> VideoClassifier:
  """pos_param: the encoder carries an imported position table (`encoder/pos_embed`) instead of computing it."""
  enc = config_lib.student_kwargs(config.model)
  return VideoClassifier(encoder={**enc, "pos_param": True} if pos_param else enc, num_classes=num_classes,
                         fc_drop_rate=config.model.fc_drop, merge_pool=config.model.merge.pool,
                         dtype=jnp.dtype(config.model.dtype))


def model_task(config: ml_collections.ConfigDict, num_classes: int, pos_param: bool = False) -> Task:
  """The stage without data: init, the Mixup/CutMix soft-target loss, depth for layer decay, analytic FLOPs."""
  model = build(config, num_classes, pos_param)
  dtype, m = jnp.dtype(config.model.dtype), config.mixup
  s = config.data.size
  init = lambda rng: model.init({"params": rng}, jnp.zeros((1, config.data.num_frames, s, s, 3)))["params"]

  def loss(params, batch, rng, _):
    k_mix, k_drop = jax.random.split(rng)
    video, targets = training_clips(k_mix, batch, num_classes, m)
    logits = model.apply({"params": params}, video.astype(dtype), deterministic=False, rngs={"dropout": k_drop})
    return mixup.soft_cross_entropy(logits, targets), {}

  enc = model.encoder
  step_flops = flops.finetune_step(config.batch_size * config.data.num_sample, config.data.num_frames,
                                   s // enc["patch_size"], enc, num_classes, config.model.tubelet_size)
  return Task(init=init, loss=loss, flops_per_step=step_flops, depth=enc.get("depth", 12))


def training_clips(key: jax.Array, batch: dict, num_classes: int, m: ml_collections.ConfigDict
                   ) -> tuple[jax.Array, jax.Array]:
  """A training batch -> (video (B·num_sample, T, S, S, 3) normalised fp32, Mixup/CutMix-mixed by `m`
  (config.mixup); soft targets (B·num_sample, num_classes)). Repeated views (B, num_sample, T, S, S, 3) are
  folded into the batch clip by clip, each with its clip's label (the official `multiple_samples_collate`)."""
  video = batch["video"].reshape((-1,) + batch["video"].shape[-4:])
  labels = jnp.repeat(batch["label"], video.shape[0] // batch["label"].shape[0])
  return mixup.mix(key, ip.normalize(video, jnp.float32), labels, num_classes, m.mixup_alpha, m.cutmix_alpha,
                   m.prob, m.switch_prob, m.label_smoothing)


def read_label_map(path: str, num_classes: int, old_classes: int) -> np.ndarray:
  """init_from.label_map -> (num_classes,) old head rows: a JSON list (VideoMAE V2's label_710to400.json) or one
  index a line (blank lines skipped; a UTF-8 BOM and CRLF line ends are fine)."""
  with open(path, encoding="utf-8-sig") as f:
    text = f.read()
  if text.lstrip().startswith("["):
    try:
      items = [(f"entry {i}", v) for i, v in enumerate(json.loads(text))]
    except json.JSONDecodeError as e:
      raise ValueError(f"init_from.label_map={path!r} is not a JSON list: {e}") from None
  else:
    items = [(f"line {i}", v.strip()) for i, v in enumerate(text.splitlines(), 1) if v.strip()]
  rows = []
  for where, v in items:
    try:
      row = int(v)
    except (TypeError, ValueError):
      row = -1
    if not 0 <= row < old_classes or isinstance(v, (bool, float)):
      raise ValueError(f"init_from.label_map={path!r} {where}: {v!r} is not a head row in [0, {old_classes})")
    rows.append(row)
  if len(rows) != num_classes:
    raise ValueError(f"init_from.label_map={path!r} maps {len(rows)} classes; the model has {num_classes}")
  return np.asarray(rows)


def params_init(config: ml_collections.ConfigDict, num_classes: int) -> tuple[dict, bool]:
  """The subtrees of the classifier that `init_from.params` gives (numpy, unchecked) -> (tree, pos_param)."""
  path, label_map = config.init_from.params, config.init_from.label_map
  params, meta = params_io.load_params(path)
  kind = meta.get("kind")
  if kind not in ENCODER_AT:
    raise ValueError(f"init_from.params={path!r} holds {kind!r} params; expected one of {sorted(ENCODER_AT)}")
  enc = params
  for k in ENCODER_AT[kind]:
    if k not in enc:
      raise ValueError(f"init_from.params={path!r}: a {kind} file without {'/'.join(ENCODER_AT[kind])}")
    enc = enc[k]
  out = {"encoder": {k: v for k, v in enc.items() if k != "norm"}}  # pretraining's final norm: fc_norm replaces it
  if kind == "classifier":
    head = params["head"]
    if label_map:
      rows = read_label_map(label_map, num_classes, head["bias"].shape[0])
      head = {"kernel": head["kernel"][:, rows], "bias": head["bias"][rows]}
    out["fc_norm"] = params["fc_norm"]  # kept with a new head too, as the official fine-tuning does
    if head["bias"].shape[0] == num_classes:
      out["head"] = head
    else:
      print(f"init_from.params: {path} has {head['bias'].shape[0]} classes, the model {num_classes}: a new head",
            file=sys.stderr)
  elif label_map:
    raise ValueError(f"init_from.label_map re-maps a classifier's head, but init_from.params={path!r} is {kind}")
  return out, "pos_embed" in out["encoder"]


def make_task(config: ml_collections.ConfigDict, devices=None) -> Task:
  if config.mode not in ("train", "eval"):
    raise ValueError(f"config.mode={config.mode!r}; expected 'train' or 'eval'")
  evaluating = config.mode == "eval"
  if evaluating and not (config.data.eval_split and config.init_from.params):
    raise ValueError("config.mode=eval evaluates config.init_from.params (a classifier) on config.data.eval_split; "
                     "set both")
  if config.init_from.workdir and config.init_from.params:
    raise ValueError("set one of config.init_from.workdir and config.init_from.params, not both")
  if config.init_from.label_map and not config.init_from.params:
    raise ValueError("config.init_from.label_map re-maps the head of config.init_from.params, which is empty")
  splits = (config.data.eval_split,) if evaluating else (config.data.split, config.data.eval_split)
  meta = config_lib.check_data(config, splits)
  num_classes = config.model.num_classes or len(meta.get("label_names") or [])
  if not num_classes:
    raise ValueError(f"config.model.num_classes is 0 and {config.data.path} names no labels")
  loaded, pos_param = params_init(config, num_classes) if config.init_from.params else (None, False)
  model = build(config, num_classes, pos_param)
  dtype = jnp.dtype(config.model.dtype)
  task = model_task(config, num_classes, pos_param)
  random_init = lambda shardings: jax.jit(lambda k: nn.meta.unbox(task.init(k)), out_shardings=shardings)(
      jax.random.key(config.seed))
  load_init = None
  if config.init_from.workdir:
    def load_init(abstract, shardings):
      enc, step = checkpoint.restore_subtree(config.init_from.workdir, ("params", "encoder"), abstract["encoder"],
                                             shardings["encoder"])
      print(f"initialised the encoder from {config.init_from.workdir} (step {step})")
      return {**random_init(shardings), "encoder": enc}
  elif loaded is not None:
    params_io.check_fits(loaded, nn.meta.unbox(jax.eval_shape(task.init, jax.random.key(0))),
                         f"init_from.params={config.init_from.params!r}", only_given=True)
    if evaluating and "head" not in loaded:
      raise ValueError(f"config.mode=eval: init_from.params={config.init_from.params!r} has no {num_classes}-class "
                       "head to evaluate (set init_from.label_map, or model.num_classes to its class count)")

    def load_init(abstract, shardings):
      got = {k: params_io.place(v, abstract[k], shardings[k]) for k, v in loaded.items()}
      print(f"initialised {', '.join(sorted(got))} from {config.init_from.params}")
      return {**(random_init(shardings) if set(abstract) - set(got) else {}), **got}  # a whole classifier: no init

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

  task = dataclasses.replace(task, load_init=load_init, evaluate=evaluate)
  if evaluating:
    return task
  train_spec = config_lib.clip_spec(config.data)
  data = ip.train_dataset([ip.Source(config.data.path, config.data.split, clip=train_spec)], config.batch_size,
                          config.seed)
  return dataclasses.replace(task, train_data=data, clips_per_epoch=meta["splits"][config.data.split]["num_records"])


def evaluate_only(config: ml_collections.ConfigDict, workdir: str, task: Task, devices=None) -> Result:
  """mode=eval: the init params, sharded as training shards them, through the trainer's own final evaluation
  -> Result(eval=metrics); the metrics also go to <workdir>/eval.json."""
  mesh, rules = setup_mesh(config, devices)
  boxed = jax.eval_shape(task.init, jax.random.key(config.seed))
  shardings = sharding.param_shardings(boxed, mesh, rules, config.get("min_fsdp_size", 0))
  params = task.load_init(nn.meta.unbox(boxed), shardings)
  ev = task.evaluate(params, 0)
  if jax.process_index() == 0:
    record = {"params": os.path.abspath(config.init_from.params), "split": config.data.eval_split,
              "views": [config.data.test_clips, config.data.test_crops],
              **{k: None if math.isnan(v) else float(v) for k, v in ev.items()}}  # NaN: a group with no clips
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "eval.json"), "w") as f:
      json.dump(record, f, indent=1)
    print(f"eval of {config.init_from.params} on {config.data.eval_split} ({config.data.test_clips} clips × "
          f"{config.data.test_crops} crops): " + ", ".join(f"{k} {v:.2f}" for k, v in ev.items())
          + f"; wrote {workdir}/eval.json")
  return Result(0, params, [], eval=ev)


def export_meta(config: ml_collections.ConfigDict, task: Task) -> dict:
  """params.npz metadata of the trained classifier (kind 'classifier'; an imported position table kept)."""
  meta = config_lib.student_export_meta(config, "classifier")
  if config.init_from.params and "pos_embed" in jax.eval_shape(task.init, jax.random.key(0))["encoder"]:
    meta["encoder"]["pos_param"] = True
  return meta


def train(config: ml_collections.ConfigDict, workdir: str, devices=None):
  task = make_task(config, devices)
  if config.mode == "eval":
    return evaluate_only(config, workdir, task, devices)
  return run_and_save(config, workdir, task, export_meta(config, task), devices)
