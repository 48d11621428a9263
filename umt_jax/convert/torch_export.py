"""Export student params to the official PyTorch layouts (.pth or .safetensors).

Layouts:
  classifier    the fine-tune `VisionTransformer` (patch_embed, blocks, fc_norm, head; `pos_embed` [1, N, D]
                only where the official model has one, i.e. when N differs from the 8×P×P reference grid)
  umt_pretrain  the stage-1 checkpoint (`encoder.*`, `clip_decoder.N.*`)
  umt_stage2    the stage-2 video-language model (`vision_encoder.*`, `text_encoder.bert.*` with the int64
                `embeddings.position_ids` buffer, `text_encoder.cls.*` with the tied decoder written out,
                `vision_proj`, `text_proj`, `itm_head`, `temp`); no `clip_teacher.*`
  videomae_pretrain  VideoMAE V2 pretraining (`encoder.*`, `encoder_to_decoder`, `mask_token`, `decoder.*`)
  viclip        ViCLIP (InternVid): `vision_encoder.*`, `text_encoder.*`, `temp` (umt-import-viclip's files)

CLI:
  python -m umt_jax.convert.torch_export --params student.npz --out umt_b16_k400.pth
where student.npz is a params file (umt_jax.params_io) whose metadata names `kind`, `encoder` (the
VisionTransformer kwargs), `num_frames` and `img_size`.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Mapping

import numpy as np

from umt_jax import params_io
from umt_jax.convert import layout
from umt_jax.models.posemb import video_pos_table
from umt_jax.models.vit import ref_grid

KINDS = ("classifier", "umt_pretrain", "umt_stage2", "videomae_pretrain", "viclip")


def classifier_state_dict(params: Mapping[str, Any], encoder: Mapping[str, Any], num_frames: int,
                          img_size: int) -> dict[str, np.ndarray]:
  """VideoClassifier params -> the official fine-tune state_dict (loads with strict=True)."""
  sd = layout.to_state_dict(params)
  sd = {k.removeprefix("encoder."): v for k, v in sd.items()}
  patch, tubelet, dim = encoder.get("patch_size", 16), encoder.get("tubelet_size", 1), encoder["embed_dim"]
  if img_size % patch or num_frames % tubelet:
    raise ValueError(f"img_size {img_size} / num_frames {num_frames} do not divide into patches {patch} / "
                     f"tubelets {tubelet}")
  grid = (num_frames // tubelet, img_size // patch, img_size // patch)
  ref = ref_grid(patch)
  if int(np.prod(grid)) != int(np.prod(ref)) and "pos_embed" not in sd:  # a kept (learned) table wins
    sd["pos_embed"] = video_pos_table(grid, dim, ref)[None]
  return sd


def stage2_state_dict(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """UMTStage2 params -> the official stage-2 state_dict (strict=True): the layout table plus what the torch
  module holds besides params, the position-ids buffer and the MLM decoder tied to the word embeddings."""
  sd = layout.to_state_dict(params)
  bert, mlm = "text_encoder.bert.embeddings.", "text_encoder.cls.predictions."
  sd[bert + "position_ids"] = np.arange(sd[bert + "position_embeddings.weight"].shape[0], dtype=np.int64)[None]
  sd[mlm + "decoder.weight"] = sd[bert + "word_embeddings.weight"]
  sd[mlm + "decoder.bias"] = sd[mlm + "bias"]
  return sd


def state_dict_for(kind: str, params: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, np.ndarray]:
  if kind == "umt_stage2":
    return stage2_state_dict(params)
  if kind == "classifier":
    return classifier_state_dict(params, meta["encoder"], meta["num_frames"], meta["img_size"])
  if kind in ("umt_pretrain", "videomae_pretrain", "viclip"):
    return layout.to_state_dict(params)
  raise ValueError(f"unknown export kind {kind!r}; expected one of {KINDS}")


def write_state_dict(sd: Mapping[str, np.ndarray], path: str) -> None:
  """Writes .safetensors (no torch needed) or .pth (torch.save of a plain state_dict); atomic via rename.
  Floats are written as fp32, integer buffers (position ids) keep their dtype."""
  tmp = f"{path}.tmp-{os.getpid()}"
  arrays = {k: np.ascontiguousarray(v, v.dtype if np.issubdtype(v.dtype, np.integer) else np.float32)
            for k, v in sd.items()}
  if path.endswith(".safetensors"):
    from safetensors.numpy import save_file
    save_file(arrays, tmp)
  elif path.endswith((".pth", ".pt", ".bin")):
    import torch
    torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, tmp)
  else:
    raise ValueError(f"output {path!r} must end in .safetensors or .pth")
  os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--params", required=True, help="umt_jax params file (.npz) with export metadata")
  ap.add_argument("--out", required=True, help="output .pth or .safetensors")
  ap.add_argument("--kind", choices=KINDS, default=None, help="override the layout named in the metadata")
  args = ap.parse_args(argv)
  params, meta = params_io.load_params(args.params)
  kind = args.kind or meta.get("kind")
  if kind not in KINDS:
    raise ValueError(f"{args.params}: metadata kind {kind!r} is not exportable; pass --kind one of {KINDS}")
  missing = [k for k in ("encoder", "num_frames", "img_size") if kind == "classifier" and k not in meta]
  if missing:
    raise ValueError(f"{args.params}: metadata lacks {missing}, needed for the classifier layout")
  sd = state_dict_for(kind, params, meta)
  write_state_dict(sd, args.out)
  print(f"wrote {args.out}: {kind}, {len(sd)} keys, {sum(v.size for v in sd.values()):,} params")


if __name__ == "__main__":
  main()
