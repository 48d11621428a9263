"""Per-class LLM descriptions for MSTA's consistency loss, in the ETL4Video format.

`{dir}/{N}_{s|t}_description_{dataset}.json` (s = spatial, t = temporal; ETL4Video ships N = 2, 4, 8 for hmdb,
ucf_101, k400, k600, ssv2, plus `_base` / `_novel` files re-indexed within each subset) holds a JSON object
mapping the class index as a string to its N sentences, e.g. {"0": ["A video about smooth, flowing strokes.",
...], "1": [...]}. Spatial sentences read "A video about {appearance}."; temporal ones "A video of {cls} generally
involves the following step: {sub-step}, which is a sub-step.", the sub-steps in order.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

KINDS = ("s", "t")


def description_path(directory: str, n: int, kind: str, dataset: str) -> str:
  if kind not in KINDS:
    raise ValueError(f"description kind {kind!r}; expected 's' (spatial) or 't' (temporal)")
  return os.path.join(directory, f"{n}_{kind}_description_{dataset}.json")


def read_descriptions(path: str, class_names: Sequence[str]) -> list[list[str]]:
  """-> one non-empty list of sentences per class, in class-index order. A missing file, invalid JSON, a class
  without an entry, an empty list, a non-string sentence or a key that is no class index raise naming the file
  (and the class)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"description file {path!r} not found (expected ETL4Video's "
                            "{N}_{s|t}_description_{dataset}.json; set config.msta.descriptions / description_name)")
  with open(path, encoding="utf-8-sig") as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"description file {path!r} is not valid JSON: {e}") from None
  if not isinstance(data, dict):
    raise ValueError(f"description file {path!r}: expected an object {{\"<class index>\": [sentences]}}, got a "
                     f"{type(data).__name__}")
  n = len(class_names)
  extra = sorted(set(data) - {str(i) for i in range(n)})
  if extra:
    raise ValueError(f"description file {path!r} has keys {extra[:5]} that are not class indices 0..{n - 1} (the "
                     f"dataset has {n} classes: is it the file of another dataset or split?)")
  out = []
  for i, name in enumerate(class_names):
    where = f"description file {path!r}, class {i} ({name!r})"
    if str(i) not in data:
      raise ValueError(f"{where}: no entry")
    sentences = data[str(i)]
    if not isinstance(sentences, list) or not sentences:
      raise ValueError(f"{where}: expected a non-empty list of sentences, got {sentences!r}")
    bad = [s for s in sentences if not isinstance(s, str) or not s.strip()]
    if bad:
      raise ValueError(f"{where}: sentences must be non-empty strings, got {bad[0]!r}")
    out.append(list(sentences))
  return out


def write_descriptions(directory: str, n: int, dataset: str, spatial: Sequence[Sequence[str]],
                       temporal: Sequence[Sequence[str]]) -> tuple[str, str]:
  """Writes the spatial and temporal files of `dataset` (lists indexed by class) -> their paths."""
  os.makedirs(directory, exist_ok=True)
  paths = []
  for kind, per_class in (("s", spatial), ("t", temporal)):
    path = description_path(directory, n, kind, dataset)
    with open(path, "w") as f:
      json.dump({str(i): list(s) for i, s in enumerate(per_class)}, f, indent=1)
    paths.append(path)
  return paths[0], paths[1]
