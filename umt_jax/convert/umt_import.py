"""Import official UMT checkpoints into umt_jax params files.

Reads .pth or .safetensors files (`model` / `module` wrappers unwrapped), tells from the keys what they hold and
infers the architecture from the tensors:
  classifier    a fine-tuned `VisionTransformer` (patch_embed, blocks.*, fc_norm, head, maybe pos_embed): width,
                depth, heads (from the variant table, else width / 64), patch, tubelet, class count; the frame
                count from pos_embed when there is one (else --num_frames, default 8)
  umt_pretrain  the stage-1 model (encoder.*, clip_decoder.k.*): the encoder as above, K decoders and their width
  umt_stage2    the multi-modality model (vision_encoder.*, text_encoder.bert.*, ...): the vision tower, the BERT
                (width, layers, fusion layer, vocab) and the embedding width; `clip_teacher.*` (the frozen teacher
                the official files carry) is dropped, or written as a teacher params file with --teacher_out
and writes a params file with the metadata the trainers write, so `init_from.params`, evaluation and
`umt-export-torch` (the inverse, through the same layout table) take it as they take a trained one.
A `pos_embed` is compared with the sin-cos table umt_jax computes for its grid: a match is dropped (the model
computes it), a learned or edited table is kept as the param `encoder/pos_embed` (`pos_param` in the encoder
metadata), and either way the result is printed. Every unknown key, missing key and shape mismatch is reported in
one error naming the file, as is a checkpoint of another kind (VideoMAE pretraining, CLIP, or not the --kind
asked for); nothing is written unless the whole import succeeds.

  python -m umt_jax.convert.umt_import --src umt_b16_k400.pth --out umt_b16_k400.npz [--kind classifier]
  python -m umt_jax.convert.umt_import --src b16_25m.pth --out umt_b16_25m.npz [--teacher_out clip_b16.npz]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from umt_jax import params_io
from umt_jax.convert import clip_import, layout
from umt_jax.models.bert import BertConfig
from umt_jax.models.clip import CLIPVision
from umt_jax.models.heads import UMTPretrain, VideoClassifier
from umt_jax.models.posemb import video_pos_table
from umt_jax.models.umt_stage2 import UMTStage2
from umt_jax.models.vit import VARIANTS, ref_grid

KINDS = ("classifier", "umt_pretrain", "umt_stage2")
_LOOKS = {"classifier": "patch_embed, blocks.*, fc_norm, head", "umt_pretrain": "encoder.*, clip_decoder.*",
          "umt_stage2": "vision_encoder.*, text_encoder.*"}
POS_ATOL = 1e-4  # a pos_embed within this of the computed table is that table (fp32 interpolation noise)

# Buffers and tied copies that the torch module holds besides params; checked, not imported.
STAGE2_IGNORED = (r"position_ids$", r"^text_encoder\.cls\.predictions\.decoder\.(weight|bias)$", r"^clip_teacher\.")


def _need(sd: Mapping[str, np.ndarray], key: str, src: str, kind: str = "umt_stage2") -> np.ndarray:
  return layout.need(sd, key, src, f"an official UMT {kind} checkpoint")


def read(src: str) -> dict[str, np.ndarray]:
  """`clip_import.read_checkpoint`, also of official training checkpoints, whose `args` is an argparse.Namespace
  (which torch.load(weights_only=True) refuses unless allowed)."""
  if src.endswith(".safetensors"):
    return clip_import.read_checkpoint(src)
  import torch
  with torch.serialization.safe_globals([argparse.Namespace]):
    return clip_import.read_checkpoint(src)


def detect_kind(sd: Mapping[str, np.ndarray], src: str, expect: str = "") -> str:
  """Which official layout (KINDS) the keys hold, checked against `expect` ('' = any); VideoMAE pretraining,
  CLIP and other checkpoints raise, naming what they look like."""
  if "vision_encoder.temporal_positional_embedding" in sd:
    raise ValueError(f"cannot load {src}: it is a ViCLIP checkpoint (vision_encoder.temporal_positional_embedding),"
                     " not a UMT one; use umt-import-viclip")
  if any(k.startswith(("vision_encoder.", "text_encoder.")) for k in sd):
    kind = "umt_stage2"
  elif "encoder_to_decoder.weight" in sd or any(k.startswith("decoder.") for k in sd):
    raise ValueError(f"cannot load {src}: it is a VideoMAE pretraining checkpoint (encoder_to_decoder, decoder.*), "
                     "not a UMT one")
  elif any(k.startswith("encoder.") for k in sd):
    kind = "umt_pretrain"
  elif "patch_embed.proj.weight" in sd:
    kind = "classifier"
  else:
    raise ValueError(f"cannot load {src}: not an official UMT checkpoint (no patch_embed.*, encoder.* or "
                     f"vision_encoder.* keys; first keys: {sorted(sd)[:6]})")
  if expect and kind != expect:
    raise ValueError(f"cannot load {src}: it holds a {kind} checkpoint ({_LOOKS[kind]}), not the {expect} "
                     f"asked for ({_LOOKS[expect]})")
  return kind


def infer_encoder(sd: Mapping[str, np.ndarray], prefix: str, src: str, head_dim: int | None = None,
                  kind: str = "umt_stage2") -> dict:
  """VisionTransformer kwargs from `<prefix>patch_embed` / `<prefix>blocks.*`. Heads: width / head_dim, or with
  head_dim None those of the variant with these dims (H and g heads are not 64 wide), else width / 64."""
  pe = _need(sd, prefix + "patch_embed.proj.weight", src, kind)
  if pe.ndim != 5:
    raise ValueError(f"cannot load {src}: {prefix}patch_embed.proj.weight {pe.shape} is not a Conv3d [D, 3, kt, p, p]")
  width, tubelet, patch = pe.shape[0], pe.shape[2], pe.shape[3]
  depth = len(layout.layer_indices(sd, re.escape(prefix) + r"blocks\.(\d+)\."))
  mlp = _need(sd, prefix + "blocks.0.mlp.fc1.weight", src, kind).shape[0]
  if head_dim is None:
    same = [v.num_heads for v in VARIANTS.values() if (v.embed_dim, v.depth, v.mlp_dim) == (width, depth, mlp)]
    heads = same[0] if same else width // 64
  else:
    heads = width // head_dim
  if not heads or width % heads:
    raise ValueError(f"cannot infer the heads of {src}'s width-{width} encoder; pass --head_dim")
  return dict(embed_dim=width, depth=depth, num_heads=heads, mlp_dim=mlp, patch_size=patch, tubelet_size=tubelet)


def check_pos_table(pos: np.ndarray, grid: tuple[int, int, int], ref: tuple[int, int, int] | None,
                    src: str) -> bool:
  """pos (N, D) vs `video_pos_table(grid, D, ref)`; prints the comparison -> True when it differs (keep it)."""
  diff = float(np.abs(pos - video_pos_table(grid, pos.shape[-1], ref)).max())
  if diff <= POS_ATOL:
    print(f"{src}: pos_embed is the sin-cos table of grid {grid} (max |diff| {diff:.1e}); umt_jax computes it")
    return False
  print(f"{src}: pos_embed differs from the sin-cos table of grid {grid} (max |diff| {diff:.3g}); keeping the "
        "checkpoint's table as encoder/pos_embed")
  return True


def import_single(sd: Mapping[str, np.ndarray], src: str, kind: str, *, num_frames: int = 0, img_size: int = 224,
                  head_dim: int | None = None, ignore: tuple[str, ...] = ()) -> tuple[dict, dict]:
  """A classifier / umt_pretrain state_dict -> (VideoClassifier / UMTPretrain params, params-file metadata).
  num_frames 0: from pos_embed when there is one, else 8."""
  classifier = kind == "classifier"
  prefix = "" if classifier else "encoder."
  enc = infer_encoder(sd, prefix, src, head_dim, kind)
  patch, kt, width = enc["patch_size"], enc["tubelet_size"], enc["embed_dim"]
  if img_size % patch:
    raise ValueError(f"--img_size {img_size} is not a multiple of {src}'s patch size {patch}")
  sd = dict(sd)
  pos = sd.pop(prefix + "pos_embed", None)
  hw = (img_size // patch) ** 2
  if pos is not None:
    if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != width or pos.shape[1] % hw:
      raise ValueError(f"cannot load {src}: {prefix}pos_embed {pos.shape} is not [1, T/{kt}·{hw}, {width}] (T frames "
                       f"of {img_size}²; pass --img_size if that is not the size)")
    frames = pos.shape[1] // hw * kt
    if num_frames and num_frames != frames:
      raise ValueError(f"--num_frames {num_frames}: {src}'s pos_embed {pos.shape} holds {frames} frames of "
                       f"{img_size}²")
    num_frames = frames
  num_frames = num_frames or 8
  if num_frames % kt:
    raise ValueError(f"--num_frames {num_frames} is not a multiple of {src}'s tubelet size {kt}")
  grid = (num_frames // kt, img_size // patch, img_size // patch)
  if pos is not None and check_pos_table(pos[0], grid, ref_grid(patch) if classifier else None, src):
    enc["pos_param"], sd[prefix + "pos_embed"] = True, pos
  video = jnp.zeros((1, num_frames, img_size, img_size, 3))
  meta = {"kind": kind, "encoder": enc, "num_frames": num_frames, "img_size": img_size}
  if classifier:
    num_classes = _need(sd, "head.weight", src, kind).shape[0]
    model = VideoClassifier(encoder=enc, num_classes=num_classes)
    target = nn.meta.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), video))["params"])
    # The official classifier's keys are the encoder's without a prefix, beside fc_norm and head.
    got = layout.from_state_dict(sd, {**target["encoder"], "fc_norm": target["fc_norm"], "head": target["head"]},
                                 source=src, ignore=ignore)
    params = {"encoder": {k: got[k] for k in target["encoder"]}, "fc_norm": got["fc_norm"], "head": got["head"]}
    meta["num_classes"] = num_classes
  else:
    align = len(layout.layer_indices(sd, r"clip_decoder\.(\d+)\."))
    clip_dim = sd["clip_decoder.0.head.weight"].shape[0] if align else 0
    model = UMTPretrain(encoder=enc, clip_dim=clip_dim, num_align_layers=align)
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), video, None))["params"]
    params = layout.from_state_dict(sd, target, source=src, ignore=ignore)
    meta.update(clip_dim=clip_dim, align_layers=align)
  return params, {**meta, "source": os.path.abspath(src)}


def infer_stage2(sd: Mapping[str, np.ndarray], src: str = "checkpoint", head_dim: int = 64) -> dict:
  """UMTStage2 kwargs and export metadata from the tensors of an official stage-2 state_dict."""
  encoder = infer_encoder(sd, "vision_encoder.encoder.", src, head_dim)
  width = encoder["embed_dim"]
  align = len(layout.layer_indices(sd, r"vision_encoder\.clip_decoder\.(\d+)\."))
  clip_dim = sd["vision_encoder.clip_decoder.0.head.weight"].shape[0] if align else 0
  words = _need(sd, "text_encoder.bert.embeddings.word_embeddings.weight", src)
  layers = layout.layer_indices(sd, r"text_encoder\.bert\.encoder\.layer\.(\d+)\.")
  fusion = layout.layer_indices(sd, r"text_encoder\.bert\.encoder\.layer\.(\d+)\.crossattention\.")
  if not fusion:
    raise ValueError(f"cannot load {src}: its BERT has no crossattention layers (a text-only BERT; import it "
                     "with umt-import-bert instead)")
  hidden = words.shape[1]
  bert = BertConfig(vocab_size=words.shape[0], hidden_size=hidden, num_layers=len(layers),
                    num_heads=hidden // head_dim,
                    intermediate_size=sd["text_encoder.bert.encoder.layer.0.intermediate.dense.weight"].shape[0],
                    max_position_embeddings=sd["text_encoder.bert.embeddings.position_embeddings.weight"].shape[0],
                    type_vocab_size=sd["text_encoder.bert.embeddings.token_type_embeddings.weight"].shape[0],
                    fusion_layer=fusion[0], encoder_width=width)
  return dict(encoder=encoder, bert=bert, clip_dim=clip_dim, align_layers=align,
              embed_dim=_need(sd, "vision_proj.weight", src).shape[0])


def import_stage2(src: str, *, num_frames: int = 4, img_size: int = 224, head_dim: int = 64,
                  ignore: tuple[str, ...] = ()) -> tuple[dict, dict, dict]:
  """-> (UMTStage2 params, params-file metadata, the checkpoint's `clip_teacher.*` tensors (maybe empty))."""
  return stage2_params(read(src), src, num_frames=num_frames, img_size=img_size,
                       head_dim=head_dim, ignore=ignore)


def stage2_params(sd: Mapping[str, np.ndarray], src: str, *, num_frames: int = 4, img_size: int = 224,
                  head_dim: int = 64, ignore: tuple[str, ...] = ()) -> tuple[dict, dict, dict]:
  """`import_stage2` of a state_dict already read."""
  info = infer_stage2(sd, src, head_dim)
  tied = ("text_encoder.cls.predictions.decoder.weight", "text_encoder.bert.embeddings.word_embeddings.weight")
  if tied[0] in sd and not np.array_equal(sd[tied[0]], sd[tied[1]]):
    raise ValueError(f"cannot load {src}: {tied[0]} differs from {tied[1]} (umt_jax ties the MLM decoder to "
                     "the word embeddings, as the official model does)")
  model = UMTStage2(vision=dict(encoder=info["encoder"], clip_dim=info["clip_dim"],
                                num_align_layers=info["align_layers"]), text=info["bert"], embed_dim=info["embed_dim"])
  grid = img_size // info["encoder"]["patch_size"]
  video = jnp.zeros((1, num_frames, img_size, img_size, 3))
  nv = num_frames * grid * grid
  target = jax.eval_shape(lambda: model.init(jax.random.key(0), video, jnp.arange(nv)[None], jnp.zeros((1, 8), jnp.int32),
                                             jnp.ones((1, 8), jnp.int32)))["params"]
  params = layout.from_state_dict(sd, target, source=src, ignore=STAGE2_IGNORED + tuple(ignore))
  meta = {"kind": "umt_stage2", "encoder": info["encoder"], "num_frames": num_frames, "img_size": img_size,
          "bert_config": dataclasses.asdict(info["bert"]), "clip_dim": info["clip_dim"],
          "align_layers": info["align_layers"], "embed_dim": info["embed_dim"], "source": os.path.abspath(src)}
  teacher = {k.removeprefix("clip_teacher."): v for k, v in sd.items() if k.startswith("clip_teacher.")}
  return params, meta, teacher


def teacher_params(teacher_sd: Mapping[str, np.ndarray], src: str) -> tuple[dict, dict]:
  """The official file's `clip_teacher.*` (OpenAI visual layout) -> (CLIPVision params, teacher metadata)."""
  sd = {f"visual.{k}": v for k, v in teacher_sd.items()}
  cfg = clip_import.infer_config(sd)
  images = jnp.zeros((1, cfg.image_size, cfg.image_size, 3))
  target = jax.eval_shape(lambda: CLIPVision(cfg).init(jax.random.key(0), images))["params"]
  params = layout.from_state_dict(teacher_sd, target, source=f"{src} (clip_teacher.*)", ignore=clip_import.IGNORED)
  return params, {"kind": "clip_visual", "clip_config": dataclasses.asdict(cfg), "source": os.path.abspath(src)}


def main(argv: list[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--src", required=True, help="official UMT checkpoint (.pth / .safetensors)")
  ap.add_argument("--out", required=True, help="output params file (.npz)")
  ap.add_argument("--kind", choices=KINDS, default="", help="fail unless the file holds this layout")
  ap.add_argument("--teacher_out", default="", help="stage 2: also write its clip_teacher.* as a teacher params file")
  ap.add_argument("--num_frames", type=int, default=0,
                  help="frames the model will see; 0: from pos_embed, else 8 (stage 2: 4)")
  ap.add_argument("--img_size", type=int, default=224)
  ap.add_argument("--head_dim", type=int, default=0,
                  help="heads = width / this; 0: the variant's heads (stage 2: 64 wide)")
  ap.add_argument("--ignore", action="append", default=[], help="regex of extra keys to skip (e.g. ^text_decoder\\.)")
  args = ap.parse_args(argv)
  sd = read(args.src)
  kind = detect_kind(sd, args.src, args.kind)
  if args.teacher_out and kind != "umt_stage2":
    raise ValueError(f"--teacher_out: {args.src} holds a {kind} checkpoint, which carries no clip_teacher.*")
  if kind != "umt_stage2":
    params, meta = import_single(sd, args.src, kind, num_frames=args.num_frames, img_size=args.img_size,
                                 head_dim=args.head_dim or None, ignore=tuple(args.ignore))
    params_io.save_params(args.out, params, meta)
    e = meta["encoder"]
    what = f"{meta['num_classes']} classes" if kind == "classifier" else f"{meta['align_layers']} decoders"
    print(f"wrote {args.out}: {kind}, {layout.param_count(params):,} params (width {e['embed_dim']}, depth {e['depth']}, "
          f"{e['num_heads']} heads, patch {e['patch_size']}, tubelet {e['tubelet_size']}, {meta['num_frames']} "
          f"frames of {meta['img_size']}², {what}{', kept pos_embed' if e.get('pos_param') else ''})")
    return
  params, meta, teacher = stage2_params(sd, args.src, num_frames=args.num_frames or 4, img_size=args.img_size,
                                        head_dim=args.head_dim or 64, ignore=tuple(args.ignore))
  t_out = None
  if args.teacher_out:
    if not teacher:
      raise ValueError(f"{args.src} has no clip_teacher.* keys; drop --teacher_out")
    t_out = teacher_params(teacher, args.src)
  params_io.save_params(args.out, params, meta)
  if t_out is not None:
    params_io.save_params(args.teacher_out, *t_out)
  print(f"wrote {args.out}: umt_stage2, {layout.param_count(params):,} params (vision {meta['encoder']['embed_dim']}×"
        f"{meta['encoder']['depth']}, BERT {meta['bert_config']['num_layers']} layers, fusion from "
        f"{meta['bert_config']['fusion_layer']})" + (f"; teacher -> {args.teacher_out}" if t_out else ""))


if __name__ == "__main__":
  main()
