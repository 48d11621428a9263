"""The one table between Flax param trees and PyTorch state_dict keys.

Names: path segments join with '.', `blocks_3` -> `blocks.3` (also `resblocks_`, `clip_decoder_`, BERT's
`layer_`), and leaf `kernel`/`scale`/`embedding` -> `weight`. Tensors: Dense kernels (in..., out...) become torch
[out, in] (attention kernels fold their head axes: q/k/v (D, H, Dh) -> [H·Dh, D], outputs (H, Dh, D) -> [D, H·Dh]),
patch-embedding kernels (kt, p, p, C, D) become Conv [D, C, kt, p, p], split head biases flatten. Everything else
is copied as is.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import flax
import jax
import numpy as np

_LIST = re.compile(r"^(blocks|resblocks|clip_decoder|layer)_(\d+)$")
_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight"}
_CONV = re.compile(r"(^|\.)(patch_embed\.proj|conv1)\.weight$")
_LINEAR = re.compile(r"(\.weight|in_proj_weight)$")
_ATTN_OUT = re.compile(r"(attn\.(proj|out_proj)|attention\.output\.dense)\.weight$")  # also crossattention
_HEAD_BIAS = re.compile(r"(q_bias|v_bias|in_proj_bias|\.(query|key|value)\.bias)$")


def layer_indices(sd: Mapping[str, np.ndarray], pattern: str) -> list[int]:
  """Sorted distinct integers captured by `pattern`'s group 1 at the start of the keys (layer numbers)."""
  return sorted({int(m.group(1)) for k in sd if (m := re.match(pattern, k))})


def need(sd: Mapping[str, np.ndarray], key: str, src: str, what: str) -> np.ndarray:
  """`sd[key]`, or an error naming the file, the missing key and what the file was expected to be."""
  if key not in sd:
    raise ValueError(f"cannot load {src}: it has no {key!r}, so it is not {what} (first keys: {sorted(sd)[:6]})")
  return sd[key]


def param_count(params: Any) -> int:
  return sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(params))


def torch_name(path: tuple[str, ...]) -> str:
  """Flax path ('encoder', 'blocks_0', 'attn', 'qkv', 'kernel') -> 'encoder.blocks.0.attn.qkv.weight'."""
  *mods, leaf = path
  mods = [_LIST.sub(r"\1.\2", m) for m in mods]
  return ".".join(mods + [_LEAF.get(leaf, leaf)])


def _kind(name: str, flax_leaf: str) -> str:
  if _CONV.search(name):
    return "conv"
  if flax_leaf in ("kernel", "in_proj_weight") and _LINEAR.search(name):
    return "linear"
  return "plain"


def to_torch_array(name: str, flax_leaf: str, x: np.ndarray) -> np.ndarray:
  """One Flax array -> its torch layout."""
  kind = _kind(name, flax_leaf)
  if kind == "conv":
    n = x.ndim
    return np.ascontiguousarray(np.transpose(x, (n - 1, n - 2) + tuple(range(n - 2))))
  if kind == "linear":
    n_in = 2 if _ATTN_OUT.search(name) else 1
    return np.ascontiguousarray(x.reshape(int(np.prod(x.shape[:n_in])), -1).T)
  if _HEAD_BIAS.search(name):
    return x.reshape(-1)
  return x


def from_torch_array(name: str, flax_leaf: str, t: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """One torch array -> the Flax layout of `shape` (the inverse of `to_torch_array`)."""
  kind = _kind(name, flax_leaf)
  if kind == "conv":  # [D, C, *spatial] -> (*spatial, C, D); a singleton time axis may be added or dropped
    t = np.transpose(t, tuple(range(2, t.ndim)) + (1, 0))
  elif kind == "linear":
    if t.ndim != 2:
      raise ValueError(f"{name}: expected a 2-D Linear weight, got shape {t.shape}")
    t = t.T
  if t.size != int(np.prod(shape)):
    raise ValueError(f"{name}: shape {tuple(t.shape)} in the checkpoint does not fit the model's {tuple(shape)}")
  return np.array(t.reshape(shape), order="C")  # (ascontiguousarray would turn 0-d into 1-d)


def to_state_dict(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Flax params tree -> flat {torch key: fp32 numpy array in torch layout}."""
  params = flax.linen.meta.unbox(params)
  flat = flax.traverse_util.flatten_dict(params)
  out = {}
  for path, x in flat.items():
    name = torch_name(path)
    out[name] = to_torch_array(name, path[-1], np.asarray(x, dtype=np.float32))
  return out


def from_state_dict(state_dict: Mapping[str, np.ndarray], target: Mapping[str, Any], *,
                    source: str = "checkpoint", ignore: tuple[str, ...] = ()) -> dict:
  """Flat torch state_dict -> a Flax params tree with the structure and shapes of `target`.

  target: params tree of arrays or ShapeDtypeStructs (e.g. from jax.eval_shape). Unknown keys (except those
  matching an `ignore` regex), missing keys and shape mismatches raise one ValueError naming all of them.
  """
  target = flax.linen.meta.unbox(target)
  flat = flax.traverse_util.flatten_dict(target)
  wanted = {torch_name(p): p for p in flat}
  unexpected = sorted(k for k in state_dict if k not in wanted and not any(re.search(i, k) for i in ignore))
  missing = sorted(k for k in wanted if k not in state_dict)
  errors, out = [], {}
  for name, path in wanted.items():
    if name not in state_dict:
      continue
    try:
      out[path] = from_torch_array(name, path[-1], np.asarray(state_dict[name], np.float32), flat[path].shape)
    except ValueError as e:
      errors.append(str(e))
  if missing or unexpected or errors:
    lines = [f"cannot load {source}:"]
    if missing:
      lines.append(f"  missing keys ({len(missing)}): {', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}")
    if unexpected:
      lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}"
                   f"{' ...' if len(unexpected) > 20 else ''}")
    lines += [f"  {e}" for e in errors]
    raise ValueError("\n".join(lines))
  return flax.traverse_util.unflatten_dict(out)
