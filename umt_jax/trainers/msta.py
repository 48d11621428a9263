"""MSTA: multi-modal spatio-temporal adapters on a frozen video-language model, with the description-guided
consistency loss (Chen et al., CVPR 2025; no official code, see the README's MSTA section).

Per step: the batch's clips -> the adapted video tower -> video embeddings v (B, E); every training class's
prompt (`msta.template`, "a video of {}") -> the adapted text tower -> w (C, E); logits = exp(logit_scale) ·
cos(v, w); L = CE + `msta.cc_weight` · (2 − cos(w_c, D_s^c) − cos(w_c, D_t^c)) averaged over the classes, where
D_s / D_t are the mean frozen-text-tower embeddings of each class's spatial / temporal descriptions (ETL4Video
files), computed once here and passed into the step. Only the adapters are params: the optimizer state holds
nothing else, and the frozen CLIP goes into the step as an argument (`Task.extra`), never checkpointed.

Protocols (`msta.protocol`):
  supervised     train on every clip of data.split, evaluate all classes on data.eval_split;
  few_shot       `msta.shots` clips per class drawn by `msta.split_seed`; evaluate all classes;
  base_to_novel  train on `msta.base_classes` (names, comma-separated; default the first half), optionally
                 `shots` per class; evaluate base clips among the base classes, novel clips among the novel
                 ones, and their harmonic mean;
  zero_shot      train on data.split, evaluate on another dataset (`msta.eval_path`, `msta.eval_split`) with
                 its own label set.
Inference uses the template branch only (no descriptions). The final params.npz holds the adapters only.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tokenizers

from data import records
from umt_jax import config_lib, descriptions, evaluation, input_pipeline as ip, losses, params_io, sharding
from umt_jax.convert import viclip_import
from umt_jax.models.adapters import AdapterConfig
from umt_jax.models.clip import CLIPConfig
from umt_jax.models.msta import MSTAModel
from umt_jax.tokenizer import WordTokenizer
from umt_jax.train_loop import Task, run_and_save, setup_mesh

PROTOCOLS = ("supervised", "few_shot", "base_to_novel", "zero_shot")
TRAINABLE = ("adapters", "video_tower")
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def adapter_config(m: ml_collections.ConfigDict) -> AdapterConfig:
  return AdapterConfig(start=m.start, end=m.end, dim=m.dim, scale=m.scale, temporal=m.temporal, kernel=m.kernel)


def load_backbone(path: str, backbone: str) -> tuple[CLIPConfig, dict]:
  """'clip_frames': a CLIP params file with both towers (umt-import-clip without --visual_only, or stage 0's
  params.npz); 'viclip': a ViCLIP params file (umt-import-viclip)."""
  if backbone == "viclip":
    return viclip_import.load_viclip(path)
  params, meta = params_io.load_params(path)
  if meta.get("kind") != "clip" or "token_embedding" not in params:
    raise ValueError(f"config.msta.clip={path!r} holds {meta.get('kind')!r} params; MSTA needs a full CLIP with "
                     "its text tower (kind 'clip': umt-import-clip without --visual_only, or stage 0's params.npz)")
  return CLIPConfig(**meta["clip_config"]), params


def load_tokenizer(path: str, context_length: int) -> Callable[[Sequence[str]], np.ndarray]:
  """texts -> ids (N, L) int32 with CLIP's conventions (end-of-text = the largest id). `path`: the demo's
  WordTokenizer file (stage 0's tokenizer.json) or a Hugging Face `tokenizer.json` (a CLIP folder's)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config.msta.tokenizer={path!r} not found (the CLIP's tokenizer.json)")
  with open(path) as f:
    spec = json.load(f)
  if "words" in spec:
    word = WordTokenizer.load(path)
    if word.context_length > context_length:
      raise ValueError(f"tokenizer {path!r} makes {word.context_length} tokens; the CLIP takes {context_length}")
    return lambda texts: np.stack([word(t) for t in texts])
  if "model" not in spec:
    raise ValueError(f"tokenizer {path!r} is neither a WordTokenizer file nor a Hugging Face tokenizer.json")
  hf = tokenizers.Tokenizer.from_file(path)
  hf.enable_truncation(context_length)
  hf.enable_padding(pad_id=0, length=context_length)
  return lambda texts: np.asarray([e.ids for e in hf.encode_batch(list(texts))], np.int32)


def class_texts(meta: dict) -> list[str]:
  """What a prompt names each class: metadata's `class_text` (the synthetic set), else the label name."""
  return list(meta.get("class_text") or [n.replace("_", " ") for n in meta["label_names"]])


def split_labels(path: str, split: str) -> np.ndarray:
  """Every record's label (one pass over the split; few-shot sets are sampled from it)."""
  src = ip.open_source(path, split)
  return np.asarray([records.unpack(src[i])["label"] for i in range(len(src))])


def sample_shots(labels: np.ndarray, classes: Sequence[int], shots: int, seed: int, names: Sequence[str]
                 ) -> np.ndarray:
  """`shots` record indices per class (all of them for shots 0), drawn per class by (seed, class) -> sorted."""
  out = []
  for c in classes:
    idx = np.flatnonzero(labels == c)
    if shots and len(idx) < shots:
      raise ValueError(f"msta.shots={shots}: class {c} ({names[c]!r}) has only {len(idx)} training clips")
    out.append(np.random.default_rng([seed, c]).choice(idx, shots, replace=False) if shots else idx)
  return np.sort(np.concatenate(out))


def base_classes(m: ml_collections.ConfigDict, names: Sequence[str]) -> list[int]:
  if not m.base_classes:
    return list(range((len(names) + 1) // 2))
  wanted = [s.strip() for s in m.base_classes.split(",") if s.strip()]
  unknown = [w for w in wanted if w not in names]
  if unknown:
    raise ValueError(f"config.msta.base_classes: {unknown} are not label names of the dataset ({list(names)})")
  return sorted(names.index(w) for w in wanted)


def training_set(config: ml_collections.ConfigDict, names: Sequence[str]) -> tuple[list[int], np.ndarray | None]:
  """-> (the protocol's training classes, the record indices of data.split it trains on; None = all of them)."""
  m = config.msta
  train_classes = base_classes(m, names) if m.protocol == "base_to_novel" else list(range(len(names)))
  if not m.shots and len(train_classes) == len(names):
    return train_classes, None
  labels = split_labels(config.data.path, config.data.split)
  return train_classes, sample_shots(labels, train_classes, m.shots, m.split_seed, names)


def description_embeddings(config, meta: dict, model: MSTAModel, clip_params, tokenize, classes: Sequence[int]
                           ) -> tuple[np.ndarray, np.ndarray]:
  """Each training class's mean frozen-text embedding of its spatial and of its temporal descriptions."""
  m = config.msta
  where, name = m.descriptions, m.description_name
  if not where and meta.get("descriptions"):  # the synthetic set writes its own
    where, name = os.path.join(config.data.path, meta["descriptions"]["dir"]), meta["descriptions"]["dataset"]
  if not where or not name:
    raise ValueError("config.msta.cc_weight > 0 needs descriptions: set config.msta.descriptions (a folder of "
                     "ETL4Video {N}_{s|t}_description_{name}.json files) and config.msta.description_name, or "
                     "config.msta.cc_weight=0 (MSTA without the consistency loss)")
  encode = jax.jit(lambda c, ids: model.text_embed(c, None, ids))
  out = []
  for kind in descriptions.KINDS:
    per_class = descriptions.read_descriptions(descriptions.description_path(where, m.num_descriptions, kind, name),
                                               meta["label_names"])
    sentences = [per_class[c] for c in classes]
    flat = [s for group in sentences for s in group]
    emb = np.concatenate([np.asarray(encode(clip_params, tokenize(flat[i:i + 256]))) for i in range(0, len(flat), 256)])
    ends = np.cumsum([len(g) for g in sentences])
    out.append(np.stack([emb[e - len(g):e].mean(0) for g, e in zip(sentences, ends)]))
  return out[0], out[1]


def pixels(video: jax.Array, norm: str) -> jax.Array:
  """uint8 clips -> the backbone's input normalisation: 'clip' OpenAI's mean / std; 'imagenet' (ViCLIP's, and the
  demo's stage-0 CLIP's); 'auto' = 'imagenet' for ViCLIP, else 'clip'."""
  if norm == "imagenet":
    return ip.normalize(video)
  if norm != "clip":
    raise ValueError(f"config.msta.pixel_norm={norm!r}; expected 'auto', 'clip' or 'imagenet'")
  return (video.astype(jnp.float32) / 255 - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)


def pixel_norm(m: ml_collections.ConfigDict) -> str:
  return ("imagenet" if m.backbone == "viclip" else "clip") if m.pixel_norm == "auto" else m.pixel_norm


def joiner(model: MSTAModel, trainable: str) -> Callable:
  """(trained params, frozen CLIP params) -> (CLIP params, adapter params | None), what MSTAModel's methods take.
  'adapters': the params are the adapters; 'video_tower' (full fine-tuning of the video tower, the baseline):
  they are the CLIP's video tower, and the frozen tree holds the rest."""
  if trainable not in TRAINABLE:
    raise ValueError(f"config.msta.trainable={trainable!r}; expected one of {TRAINABLE}")
  if trainable == "adapters":
    return lambda params, frozen_clip: (frozen_clip, params)
  return lambda params, frozen_clip: ({**frozen_clip, model.video_tower: params}, None)


def objective(model: MSTAModel, config: ml_collections.ConfigDict):
  """loss(params, batch, rng, frozen) -> (CE + α·L_CC, {'loss_ce', 'loss_cc', 'accuracy'});
  frozen = {'clip', 'class_ids' (C, L), 'label_map' (num labels,) -> training class, ['desc_s', 'desc_t']}."""
  norm, join = pixel_norm(config.msta), joiner(model, config.msta.trainable)

  def loss(params, batch, rng, frozen):
    del rng
    clip_params, adapters = join(params, frozen["clip"])
    video = model.video_embed(clip_params, adapters, pixels(batch["video"], norm))
    text = model.text_embed(clip_params, adapters, frozen["class_ids"])
    logits = model.logits(clip_params, video, text)
    labels = frozen["label_map"][batch["label"]]
    terms = {"ce": optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()}
    if config.msta.cc_weight:
      terms["cc"] = losses.consistency_loss(text, frozen["desc_s"], frozen["desc_t"])
    total, aux = losses.combine(terms, {"ce": 1.0, "cc": config.msta.cc_weight})
    return total, {**aux, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}
  return loss


def make_task(config: ml_collections.ConfigDict, devices=None) -> tuple[Task, dict]:
  """-> (the task, export metadata for params.npz)."""
  m = config.msta
  if m.protocol not in PROTOCOLS:
    raise ValueError(f"config.msta.protocol={m.protocol!r}; expected one of {PROTOCOLS}")
  if m.protocol == "few_shot" and m.shots <= 0:
    raise ValueError("config.msta.protocol='few_shot' needs config.msta.shots > 0 (clips per class)")
  if m.protocol == "zero_shot" and not (m.eval_path and m.eval_split):
    raise ValueError("config.msta.protocol='zero_shot' evaluates on another dataset: set config.msta.eval_path and "
                     "config.msta.eval_split")
  if not m.clip:
    raise ValueError("config.msta.clip is empty: set it to a CLIP params file with both towers")
  if m.trainable == "video_tower" and m.cc_weight:
    raise ValueError("config.msta.trainable='video_tower' trains no text params, so L_CC is a constant: set "
                     "config.msta.cc_weight=0")
  meta = config_lib.check_data(config, (config.data.split, config.data.eval_split))
  names = meta["label_names"]
  cfg, clip_params = load_backbone(m.clip, m.backbone)
  tokenize = load_tokenizer(m.tokenizer or os.path.join(os.path.dirname(m.clip), "tokenizer.json"),
                            cfg.context_length)
  model = MSTAModel(cfg, adapter_config(m), config.data.num_frames, m.backbone)
  params_io.check_fits(clip_params, nn.meta.unbox(model.abstract_clip()), f"config.msta.clip={m.clip!r}")

  train_classes, subset = training_set(config, names)
  n_train = len(subset) if subset is not None else meta["splits"][config.data.split]["num_records"]
  label_map = np.full(len(names), -1, np.int32)
  label_map[train_classes] = np.arange(len(train_classes))

  mesh, rules = setup_mesh(config, devices)
  clip_sh = sharding.param_shardings(model.abstract_clip(), mesh, rules, config.min_fsdp_size)
  clip_dev = jax.tree.map(lambda x, s: jax.device_put(jnp.asarray(x, jnp.float32), s), clip_params, clip_sh)
  join, tower = joiner(model, m.trainable), model.video_tower
  texts = class_texts(meta)
  frozen_clip = clip_dev if m.trainable == "adapters" else {k: v for k, v in clip_dev.items() if k != tower}
  frozen = {"clip": frozen_clip, "class_ids": tokenize([m.template.format(texts[c]) for c in train_classes]),
            "label_map": label_map}
  if m.cc_weight:
    frozen["desc_s"], frozen["desc_t"] = description_embeddings(config, meta, model, clip_dev, tokenize,
                                                                train_classes)
  rep = sharding.replicated(mesh)
  frozen = {k: v if k == "clip" else jax.device_put(v, rep) for k, v in frozen.items()}
  frozen_sh = {k: {n: clip_sh[n] for n in frozen_clip} if k == "clip" else rep for k in frozen}

  if m.trainable == "adapters":
    init, load_init, what = model.init, None, "adapters"
  else:  # full fine-tuning of the video tower from the CLIP file
    init, what = model.init_video_tower, f"video tower ({tower})"
    load_init = lambda abstract, shardings: clip_dev[tower]
  n_train_p = sum(x.size for x in jax.tree.leaves(nn.meta.unbox(jax.eval_shape(init, jax.random.key(0)))))
  n_frozen = sum(np.size(x) for x in jax.tree.leaves(frozen_clip))
  print(f"MSTA trainable params: {n_train_p:,} {what} = {100 * n_train_p / (n_train_p + n_frozen):.2f}% of "
        f"{n_train_p + n_frozen:,} (frozen {n_frozen:,}); {m.protocol}: {len(train_classes)} training classes, "
        f"{n_train} clips", file=sys.stderr)

  spec = config_lib.clip_spec(config.data)
  data = ip.train_dataset([ip.Source(config.data.path, config.data.split, clip=spec,
                                     indices=None if subset is None else tuple(subset.tolist()))],
                          config.batch_size, config.seed)
  task = Task(init=init, loss=objective(model, config), train_data=data, clips_per_epoch=n_train, extra=frozen,
              extra_shardings=frozen_sh, load_init=load_init,
              evaluate=make_evaluate(config, meta, model, frozen_clip, join, tokenize, train_classes, mesh))
  export = {"kind": "msta_adapters" if m.trainable == "adapters" else "msta_video_tower",
            "adapters": dataclasses.asdict(model.adapter_cfg), "backbone": m.backbone,
            "clip": os.path.abspath(m.clip), "num_frames": config.data.num_frames, "template": m.template,
            "train_classes": [names[c] for c in train_classes], "trainable_params": int(n_train_p)}
  return task, export


def make_evaluate(config, meta: dict, model: MSTAModel, clip_params, join: Callable, tokenize,
                  train_classes: Sequence[int], mesh):
  """evaluate(params, step) -> top-1 (and per-group) of the template classifier on the eval split; for
  base_to_novel base_top1 / novel_top1 / hm; None without an eval split."""
  m = config.msta
  path, split = (m.eval_path, m.eval_split) if m.protocol == "zero_shot" else (config.data.path, config.data.eval_split)
  if not split:
    return None
  eval_meta = ip.read_metadata(path)
  texts, names = class_texts(eval_meta), eval_meta["label_names"]
  ids = tokenize([m.template.format(t) for t in texts])
  src = ip.Source(path, split, clip=config_lib.clip_spec(config.data))
  # The frozen CLIP goes in as an argument (closed over, it would be baked into the program as constants).
  video_fn = lambda p, v: model.video_embed(*join(*p), pixels(v, pixel_norm(m)))
  text_fn = jax.jit(lambda p, c: model.text_embed(*join(p, c), ids))
  bs = config.data.eval_batch_size or config.batch_size

  def evaluate(params, step):
    del step
    emb, labels = evaluation.predict(video_fn, (params, clip_params), src, bs, mesh)  # averaged over views
    emb = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
    sims = emb @ np.asarray(text_fn(params, clip_params)).T
    if m.protocol != "base_to_novel":
      return evaluation.accuracy(sims, labels, names, eval_meta.get("temporal_classes", ()))
    out = {}
    for group, classes in (("base", list(train_classes)),
                           ("novel", [c for c in range(len(names)) if c not in train_classes])):
      rows = np.isin(labels, classes)
      pred = np.asarray(classes)[np.argmax(sims[rows][:, classes], axis=1)]
      out[f"{group}_top1"] = 100 * float(np.mean(pred == labels[rows])) if rows.any() else float("nan")
    b, n = out["base_top1"], out["novel_top1"]
    out["hm"] = 2 * b * n / (b + n) if b + n > 0 else 0.0
    return out

  return evaluate


def train(config: ml_collections.ConfigDict, workdir: str, devices=None):
  task, export = make_task(config, devices)
  return run_and_save(config, workdir, task, export, devices)
