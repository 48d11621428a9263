"""A framework-free params file: one .npz of '/'-joined Flax paths plus a JSON metadata entry.

Used for imported teachers and exported students; trainers restore full states through orbax instead.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import flax
import numpy as np

_META = "__meta__"


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
  """-> (params tree of numpy arrays, metadata dict)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"params file {path!r} does not exist")
  try:
    with np.load(path, allow_pickle=False) as z:
      flat = {k: z[k] for k in z.files}
  except Exception as e:  # zipfile / numpy errors for truncated or foreign files
    raise ValueError(f"{path!r} is not a umt_jax params file (.npz): {e}") from e
  if _META not in flat:
    raise ValueError(f"{path!r} has no {_META!r} entry; it was not written by umt_jax.params_io.save_params")
  meta = json.loads(str(flat.pop(_META)))
  return flax.traverse_util.unflatten_dict(flat, sep="/"), meta
