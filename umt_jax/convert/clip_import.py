"""Import CLIP weights into umt_jax: OpenAI-layout state_dicts and Hugging Face `CLIPModel` folders.

Sources: OpenAI `clip` TorchScript archives and open_clip / UMT `.pt/.pth` state_dicts (full or visual-only,
as UMT's extract notebook saves them), HF folders (config.json + model.safetensors / pytorch_model.bin) or
bare `.safetensors` files in either layout. HF keys are renamed to the OpenAI layout first, then the
generic table in `layout.py` builds the Flax tree.

CLI (writes a params file the trainers load as the teacher):
  python -m umt_jax.convert.clip_import --src ViT-L-14.pt --out clip_l14_196.npz --image_size 196 --visual_only
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from umt_jax import params_io
from umt_jax.convert import layout
from umt_jax.models.clip import CLIP, CLIPConfig, CLIPVision
from umt_jax.models.posemb import resize_grid_table

IGNORED = (r"position_ids$", r"^input_resolution$", r"^context_length$", r"^vocab_size$")


def _to_numpy(t) -> np.ndarray:
  return t.detach().float().cpu().numpy() if hasattr(t, "detach") else np.asarray(t, np.float32)


def read_checkpoint(path: str) -> dict[str, np.ndarray]:
  """Flat {key: fp32 array} from a .safetensors / .pt / .pth / .bin file or an HF folder."""
  if os.path.isdir(path):
    for name in ("model.safetensors", "pytorch_model.bin"):
      if os.path.isfile(os.path.join(path, name)):
        return read_checkpoint(os.path.join(path, name))
    raise FileNotFoundError(f"{path!r} holds neither model.safetensors nor pytorch_model.bin")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"checkpoint {path!r} does not exist")
  if path.endswith(".safetensors"):
    from safetensors import safe_open
    with safe_open(path, framework="pt" if _has_torch() else "numpy") as f:
      sd = {k: _to_numpy(f.get_tensor(k)) for k in f.keys()}
  else:
    import torch
    try:
      if _is_torchscript(path):  # OpenAI's released .pt files are TorchScript archives
        obj = torch.jit.load(path, map_location="cpu").state_dict()
      else:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
      raise ValueError(f"{path!r} is neither a torch state_dict nor a TorchScript archive: {e}") from e
    for key in ("state_dict", "model", "module"):
      if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
        obj = obj[key]
    if not isinstance(obj, Mapping):
      raise ValueError(f"{path!r} holds a {type(obj).__name__}, expected a state_dict")
    sd = {k: _to_numpy(v) for k, v in obj.items() if hasattr(v, "shape")}
  return {k.removeprefix("module."): v for k, v in sd.items()}


def _is_torchscript(path: str) -> bool:
  import zipfile
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as z:
    return any(n.endswith("constants.pkl") for n in z.namelist())


def _has_torch() -> bool:
  try:
    import torch  # noqa: F401
    return True
  except ImportError:
    return False


_HF_BLOCK = [("self_attn.out_proj.", "attn.out_proj."), ("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."),
             ("mlp.fc1.", "mlp.c_fc."), ("mlp.fc2.", "mlp.c_proj.")]
_HF_TOP = {
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "logit_scale": "logit_scale",
}


def hf_to_openai(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Rename a Hugging Face CLIPModel state_dict to the OpenAI layout (q/k/v fused into in_proj)."""
  out, qkv = {}, {}
  for k, v in sd.items():
    if re.search(IGNORED[0], k):
      continue
    if k in _HF_TOP:
      out[_HF_TOP[k]] = v
    elif k in ("visual_projection.weight", "text_projection.weight"):
      out["visual.proj" if k.startswith("visual") else "text_projection"] = v.T
    elif m := re.match(r"^(vision|text)_model\.encoder\.layers\.(\d+)\.(.*)$", k):
      tower, i, rest = m.groups()
      prefix = f"{'visual.' if tower == 'vision' else ''}transformer.resblocks.{i}."
      if q := re.match(r"self_attn\.([qkv])_proj\.(weight|bias)$", rest):
        qkv.setdefault((prefix, q.group(2)), {})[q.group(1)] = v
        continue
      for a, b in _HF_BLOCK:
        if rest.startswith(a):
          rest = b + rest[len(a):]
          break
      else:
        raise ValueError(f"unknown Hugging Face CLIP key {k!r}")
      out[prefix + rest] = v
    else:
      raise ValueError(f"unknown Hugging Face CLIP key {k!r}")
  for (prefix, kind), parts in qkv.items():
    if set(parts) != {"q", "k", "v"}:
      raise ValueError(f"{prefix}: q/k/v projection {kind} incomplete, found {sorted(parts)}")
    out[f"{prefix}attn.in_proj_{kind}"] = np.concatenate([parts["q"], parts["k"], parts["v"]], axis=0)
  return out


def _count(sd: Mapping[str, np.ndarray], prefix: str) -> int:
  return len(layout.layer_indices(sd, re.escape(prefix) + r"(\d+)\."))


def infer_config(sd: Mapping[str, np.ndarray], head_dim: int = 64, hf_config: dict | None = None) -> CLIPConfig:
  """CLIPConfig from an OpenAI-layout state_dict (heads = width / head_dim, as OpenAI's build_model)."""
  if hf_config is not None:
    v, t = hf_config["vision_config"], hf_config.get("text_config", {})
    act = v.get("hidden_act", "quick_gelu")
    for name, c in (("vision_config", v), ("text_config", t)):
      if c and c.get("intermediate_size", 4 * c["hidden_size"]) != 4 * c["hidden_size"]:
        raise ValueError(f"{name}.intermediate_size must be 4 × hidden_size, got {c['intermediate_size']}")
    if act not in ("quick_gelu", "gelu"):
      raise ValueError(f"vision_config.hidden_act {act!r} unsupported; expected 'quick_gelu' or 'gelu'")
    return CLIPConfig(
        embed_dim=hf_config.get("projection_dim", 512), image_size=v["image_size"], patch_size=v["patch_size"],
        vision_width=v["hidden_size"], vision_layers=v["num_hidden_layers"], vision_heads=v["num_attention_heads"],
        context_length=t.get("max_position_embeddings", 77), vocab_size=t.get("vocab_size", 49408),
        text_width=t.get("hidden_size", 512), text_layers=t.get("num_hidden_layers", 0),
        text_heads=t.get("num_attention_heads", 8), act=act, norm_eps=v.get("layer_norm_eps", 1e-5))
  if "visual.conv1.weight" not in sd:
    raise ValueError("not a CLIP state_dict: no 'visual.conv1.weight' (nor 'conv1.weight' for visual-only files)")
  conv = sd["visual.conv1.weight"]
  width, patch = conv.shape[0], conv.shape[-1]
  grid = int(round(np.sqrt(sd["visual.positional_embedding"].shape[0] - 1)))
  kw = dict(embed_dim=sd["visual.proj"].shape[1], image_size=grid * patch, patch_size=patch, vision_width=width,
            vision_layers=_count(sd, "visual.transformer.resblocks."), vision_heads=width // head_dim)
  if "token_embedding.weight" in sd:
    tw = sd["ln_final.weight"].shape[0]
    kw.update(context_length=sd["positional_embedding"].shape[0], vocab_size=sd["token_embedding.weight"].shape[0],
              text_width=tw, text_layers=_count(sd, "transformer.resblocks."), text_heads=tw // head_dim)
  return CLIPConfig(**kw)


def import_clip(src: str, *, image_size: int | None = None, visual_only: bool = False,
                head_dim: int = 64) -> tuple[dict, CLIPConfig]:
  """-> (Flax params of CLIP, or of its `visual` tower only when `visual_only`, config)."""
  sd = read_checkpoint(src)
  hf_cfg = None
  cfg_file = os.path.join(src if os.path.isdir(src) else os.path.dirname(src), "config.json")
  if any(k.startswith(("vision_model.", "text_model.")) for k in sd):
    if os.path.isfile(cfg_file):
      with open(cfg_file) as f:
        hf_cfg = json.load(f)
    sd = hf_to_openai(sd)
  elif "conv1.weight" in sd and "visual.conv1.weight" not in sd:  # UMT's extracted visual-only file
    sd = {f"visual.{k}": v for k, v in sd.items()}
  cfg = infer_config(sd, head_dim, hf_cfg)
  text = "token_embedding.weight" in sd
  if image_size and image_size != cfg.image_size:
    if image_size % cfg.patch_size:
      raise ValueError(f"--image_size {image_size} is not a multiple of the patch size {cfg.patch_size}")
    g = image_size // cfg.patch_size
    sd["visual.positional_embedding"] = resize_grid_table(sd["visual.positional_embedding"], (g, g))
    cfg = dataclasses.replace(cfg, image_size=image_size)
  if visual_only or not text:
    sd = {k.removeprefix("visual."): v for k, v in sd.items() if k.startswith("visual.")}
    img = jnp.zeros((1, cfg.image_size, cfg.image_size, 3))
    target = jax.eval_shape(lambda: CLIPVision(cfg).init(jax.random.key(0), img))["params"]
  else:
    img = jnp.zeros((1, cfg.image_size, cfg.image_size, 3))
    ids = jnp.zeros((1, cfg.context_length), jnp.int32)
    target = jax.eval_shape(lambda: CLIP(cfg).init(jax.random.key(0), img, ids))["params"]
  params = layout.from_state_dict(sd, target, source=src, ignore=IGNORED)
  return params, cfg


def load_teacher(path: str) -> tuple[CLIPConfig, dict]:
  """A params file written by this CLI -> (config, {'visual': params}) ready for `CLIPTeacher.apply`."""
  params, meta = params_io.load_params(path)
  if meta.get("kind") not in ("clip", "clip_visual"):
    raise ValueError(f"params file {path!r} holds {meta.get('kind')!r} params; expected a CLIP image tower (kind "
                     "'clip' or 'clip_visual': umt-import-clip, umt-import-umt --teacher_out, or stage 0's params.npz)")
  cfg = CLIPConfig(**meta["clip_config"])
  return cfg, {"visual": params["visual"] if meta["kind"] == "clip" else params}


def main(argv: list[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--src", required=True, help="checkpoint file (.pt/.pth/.bin/.safetensors) or HF folder")
  ap.add_argument("--out", required=True, help="output params file (.npz)")
  ap.add_argument("--image_size", type=int, default=None, help="resize the position table to this input size")
  ap.add_argument("--visual_only", action="store_true", help="keep only the image tower (the UMT teacher)")
  ap.add_argument("--head_dim", type=int, default=64, help="head width for OpenAI-layout files (heads = width/this)")
  args = ap.parse_args(argv)
  params, cfg = import_clip(args.src, image_size=args.image_size, visual_only=args.visual_only,
                            head_dim=args.head_dim)
  meta = {"kind": "clip_visual" if args.visual_only or "visual" not in params else "clip",
          "clip_config": dataclasses.asdict(cfg), "source": os.path.abspath(args.src)}
  params_io.save_params(args.out, params, meta)
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  print(f"wrote {args.out}: {meta['kind']} {n:,} params, image_size {cfg.image_size}, patch {cfg.patch_size}")


if __name__ == "__main__":
  main()
