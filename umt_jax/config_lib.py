"""The fields every recipe shares, and helpers that turn config sections into model / data objects.

Recipes in configs/ start from `base(trainer)` and set what differs. `main` locks the result, so an override
naming a field that does not exist (`--config.optim.lr_typo=1`) fails instead of being ignored.
"""
from __future__ import annotations

from typing import Any, Mapping

import ml_collections

from umt_jax import input_pipeline as ip
from umt_jax import sharding
from umt_jax.models import vit

TRAINERS = ("clip", "umt", "umt_stage2", "finetune", "videomae", "distill", "msta")


def base(trainer: str) -> ml_collections.ConfigDict:
  if trainer not in TRAINERS:
    raise ValueError(f"trainer {trainer!r}; expected one of {TRAINERS}")
  c = ml_collections.ConfigDict()
  c.trainer = trainer
  c.name = trainer
  c.seed = 0
  c.batch_size = 256  # global
  c.num_epochs = 1.0
  c.total_steps = 0  # > 0 overrides num_epochs
  c.log_every = 50
  c.eval_every = 0  # 0: evaluate only at the end
  c.peak_flops = 0.0  # per device, for MFU; 0: from the device table in umt_jax.metrics
  c.distributed = False  # force jax.distributed.initialize (SLURM / TPU pods are detected anyway)
  c.mode = "train"  # or "eval": evaluate `init_from` weights without training (fine-tuning, stage 2)
  # JAX's persistent compilation cache: 'auto' = $XDG_CACHE_HOME (or ~/.cache)/umt_jax/xla, '' = off; a
  # JAX_COMPILATION_CACHE_DIR in the environment wins. A rerun loads the compiled step instead of compiling it.
  c.compile_cache_dir = "auto"

  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  c.rules = [list(r) for r in sharding.DEFAULT_RULES]
  c.min_fsdp_size = 2 ** 16  # params with fewer elements stay replicated

  c.optim = ml_collections.ConfigDict(dict(
      lr=1.5e-4, min_lr=1e-5, warmup_lr=0.0, warmup_epochs=0.0, scale_lr_by_batch=True,  # lr per 256 clips
      b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.05, layer_decay=1.0, grad_clip=0.0))
  c.checkpoint = ml_collections.ConfigDict({"every": 1000, "keep": 3, "async": True})

  c.data = ml_collections.ConfigDict(dict(
      path="", split="train", eval_split="", num_frames=8, sampling="segment", stride=4, size=224,
      crop="multiscale", rrc_min_scale=0.08, flip=True, test_clips=1, test_crops=1, workers=0, eval_batch_size=0,
      num_sample=1))  # num_sample: repeated augmentation (views per loaded clip; batch_size counts clips)

  # Training records whose bytes do not decode are skipped, logged and counted (data/skipped_records); more than
  # this many stop the run naming the latest (0: stop at the first). Checked at every logged step.
  c.data.max_bad_records = 100

  c.model = ml_collections.ConfigDict(dict(
      variant="B", embed_dim=0, depth=0, num_heads=0, mlp_dim=0, patch_size=0,  # > 0 overrides the variant
      tubelet_size=1, drop_path=0.1, dtype="float32", remat="none", attn_impl=""))  # attn_impl: ""/xla, cudnn, auto
  # vid-TLDR token merging: schedule = tokens merged per block (r ≥ 1) or fractions of the block's tokens, e.g.
  # (600, 200, 100) (the official MSRVTT B/16 `vidTLDR_r`); () = off (a tuple, so a flag can set it). saliency
  # False: the ToMe mode (umt_jax.models.merging). pool: the classifier's pooling of merged tokens, 'count'
  # (each weighted by the patches it holds) or 'mean' (unweighted, the official retrieval pooling, which stage 2
  # always uses).
  c.model.merge = ml_collections.ConfigDict(dict(schedule=(), saliency=True, pool="count"))

  if trainer == "clip":  # the demo's stage-0 CLIP (image_size follows data.size, vocab the tokenizer)
    c.clip = ml_collections.ConfigDict(dict(embed_dim=512, patch_size=16, vision_width=768, vision_layers=12,
                                            vision_heads=12, context_length=77, text_width=512, text_layers=12,
                                            text_heads=8))
  if trainer in ("umt", "umt_stage2"):
    # path: a params file from umt-import-clip (or the demo's stage 0); align_layers: K last teacher blocks.
    # arch / image_size: the CLIP_PRESETS architecture the mesh planner and benchmarks build (no weights needed).
    c.teacher = ml_collections.ConfigDict(dict(path="", align_layers=6, mask_ratio=0.8, dtype="float32",
                                               arch="ViT-B/16", image_size=0))
  if trainer == "umt_stage2":
    c.teacher.image_mask_ratio = 0.5  # mask_ratio is the video one
    # Video-text sources: data.path (comma-separated folders, split data.split); image-text: data.image_path.
    # Retrieval evaluation: data.eval_path / data.eval_split (several captions per clip), 'middle' frames.
    c.data.update(image_path="", image_split="train", eval_path="", image_size=0)
    # The BERT: `preset` sizes (umt_jax.models.bert.BERT_PRESETS) with overrides > 0; `init`: a params file from
    # umt-import-bert ('' = random init); `vocab`: the WordPiece vocab.txt.
    c.text = ml_collections.ConfigDict(dict(preset="bert-base", hidden_size=0, num_layers=0, num_heads=0,
                                            intermediate_size=0, fusion_layer=0, init="", vocab="", max_length=32,
                                            dropout=0.1))
    # rerank_k: ITM re-ranking of each query's top-k VTC candidates in the retrieval evaluation (0: VTC row only);
    # keep_temporal: the video embedding pooled per time step, VTC averaged over them (UMT's configs), or False:
    # one mean over all tokens (vid-TLDR's configs; masked and merged tokens always pool so)
    c.stage2 = ml_collections.ConfigDict(dict(embed_dim=512, temp=0.07, mlm_prob=0.5, rerank_k=128,
                                              keep_temporal=True))
    c.loss_weights = ml_collections.ConfigDict(dict(uta=1.0, vtc=1.0, vtm=1.0, mlm=1.0))
    # workdir: a stage-1 workdir (encoder + decoders); params: a umt_stage2 params file (a trained or imported
    # official stage-2 model: retrieval fine-tuning and evaluation start from it).
    c.init_from = ml_collections.ConfigDict({"workdir": "", "params": ""})
  if trainer == "videomae":
    # Dual masking: tube mask for the encoder, running cell for the decoder (0: VideoMAE v1, the decoder
    # reconstructs every encoder-masked token). Decoder sizes per variant: configs/videomae_v2.py.
    c.videomae = ml_collections.ConfigDict(dict(mask_ratio=0.9, decoder_mask_ratio=0.5, decoder_dim=384,
                                                decoder_depth=4, decoder_heads=6, normalize_target=True))
  if trainer in ("finetune", "distill"):  # distill: the student is a fine-tuning classifier
    c.model.update(num_classes=0, fc_drop=0.0)  # 0 classes: from the dataset's label names
    # workdir: a stage-1 workdir; params: a params file (umt-import-umt or a trainer's params.npz); '' = random.
    # label_map: with a classifier `params` file, new class i takes head row map[i] (a JSON list or one index a line).
    c.init_from = ml_collections.ConfigDict({"workdir": "", "params": "", "label_map": ""})
    c.mixup = ml_collections.ConfigDict(dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5,
                                             label_smoothing=0.1))
  if trainer == "distill":
    # The frozen teacher: a classifier params file (`path`), or a fine-tune workdir (`workdir`: its params.npz);
    # dtype: its compute dtype; variant: its ViT variant (the student's tubelet), what the mesh planner compiles
    # without the file (training reads the architecture from the file). Loss: T²·KL(teacher ‖ student) at
    # `temperature` + label_weight × the label CE.
    c.teacher = ml_collections.ConfigDict(dict(path="", workdir="", dtype="float32", variant=""))
    c.distill = ml_collections.ConfigDict(dict(temperature=1.0, label_weight=0.0))
  if trainer == "msta":
    # Adapters on a frozen CLIP (umt_jax/trainers/msta.py). backbone clip_frames | viclip; clip: its params file
    # (both towers); pixel_norm auto | clip | imagenet; tokenizer: its
    # tokenizer.json ('' = beside the clip file); layers start..end (1-based, inclusive), bottleneck dim, λ scale,
    # temporal up-projection form; cc_weight α of the consistency loss over the descriptions
    # {num_descriptions}_{s|t}_description_{description_name}.json in `descriptions` ('' on the synthetic set: its
    # own); protocol supervised | few_shot | base_to_novel | zero_shot (eval_path / eval_split: the other dataset).
    # trainable adapters | video_tower (full fine-tuning of the video tower: the baseline, no adapters).
    c.msta = ml_collections.ConfigDict(dict(
        backbone="clip_frames", clip="", tokenizer="", pixel_norm="auto", start=8, end=12, dim=128, scale=0.005,
        temporal="depthwise", kernel=3, template="a video of {}", cc_weight=1.0, descriptions="",
        description_name="", num_descriptions=2, protocol="supervised", shots=0, split_seed=0, base_classes="",
        eval_path="", eval_split="", trainable="adapters"))
  return c


def override(config: ml_collections.ConfigDict, updates: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """Sets dotted keys ('total_steps', 'init_from.workdir') of `config` in place; returns it."""
  for key, value in updates.items():
    section, _, name = key.rpartition(".")
    (config[section] if section else config)[name] = value
  return config


def merge_kwargs(model: ml_collections.ConfigDict) -> dict:
  """VisionTransformer kwargs of `config.model.merge` ({} when off, so exported metadata stays as it was)."""
  if not model.merge.schedule:
    return {}
  return {"merge_schedule": tuple(model.merge.schedule), "merge_saliency": model.merge.saliency}


def student_kwargs(model: ml_collections.ConfigDict) -> dict:
  """VisionTransformer kwargs of `config.model`."""
  overrides = {k: model[k] for k in ("embed_dim", "depth", "num_heads", "mlp_dim", "patch_size") if model[k]}
  overrides.update(merge_kwargs(model))
  return vit.vit_kwargs(model.variant, tubelet_size=model.tubelet_size, drop_path_rate=model.drop_path,
                        remat_policy=model.remat, attn_impl=model.attn_impl or None, **overrides)


def student_export_meta(config: ml_collections.ConfigDict, kind: str) -> dict:
  """params.npz metadata that `umt-export-torch` needs for a student of layout `kind`."""
  return {"kind": kind, "encoder": student_kwargs(config.model), "num_frames": config.data.num_frames,
          "img_size": config.data.size}


def clip_spec(data: ml_collections.ConfigDict, **overrides) -> ip.ClipSpec:
  kw = dict(num_frames=data.num_frames, sampling=data.sampling, stride=data.stride, size=data.size, crop=data.crop,
            rrc_scale=(data.rrc_min_scale, 1.0), flip=data.flip, test_clips=data.test_clips,
            test_crops=data.test_crops, num_sample=data.get("num_sample", 1))
  kw.update(overrides)
  return ip.ClipSpec(**kw)


def check_data(config: ml_collections.ConfigDict, splits: tuple[str, ...]) -> dict:
  """Fails early, naming the config key, when the dataset folder or a split is missing -> metadata."""
  path = config.data.path
  if not path:
    raise ValueError("config.data.path is empty: set it to a dataset folder (python -m data.prepare / "
                     "python -m data.synthetic) or 'tfds:NAME'")
  if path.startswith("tfds:"):
    return {}
  try:
    meta = ip.read_metadata(path)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"config.data.path: {e}") from None
  for s in splits:
    if s and s not in meta["splits"]:
      raise ValueError(f"config.data: split {s!r} is not in {path} (it has {sorted(meta['splits'])})")
  return meta
