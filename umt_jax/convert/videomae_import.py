"""Import official VideoMAE V2 checkpoints into umt_jax params files (`umt-export-torch` is the inverse).

Reads .pth or .safetensors (`model` / `module` wrappers unwrapped, via umt_import.read) and tells the layout
from the keys:
  videomae_pretrain  `PretrainVisionTransformer`: encoder.* with encoder_to_decoder, mask_token, decoder.* (the
                     decoder-included files), or encoder.* alone (the released encoder-only pretraining files)
  classifier         a fine-tuned or distilled `VisionTransformer` (patch_embed, blocks.*, fc_norm, head):
                     the same layout as UMT's, imported by umt_import.import_single
The architecture comes from the tensors (encoder heads from the variant table: g/14 has 16 heads of 88;
decoder heads 64 wide, as every official script sets). The decoder's MLP width must be the encoder's
mlp_ratio times its width, as the official model builds it. Unknown, missing and misshapen keys are reported in
one error naming the file; nothing is written unless the import succeeds.

  python -m umt_jax.convert.videomae_import --src vit_g_hybrid_pt_1200e.pth --out vit_g_pt.npz
  python -m umt_jax.convert.videomae_import --src vit_b_k710_dl_from_giant.pth --out vit_b_k710.npz
"""
from __future__ import annotations

import argparse
import os
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from umt_jax import params_io
from umt_jax.convert import layout, umt_import
from umt_jax.models.heads import VideoMAEPretrain, decoder_mlp_dim

KINDS = ("videomae_pretrain", "classifier")
DECODER_HEAD_DIM = 64
_WHAT = "an official VideoMAE V2 pretraining checkpoint"


def detect_kind(sd: Mapping[str, np.ndarray], src: str) -> str:
  if any(k.startswith("clip_decoder.") for k in sd) or any(k.startswith("vision_encoder.") for k in sd):
    raise ValueError(f"cannot load {src}: it is a UMT checkpoint (clip_decoder.* / vision_encoder.*); use "
                     "umt-import-umt")
  if any(k.startswith("encoder.") for k in sd):
    return "videomae_pretrain"
  if "patch_embed.proj.weight" in sd:
    return "classifier"
  raise ValueError(f"cannot load {src}: not an official VideoMAE V2 checkpoint (no encoder.* or patch_embed.* "
                   f"keys; first keys: {sorted(sd)[:6]})")


def import_pretrain(sd: Mapping[str, np.ndarray], src: str, *, num_frames: int = 16, img_size: int = 224,
                    head_dim: int | None = None, decoder_head_dim: int = DECODER_HEAD_DIM) -> tuple[dict, dict]:
  """A pretraining state_dict -> (VideoMAEPretrain params (just `encoder` when the file has no decoder), metadata)."""
  enc = umt_import.infer_encoder(sd, "encoder.", src, head_dim, "videomae_pretrain")
  dec_keys = [k for k in sd if k.startswith("decoder.") or k in ("encoder_to_decoder.weight", "mask_token")]
  has_decoder = bool(dec_keys)  # without one, the target is the encoder's subtree of a one-block stand-in
  dec_dim = layout.need(sd, "encoder_to_decoder.weight", src, _WHAT).shape[0] if has_decoder else 64
  dec_depth = len(layout.layer_indices(sd, r"decoder\.blocks\.(\d+)\.")) if has_decoder else 1
  if has_decoder:
    mlp = layout.need(sd, "decoder.blocks.0.mlp.fc1.weight", src, _WHAT).shape[0]
    want = decoder_mlp_dim(dec_dim, enc)
    if mlp != want:
      raise ValueError(f"cannot load {src}: decoder.blocks.0.mlp.fc1 is {mlp} wide; the official model builds "
                       f"int({dec_dim} · {enc['mlp_dim']}/{enc['embed_dim']}) = {want}")
  if num_frames % enc["tubelet_size"] or img_size % enc["patch_size"]:
    raise ValueError(f"--num_frames {num_frames} / --img_size {img_size} do not divide into {src}'s tubelets "
                     f"{enc['tubelet_size']}×{enc['patch_size']}²")
  model = VideoMAEPretrain(encoder=enc, decoder_dim=dec_dim, decoder_depth=dec_depth,
                           decoder_heads=max(dec_dim // decoder_head_dim, 1))
  n = num_frames // enc["tubelet_size"] * (img_size // enc["patch_size"]) ** 2
  video, idx = jnp.zeros((1, num_frames, img_size, img_size, 3)), jnp.zeros((1, n), jnp.int32)
  target = jax.eval_shape(lambda: model.init(jax.random.key(0), video, idx, idx))["params"]
  if not has_decoder:
    target = {"encoder": target["encoder"]}
  params = layout.from_state_dict(sd, target, source=src)
  meta = {"kind": "videomae_pretrain", "encoder": enc, "num_frames": num_frames, "img_size": img_size,
          "decoder_dim": dec_dim if has_decoder else 0, "decoder_depth": dec_depth if has_decoder else 0,
          "decoder_heads": model.decoder_heads if has_decoder else 0, "source": os.path.abspath(src)}
  return params, meta


def import_file(src: str, *, num_frames: int = 16, img_size: int = 224, head_dim: int | None = None,
                decoder_head_dim: int = DECODER_HEAD_DIM) -> tuple[dict, dict]:
  """An official VideoMAE V2 file -> (params, params-file metadata)."""
  sd = umt_import.read(src)
  if detect_kind(sd, src) == "classifier":
    return umt_import.import_single(sd, src, "classifier", num_frames=num_frames, img_size=img_size,
                                    head_dim=head_dim)
  return import_pretrain(sd, src, num_frames=num_frames, img_size=img_size, head_dim=head_dim,
                         decoder_head_dim=decoder_head_dim)


def main(argv: list[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--src", required=True, help="official VideoMAE V2 checkpoint (.pth / .safetensors)")
  ap.add_argument("--out", required=True, help="output params file (.npz)")
  ap.add_argument("--num_frames", type=int, default=16)
  ap.add_argument("--img_size", type=int, default=224)
  ap.add_argument("--head_dim", type=int, default=0, help="encoder heads = width / this; 0: the variant's heads")
  ap.add_argument("--decoder_head_dim", type=int, default=DECODER_HEAD_DIM, help="decoder heads = width / this")
  args = ap.parse_args(argv)
  params, meta = import_file(args.src, num_frames=args.num_frames, img_size=args.img_size,
                             head_dim=args.head_dim or None, decoder_head_dim=args.decoder_head_dim)
  params_io.save_params(args.out, params, meta)
  e = meta["encoder"]
  what = (f"{meta['num_classes']} classes" if meta["kind"] == "classifier" else
          f"decoder {meta['decoder_dim']}×{meta['decoder_depth']}" if meta["decoder_depth"] else "no decoder")
  print(f"wrote {args.out}: {meta['kind']}, {layout.param_count(params):,} params (width {e['embed_dim']}, depth "
        f"{e['depth']}, {e['num_heads']} heads, patch {e['patch_size']}, tubelet {e['tubelet_size']}, {what})")


if __name__ == "__main__":
  main()
