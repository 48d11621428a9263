"""Import released ViCLIP checkpoints (InternVid, OpenGVLab/InternVideo `viclip`) into umt_jax params files.

The official `ViCLIP` module's state_dict: `vision_encoder.*` (the `clip_joint_*` video tower: Conv3d `conv1`,
`class_embedding`, `positional_embedding`, `temporal_positional_embedding` [1, T, D], `ln_pre`,
`transformer.resblocks.N.*`, `ln_post`, `proj`), `text_encoder.*` (CLIP's text tower: `token_embedding`,
`positional_embedding` [32, W], `transformer.*`, `ln_final`, `text_projection`) and `temp`. Released files wrap
it as {'model': ...}. The one table in `layout.py` maps it both ways (`umt-export-torch` writes it back).
Sizes come from the tensors (heads = width / 64, as for CLIP). `--num_frames` resizes the temporal table as the
official loader does (truncate, or linear interpolation), `--image_size` the spatial one (bicubic).
`--from_clip` builds ViCLIP's initialisation from a CLIP instead: the image tower's weights (conv1 as a
Conv3d of time kernel 1), a zero temporal table, the text table cut (or zero-padded) to the context length, temp 0.01.

  python -m umt_jax.convert.viclip_import --src ViClip-InternVid-10M-FLT.pth --out viclip_b16.npz
  python -m umt_jax.convert.viclip_import --from_clip clip_b16_full.npz --out viclip_b16_init.npz
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from umt_jax import params_io
from umt_jax.convert import clip_import, layout, umt_import
from umt_jax.models.clip import CLIPConfig, VICLIP_TEMP, ViCLIP, ViCLIPConfig
from umt_jax.models.posemb import resize_axis, resize_grid_table

KIND = "viclip"
V, T = "vision_encoder.", "text_encoder."


def abstract_params(cfg: ViCLIPConfig) -> dict:
  """ShapeDtypeStructs of ViCLIP(cfg)'s params (boxed with logical axes)."""
  video = jnp.zeros((1, cfg.num_frames, cfg.image_size, cfg.image_size, 3))
  ids = jnp.zeros((1, cfg.context_length), jnp.int32)
  return jax.eval_shape(lambda: ViCLIP(cfg).init(jax.random.key(0), video, ids))["params"]


def infer_config(sd: Mapping[str, np.ndarray], src: str = "checkpoint", head_dim: int = 64) -> ViCLIPConfig:
  """ViCLIPConfig from an official state_dict; other checkpoints raise naming what they look like."""
  if any(k.startswith((V + "encoder.", T + "bert.")) for k in sd):
    raise ValueError(f"cannot load {src}: it is a UMT stage-2 checkpoint (vision_encoder.encoder.* / "
                     "text_encoder.bert.*), not ViCLIP; use umt-import-umt")
  for key in (V + "conv1.weight", V + "temporal_positional_embedding"):
    if key not in sd:
      raise ValueError(f"cannot load {src}: it has no {key!r}, so it is not a ViCLIP checkpoint "
                       f"(first keys: {sorted(sd)[:6]})")
  conv = sd[V + "conv1.weight"]
  if conv.ndim != 5 or conv.shape[2] != 1:
    raise ValueError(f"cannot load {src}: {V}conv1.weight has shape {tuple(conv.shape)}; expected a Conv3d "
                     "[D, 3, 1, p, p] (time kernel 1, as every released ViCLIP)")
  view = {("visual." + k[len(V):] if k.startswith(V) else k[len(T):]): v for k, v in sd.items()
          if k.startswith((V, T))}
  base = clip_import.infer_config(view, head_dim)
  return ViCLIPConfig(**{**dataclasses.asdict(base), "num_frames": sd[V + "temporal_positional_embedding"].shape[1]})


def resize(sd: dict[str, np.ndarray], cfg: ViCLIPConfig, num_frames: int = 0,
           image_size: int = 0) -> tuple[dict[str, np.ndarray], ViCLIPConfig]:
  """The official loaders' table resizes: temporal (truncate / linear), spatial (bicubic, CLS row kept)."""
  if num_frames and num_frames != cfg.num_frames:
    table = sd[V + "temporal_positional_embedding"]
    sd[V + "temporal_positional_embedding"] = (table[:, :num_frames] if num_frames < cfg.num_frames
                                               else resize_axis(table, num_frames, 1, "linear"))
    cfg = dataclasses.replace(cfg, num_frames=num_frames)
  if image_size and image_size != cfg.image_size:
    if image_size % cfg.patch_size:
      raise ValueError(f"--image_size {image_size} is not a multiple of the patch size {cfg.patch_size}")
    g = image_size // cfg.patch_size
    sd[V + "positional_embedding"] = resize_grid_table(sd[V + "positional_embedding"], (g, g))
    cfg = dataclasses.replace(cfg, image_size=image_size)
  return sd, cfg


def import_state_dict(sd: Mapping[str, np.ndarray], src: str = "checkpoint", *, num_frames: int = 0,
                      image_size: int = 0, head_dim: int = 64) -> tuple[dict, ViCLIPConfig]:
  """An official ViCLIP state_dict -> (ViCLIP params, config). Unknown / missing / misshapen keys: one error."""
  cfg = infer_config(sd, src, head_dim)
  sd, cfg = resize(dict(sd), cfg, num_frames, image_size)
  return layout.from_state_dict(sd, abstract_params(cfg), source=src), cfg


def import_viclip(src: str, **kw: Any) -> tuple[dict, ViCLIPConfig]:
  """A released ViCLIP file (.pth {'model': ...} / .safetensors) -> (params, config)."""
  return import_state_dict(umt_import.read(src), src, **kw)


def export_state_dict(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """ViCLIP params -> the official state_dict (`ViCLIP.load_state_dict(sd)` with strict=True)."""
  return layout.to_state_dict(params)


def from_clip(clip_params: Mapping[str, Any], clip_cfg: CLIPConfig, *, num_frames: int = 8,
              context_length: int = 32, source: str = "CLIP") -> tuple[dict, ViCLIPConfig]:
  """Full CLIP params -> ViCLIP's initialisation (the official `clip_joint_*` / `clip_text_*` loaders)."""
  sd = layout.to_state_dict(clip_params)
  if "visual.conv1.weight" not in sd or "token_embedding.weight" not in sd:
    raise ValueError(f"{source}: needs both CLIP towers (visual.* and the text tower); got keys {sorted(sd)[:6]}")
  cfg = ViCLIPConfig(**{**dataclasses.asdict(clip_cfg), "num_frames": num_frames, "context_length": context_length})
  out = {(V + k[len("visual."):] if k.startswith("visual.") else T + k): v for k, v in sd.items()
         if k != "logit_scale"}
  out[V + "conv1.weight"] = out[V + "conv1.weight"][:, :, None]  # inflate_weight to time kernel 1
  out[V + "temporal_positional_embedding"] = np.zeros((1, num_frames, cfg.vision_width), np.float32)
  pos = out[T + "positional_embedding"][:context_length]
  out[T + "positional_embedding"] = np.pad(pos, ((0, context_length - pos.shape[0]), (0, 0)))
  out["temp"] = np.float32(VICLIP_TEMP)
  return layout.from_state_dict(out, abstract_params(cfg), source=source), cfg


def _load_clip(path: str) -> tuple[dict, CLIPConfig]:
  """A full-CLIP params file (kind 'clip') or any checkpoint umt-import-clip reads."""
  if path.endswith(".npz"):
    params, meta = params_io.load_params(path)
    if meta.get("kind") != "clip":
      raise ValueError(f"params file {path!r} holds {meta.get('kind')!r} params; --from_clip needs a full CLIP "
                       "(kind 'clip': umt-import-clip without --visual_only, or stage 0's params.npz)")
    return params, CLIPConfig(**meta["clip_config"])
  return clip_import.import_clip(path)


def load_viclip(path: str) -> tuple[ViCLIPConfig, dict]:
  """A params file written by this CLI -> (config, params) for `ViCLIP(cfg).apply({'params': params}, ...)`."""
  params, meta = params_io.load_params(path)
  if meta.get("kind") != KIND:
    raise ValueError(f"params file {path!r} holds {meta.get('kind')!r} params; expected 'viclip' "
                     "(umt-import-viclip)")
  return ViCLIPConfig(**meta["viclip_config"]), params


def main(argv: list[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  src = ap.add_mutually_exclusive_group(required=True)
  src.add_argument("--src", help="released ViCLIP checkpoint (.pth / .safetensors)")
  src.add_argument("--from_clip", help="full CLIP: a params file of kind 'clip' or a checkpoint umt-import-clip reads")
  ap.add_argument("--out", required=True, help="output params file (.npz)")
  ap.add_argument("--num_frames", type=int, default=0, help="frames (default: the checkpoint's; 8 with --from_clip)")
  ap.add_argument("--image_size", type=int, default=0, help="resize the spatial table to this input size")
  ap.add_argument("--context_length", type=int, default=32, help="--from_clip: text length (ViCLIP's max_txt_l)")
  ap.add_argument("--head_dim", type=int, default=64, help="heads = width / this")
  args = ap.parse_args(argv)
  if args.src:
    params, cfg = import_viclip(args.src, num_frames=args.num_frames, image_size=args.image_size,
                                head_dim=args.head_dim)
  else:
    clip_params, clip_cfg = _load_clip(args.from_clip)
    if args.image_size and args.image_size != clip_cfg.image_size:
      raise ValueError("--image_size with --from_clip: import the CLIP at that size first (umt-import-clip "
                       "--image_size)")
    params, cfg = from_clip(clip_params, clip_cfg, num_frames=args.num_frames or 8,
                            context_length=args.context_length, source=args.from_clip)
  meta = {"kind": KIND, "viclip_config": dataclasses.asdict(cfg),
          "source": os.path.abspath(args.src or args.from_clip)}
  params_io.save_params(args.out, params, meta)
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  print(f"wrote {args.out}: viclip {n:,} params, {cfg.num_frames} frames at {cfg.image_size}px, patch "
        f"{cfg.patch_size}, vision {cfg.vision_width}×{cfg.vision_layers}, text {cfg.text_width}×{cfg.text_layers}")


if __name__ == "__main__":
  main()
