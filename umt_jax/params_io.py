"""A framework-free params file: one .npz of '/'-joined Flax paths plus a JSON metadata entry.

Used for imported teachers and exported students; trainers restore full states through orbax instead.
"""
from __future__ import annotations

import json
import os
import zipfile
from typing import Any, Mapping

import flax
import numpy as np

_META = "__meta__"
WRITERS = "umt-import-clip / umt-import-bert / umt-import-umt, or a trainer's <workdir>/params.npz"


def save_params(path: str, params: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> None:
  """Writes atomically (tmp file + rename), so a crash never leaves a half-written file at `path`."""
  flat = flax.traverse_util.flatten_dict(flax.linen.meta.unbox(params), sep="/")
  arrays = {k: np.asarray(v, dtype=np.float32) for k, v in flat.items()}
  arrays[_META] = np.array(json.dumps(dict(meta or {})))
  tmp = f"{path}.tmp-{os.getpid()}.npz"
  with open(tmp, "wb") as f:
    np.savez(f, **arrays)
  os.replace(tmp, path)


def load_params(path: str) -> tuple[dict, dict]:
  """-> (params tree of numpy arrays, metadata dict). A missing, truncated or foreign file raises naming it and
  what was expected; the caller checks meta['kind'] against what it needs."""
  if not os.path.isfile(path):
    state = "is a directory" if os.path.isdir(path) else "does not exist"
    raise FileNotFoundError(f"params file {path!r} {state} (expected a .npz from {WRITERS})")
  if not zipfile.is_zipfile(path):
    raise ValueError(f"{path!r} is not a umt_jax params file (a .npz zip archive): truncated, or another kind of "
                     f"file; expected a .npz from {WRITERS} (PyTorch / safetensors checkpoints go through those)")
  try:
    with np.load(path, allow_pickle=False) as z:
      names = z.files
      meta = json.loads(str(z[_META])) if _META in names else None
      flat = {k: z[k] for k in names if k != _META} if isinstance(meta, dict) else {}
  except Exception as e:  # zipfile, zlib, numpy-format and JSON errors: a member cut short or damaged
    raise ValueError(f"params file {path!r} is truncated or corrupt ({type(e).__name__}: {e}); re-create it "
                     f"with {WRITERS}") from e
  if not isinstance(meta, dict):
    hint = " (it looks like a PyTorch checkpoint)" if any(n.endswith("data.pkl") for n in names) else ""
    raise ValueError(f"params file {path!r} has no {_META!r} metadata{hint}: it was not written by "
                     f"umt_jax.params_io; expected a .npz from {WRITERS}")
  return flax.traverse_util.unflatten_dict(flat, sep="/"), meta


def check_fits(tree: Mapping[str, Any], abstract: Mapping[str, Any], what: str, only_given: bool = False) -> None:
  """Every param of `abstract` is in `tree` with its shape (with `only_given`, those under the top-level keys
  `tree` has), and nothing else is, or one ValueError naming `what` and the keys."""
  have = {"/".join(p): np.shape(x) for p, x in flax.traverse_util.flatten_dict(tree).items()}
  want = {"/".join(p): tuple(x.shape) for p, x in flax.traverse_util.flatten_dict(abstract).items()}
  top = {k.split("/")[0] for k in have}
  missing = sorted(k for k in want if (not only_given or k.split("/")[0] in top) and k not in have)
  unexpected = sorted(set(have) - set(want))
  wrong = sorted(f"{k}: file {have[k]} vs model {want[k]}" for k in set(have) & set(want) if have[k] != want[k])
  if missing or unexpected or wrong:
    raise ValueError(f"{what} does not fit the model: missing {missing[:8]}; unexpected {unexpected[:8]}; "
                     f"shape mismatches {wrong[:8]}")


def place(tree: Any, abstract: Any, shardings: Any) -> Any:
  """Host arrays (the same on every process) -> global arrays of `abstract`'s dtypes with `shardings`."""
  import jax

  def put(x, like, s):
    x = np.asarray(x, like.dtype)
    return jax.make_array_from_callback(x.shape, s, lambda i: x[i])
  return jax.tree.map(put, tree, abstract, shardings)

