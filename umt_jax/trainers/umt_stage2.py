"""UMT stage 2: video-text (and image-text) pretraining with VTC, VTM and MLM while the unmasked-token
alignment (UTA) with the frozen CLIP teacher continues; also retrieval fine-tuning and zero-shot evaluation.

Per step (one media type per step: a video-text or an image-text batch, interleaved in a seeded order as the
official MetaLoader; the two shapes compile separately and share the optimizer state): teacher forward on the
full clip -> semantic mask (video 0.8, image 0.5) -> student on the visible tokens -> UTA on the decoders;
pooled vision embedding vs [CLS] text embedding -> VTC over the global batch; hard negatives sampled from the
similarities -> fusion encoder on [pos; neg video; neg text] -> ITM head -> VTM; the caption masked (p 0.5)
-> text layers -> fusion with the visible tokens -> MLM. A term of weight 0 is not computed; without a teacher
(`teacher.path` empty: retrieval fine-tuning) the student sees every token and pools per frame.
Init: a stage-1 workdir (encoder + decoders) and an imported BERT, or a stage-2 params file. `mode=eval`:
zero-shot retrieval of `init_from.params` (or this workdir's params.npz) on `data.eval_path`.
"""
from __future__ import annotations

import dataclasses
import json
import os

import flax
import jax
import jax.numpy as jnp
import ml_collections

from umt_jax import checkpoint, config_lib, input_pipeline as ip, losses, masking, params_io, sharding
from umt_jax import tokenizer as tok
from umt_jax.convert.bert_import import load_bert
from umt_jax.convert.clip_import import load_teacher
from umt_jax.models.bert import BERT_PRESETS, BertConfig
from umt_jax.models.clip import CLIPTeacher
from umt_jax.models.umt_stage2 import UMTStage2
from umt_jax.train_loop import Task, run_and_save, setup_mesh
from umt_jax.trainers import stage2_retrieval
from umt_jax.trainers.umt_pretrain import place_teacher


def bert_config(config: ml_collections.ConfigDict, vocab_size: int) -> BertConfig:
  """config.text (preset + overrides > 0) with the vision width as the fusion layers' encoder width."""
  t = config.text
  if t.preset not in BERT_PRESETS:
    raise ValueError(f"config.text.preset={t.preset!r}; expected one of {sorted(BERT_PRESETS)}")
  over = {k: t[k] for k in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "fusion_layer") if t[k]}
  width = config_lib.student_kwargs(config.model)["embed_dim"]
  return dataclasses.replace(BERT_PRESETS[t.preset], vocab_size=vocab_size, encoder_width=width,
                             hidden_dropout=t.dropout, attention_dropout=t.dropout, **over)


def model_from_meta(meta: dict, dtype=jnp.float32) -> UMTStage2:
  """The UMTStage2 a params file describes (a trained one's or `umt-import-umt`'s metadata)."""
  return UMTStage2(vision=dict(encoder=meta["encoder"], clip_dim=meta["clip_dim"],
                               num_align_layers=meta["align_layers"], keep_temporal=meta.get("keep_temporal", True)),
                   text=BertConfig(**meta["bert_config"]), embed_dim=meta["embed_dim"], dtype=dtype)


def objectives(config: ml_collections.ConfigDict, model: UMTStage2, teacher: CLIPTeacher | None,
               special: tuple[int, int, int]):
  """loss(params, batch, rng, teacher_params) -> (weighted total, {loss_<term>, temp}); terms of weight 0 are
  skipped. The batch's frame count picks the mask ratio: T = 1 is an image step. special: (pad, cls, mask)."""
  dtype = jnp.dtype(config.model.dtype)
  weights = {k: float(v) for k, v in config.loss_weights.items() if v}
  pad_id, cls_id, mask_id = special

  def loss(params, batch, rng, teacher_params):
    video = ip.normalize(batch["video"], dtype)
    ids, mask, idx = batch["text"], batch["text_mask"], batch["idx"]
    k_mask, k_drop, k_neg, k_mlm = jax.random.split(rng, 4)
    apply = lambda method, *a: model.apply({"params": params}, *a, method=method, deterministic=False,
                                           rngs={"dropout": k_drop})
    terms, visible = {}, None
    if teacher is not None:
      ratio = config.teacher.mask_ratio if video.shape[1] > 1 else config.teacher.image_mask_ratio
      select = lambda attn: masking.semantic_frame_mask(k_mask, attn, ratio)
      feats, _, visible = jax.lax.stop_gradient(teacher.apply({"params": teacher_params}, video, select))
    aligned, tokens, v_emb = model.apply({"params": params}, video, visible, deterministic=False,
                                         align="uta" in weights, rngs={"dropout": k_drop},
                                         method=UMTStage2.encode_vision)
    if "uta" in weights:
      terms["uta"] = losses.uta_loss(aligned, feats)
    hidden, t_emb = apply(UMTStage2.encode_text, ids, mask)
    temp = losses.clamp_temp(params["temp"])
    if "vtc" in weights:
      terms["vtc"] = losses.vtc_loss(v_emb, t_emb, idx, temp)
    if "vtm" in weights:
      sim_v2t, sim_t2v = jax.lax.stop_gradient(losses.vtc_similarity(v_emb, t_emb, temp))
      neg_v, neg_t = losses.vtm_negatives(k_neg, sim_v2t, sim_t2v, idx)
      itm = apply(UMTStage2.itm_logits, jnp.concatenate([hidden, hidden, hidden[neg_t]]),
                  jnp.concatenate([mask, mask, mask[neg_t]]), jnp.concatenate([tokens, tokens[neg_v], tokens]))
      valid = jnp.concatenate([jnp.ones_like(neg_v, bool), neg_v >= 0, neg_t >= 0])
      terms["vtm"] = losses.vtm_loss(itm, valid)
    if "mlm" in weights:
      m_ids, labels = losses.mlm_mask(k_mlm, ids, mask, vocab_size=model.text.vocab_size, mask_id=mask_id,
                                      exempt_ids=(pad_id, cls_id), prob=config.stage2.mlm_prob)
      m_hidden, _ = apply(UMTStage2.encode_text, m_ids, mask)
      terms["mlm"] = losses.mlm_loss(apply(UMTStage2.mlm_logits, m_hidden, mask, tokens), labels)
    total, aux = losses.combine(terms, weights)
    aux.pop("loss")
    return total, {**aux, "temp": temp}
  return loss


def text_tokenizer(config: ml_collections.ConfigDict) -> tok.BertTokenizer:
  if not config.text.vocab:
    raise ValueError("config.text.vocab is empty: set it to the BERT vocab.txt (bert-base-uncased's, or the "
                     "demo's)")
  return tok.BertTokenizer(config.text.vocab, max_length=config.text.max_length)


def model_task(config: ml_collections.ConfigDict, bcfg: BertConfig, special: tuple[int, int, int],
               teacher_file: tuple | None = None, devices=None) -> tuple[Task, UMTStage2]:
  """The stage without data, and its model. teacher_file: (CLIPConfig, params) or None (no teacher: retrieval
  fine-tuning)."""
  enc = config_lib.student_kwargs(config.model)
  s, frames, length = config.data.size, config.data.num_frames, config.text.max_length
  teacher, t_params, t_sh, clip_dim, align, nv = None, None, None, 1, 0, frames * (s // enc["patch_size"]) ** 2
  if teacher_file is not None:
    tcfg, tparams = teacher_file
    if s // enc["patch_size"] != tcfg.grid:
      raise ValueError(f"student grid {s}/{enc['patch_size']} != teacher grid {tcfg.image_size}/{tcfg.patch_size}: "
                       "the teacher's tokens must line up with the student's")
    teacher = CLIPTeacher(tcfg, num_layers=config.teacher.align_layers, dtype=jnp.dtype(config.teacher.dtype))
    t_params, t_sh = place_teacher(config, teacher, tparams, devices)
    clip_dim, align = tcfg.embed_dim, config.teacher.align_layers
    nv = masking.num_visible(tcfg.grid ** 2, config.teacher.mask_ratio) * frames
  elif config.loss_weights.uta:
    raise ValueError("config.loss_weights.uta > 0 needs a teacher: set config.teacher.path (or set the weight 0)")
  model = UMTStage2(vision=dict(encoder=enc, clip_dim=clip_dim, num_align_layers=align,
                                keep_temporal=config.stage2.keep_temporal), text=bcfg,
                    embed_dim=config.stage2.embed_dim, temp_init=config.stage2.temp,
                    dtype=jnp.dtype(config.model.dtype))

  def init(rng):
    return model.init({"params": rng}, jnp.zeros((1, frames, s, s, 3)), jnp.arange(nv)[None],
                      jnp.zeros((1, length), jnp.int32), jnp.ones((1, length), jnp.int32))["params"]

  project = lambda p: {**p, "temp": jnp.clip(p["temp"], 0.001, 0.5)}  # the official clamps it in place
  return Task(init=init, loss=objectives(config, model, teacher, special), extra=t_params, extra_shardings=t_sh,
              project=project, depth=enc["depth"]), model


def eval_source(config: ml_collections.ConfigDict) -> ip.Source:
  """The retrieval test split: middle frames, center crop (the official test sampling)."""
  spec = config_lib.clip_spec(config.data, sampling="middle", crop="center", test_clips=1, test_crops=1)
  return ip.Source(config.data.eval_path, config.data.eval_split, clip=spec)


def _sources(paths: str, split: str, spec: ip.ClipSpec) -> list[ip.Source]:
  """Comma-separated dataset folders -> Sources weighted by their sizes (the corpora are concatenated)."""
  out = []
  for path in [p for p in paths.split(",") if p]:
    meta = ip.read_metadata(path)
    if split not in meta["splits"]:
      raise ValueError(f"config.data: split {split!r} is not in {path} (it has {sorted(meta['splits'])})")
    out.append(ip.Source(path, split, weight=meta["splits"][split]["num_records"], clip=spec))
  return out


def make_task(config: ml_collections.ConfigDict, devices=None) -> tuple[Task, dict]:
  """-> (the task with data, evaluation and initialisation; the params file's export metadata)."""
  config_lib.check_data(config, (config.data.split,))
  teacher_file = load_teacher(config.teacher.path) if config.teacher.path else None
  tokenizer = text_tokenizer(config)
  bcfg = bert_config(config, tokenizer.vocab_size)
  task, model = model_task(config, bcfg, (tokenizer.pad_id, tokenizer.cls_id, tokenizer.mask_id), teacher_file,
                           devices)

  b, seed = config.batch_size, config.seed
  media = [_sources(config.data.path, config.data.split, config_lib.clip_spec(config.data, captions=True))]
  if config.data.image_path:
    image_spec = config_lib.clip_spec(config.data, num_frames=1, captions=True)
    media.append(_sources(config.data.image_path, config.data.image_split, image_spec))
  transform = tok.TokenizeText(tokenizer)
  parts = [ip.train_dataset(srcs, b, seed + 104729 * m, transform=transform) for m, srcs in enumerate(media)]
  counts = [max(int(sum(s.weight for s in srcs)) // b, 1) for srcs in media]  # batches per epoch of each
  data = parts[0] if len(parts) == 1 else ip.interleave_media(parts, counts, seed)

  evaluate = None
  if config.data.eval_path:
    mesh, _ = setup_mesh(config, devices)

    def evaluate(params, step):
      return _retrieval_metrics(config, model, params, tokenizer, mesh, step)

  tcfg = teacher_file[0] if teacher_file else None
  meta = {**config_lib.student_export_meta(config, "umt_stage2"), "bert_config": dataclasses.asdict(bcfg),
          "clip_dim": tcfg.embed_dim if tcfg else 1, "align_layers": config.teacher.align_layers if tcfg else 0,
          "embed_dim": config.stage2.embed_dim, "keep_temporal": config.stage2.keep_temporal}
  task = dataclasses.replace(task, train_data=data, clips_per_epoch=b * sum(counts), load_init=_load_init(config, task),
                             evaluate=evaluate)
  return task, meta


def _retrieval_metrics(config, model: UMTStage2, params, tokenizer, mesh, step: int | None = None) -> dict:
  """Zero-shot retrieval on the eval split -> flat metrics ('emb/<key>', 'itm/<key>'); prints the table."""
  bs = config.data.eval_batch_size or config.batch_size
  k = config.stage2.rerank_k
  out = stage2_retrieval.zero_shot(model, params, tokenizer, eval_source(config), mesh, k=max(k, 10), batch=bs,
                                   dtype=jnp.dtype(config.model.dtype), rerank=k > 0)
  metrics = {f"emb/{m}": v for m, v in out["emb"].items()} | {f"itm/{m}": v for m, v in out.get("rerank", {}).items()}
  if jax.process_index() == 0:
    print(f"retrieval on {config.data.eval_path}:{config.data.eval_split}" + (f" at step {step}" if step else "")
          + "\n" + out.get("table", json.dumps(metrics)))
  return metrics


def _load_init(config: ml_collections.ConfigDict, task: Task):
  """Random init, then the stage-1 encoder + decoders (init_from.workdir) and the BERT (text.init), or a
  whole stage-2 params file (init_from.params)."""
  if not (config.init_from.workdir or config.text.init or config.init_from.params):
    return None

  def load(abstract, shardings):
    params = jax.jit(lambda k: flax.linen.meta.unbox(task.init(k)), out_shardings=shardings)(
        jax.random.key(config.seed))
    if config.init_from.params:
      tree, _ = params_io.load_params(config.init_from.params)
      params_io.check_fits(tree, abstract, f"config.init_from.params={config.init_from.params!r}")
      print(f"initialised every param from {config.init_from.params}")
      return params_io.place(tree, abstract, shardings)
    if config.init_from.workdir:
      vis, vis_sh = abstract["vision_encoder"], shardings["vision_encoder"]
      keep = [k for k in vis if k != "pool_norm"]  # stage 1 has no pool_norm
      tree, step = checkpoint.restore_subtree(config.init_from.workdir, ("params",), {k: vis[k] for k in keep},
                                              {k: vis_sh[k] for k in keep})
      params["vision_encoder"] = {**params["vision_encoder"], **tree}
      print(f"initialised the vision encoder and decoders from {config.init_from.workdir} (step {step})")
    if config.text.init:
      _, bert = load_bert(config.text.init)
      params_io.check_fits(bert, abstract["text_encoder"], f"config.text.init={config.text.init!r}")
      params["text_encoder"] = params_io.place(bert, abstract["text_encoder"], shardings["text_encoder"])
      print(f"initialised the text encoder from {config.text.init}")
    return params
  return load


def evaluate_only(config: ml_collections.ConfigDict, workdir: str, devices=None) -> dict:
  """`mode=eval`: zero-shot retrieval of a stage-2 params file; the model is built from the file's metadata
  (a trained or an imported official model). Writes <workdir>/retrieval.json."""
  path = config.init_from.params or os.path.join(workdir, "params.npz")
  params, meta = params_io.load_params(path)
  if meta.get("kind") != "umt_stage2":
    raise ValueError(f"{path!r} holds {meta.get('kind')!r} params; retrieval needs a umt_stage2 model (a stage-2 "
                     "params.npz or umt-import-umt of an official multi-modality checkpoint)")
  if not config.data.eval_path:
    raise ValueError("config.data.eval_path is empty: set it to the retrieval test set (several captions per clip)")
  tokenizer = text_tokenizer(config)
  stored = model_from_meta(meta, jnp.dtype(config.model.dtype))
  # The file's model, evaluated with this config's token merging and pooling (e.g. configs/vid_tldr.py's); the
  # params are the same (merging adds none), so their shapes come from `stored`, whose decoders init without it.
  model = model_from_meta({**meta, "encoder": {**meta["encoder"], **config_lib.merge_kwargs(config.model)},
                           "keep_temporal": config.stage2.keep_temporal}, jnp.dtype(config.model.dtype))
  if tokenizer.vocab_size > model.text.vocab_size:
    raise ValueError(f"config.text.vocab has {tokenizer.vocab_size} tokens but the model's BERT only "
                     f"{model.text.vocab_size}: use the vocab.txt it was trained with")
  mesh, rules = setup_mesh(config, devices)
  boxed = jax.eval_shape(lambda: _init_like(stored, meta, config))
  shardings = sharding.param_shardings(boxed, mesh, rules, config.min_fsdp_size)
  abstract = flax.linen.meta.unbox(boxed)
  params_io.check_fits(params, abstract, repr(path))
  params = params_io.place(params, abstract, shardings)
  result = _retrieval_metrics(config, model, params, tokenizer, mesh)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "retrieval.json"), "w") as f:
      json.dump({"params": os.path.abspath(path), "split": f"{config.data.eval_path}:{config.data.eval_split}",
                 **result}, f, indent=1)
  return result


def _init_like(model: UMTStage2, meta: dict, config) -> dict:
  s, t = config.data.size, config.data.num_frames
  n = t * (s // meta["encoder"].get("patch_size", 16)) ** 2
  return model.init(jax.random.key(0), jnp.zeros((1, t, s, s, 3)), jnp.arange(n)[None],
                    jnp.zeros((1, 8), jnp.int32), jnp.ones((1, 8), jnp.int32))["params"]


def train(config: ml_collections.ConfigDict, workdir: str, devices=None):
  if config.mode == "eval":
    from umt_jax.train_loop import Result
    return Result(0, None, [], eval=evaluate_only(config, workdir, devices))
  task, meta = make_task(config, devices)
  return run_and_save(config, workdir, task, meta, devices)
