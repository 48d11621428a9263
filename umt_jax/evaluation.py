"""Multi-view evaluation: every (clip, crop) view of a video through a model, softmax averaged over the views
(the official `merge`), then top-1 / top-5 overall and per class group (temporal / appearance on data that
marks them).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from umt_jax import input_pipeline as ip, sharding


def predict(fn: Callable[[Any, jax.Array], jax.Array], params: Any, source: ip.Source, batch_size: int,
            mesh: jax.sharding.Mesh, param_shardings: Any = None) -> tuple[np.ndarray, np.ndarray]:
  """fn(params, video (N, T, S, S, 3) uint8) -> (N, D) outputs per view. -> (view-averaged outputs (E, D),
  labels (E,)) over the split's E examples, on every process."""
  ds, n = ip.eval_dataset(source, batch_size)

  def step(params, video):  # (B, V, T, S, S, 3) -> (B, D)
    b, v = video.shape[:2]
    out = fn(params, video.reshape((b * v,) + video.shape[2:]))
    return out.reshape(b, v, -1).mean(axis=1)

  jitted = jax.jit(step, in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=sharding.replicated(mesh))
  outs, labels = [], []
  for local in ds:
    batch = ip.to_global(local, mesh)
    with jax.set_mesh(mesh):
      outs.append(np.asarray(jitted(params, batch["video"])))
    labels.append(np.asarray(jax.jit(lambda x: x, out_shardings=sharding.replicated(mesh))(batch["label"])))
  return np.concatenate(outs)[:n], np.concatenate(labels)[:n]


def top1_hits(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """probs (E, C), labels (E,) -> (E,) bool, the top-1 prediction is right (the first of tied maxima)."""
  return np.argmax(probs, axis=1) == labels


def accuracy(probs: np.ndarray, labels: np.ndarray, label_names: Sequence[str] | None = None,
             temporal: Sequence[str] = ()) -> dict:
  """top1/top5 (%), and top1_temporal / top1_appearance when `temporal` names some classes."""
  order = np.argsort(-probs, axis=1)
  hit1 = top1_hits(probs, labels)
  out = {"top1": 100 * hit1.mean(), "top5": 100 * (order[:, :5] == labels[:, None]).any(1).mean()}
  if temporal and label_names:
    is_t = np.isin(np.asarray(label_names)[labels], list(temporal))
    out["top1_temporal"] = 100 * hit1[is_t].mean() if is_t.any() else float("nan")
    out["top1_appearance"] = 100 * hit1[~is_t].mean() if (~is_t).any() else float("nan")
  return out


def softmax_views(apply: Callable[..., jax.Array]) -> Callable[[Any, jax.Array], jax.Array]:
  """A classifier's apply(params, video) -> per-view softmax, video uint8 normalised on device."""
  return lambda params, video: jax.nn.softmax(apply(params, ip.normalize(video)).astype(jnp.float32), axis=-1)
