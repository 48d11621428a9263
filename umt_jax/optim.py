"""Optimizers of the official recipes: AdamW with a weight-decay mask, layer-wise lr decay, warmup + cosine.

AdamW is composed as scale_by_adam -> add_decayed_weights(mask) -> lr schedule -> per-param lr scale, which
is what torch's AdamW does with one param group per lr scale (the group lr multiplies the decay term too).
"""
from __future__ import annotations

import re
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

# Names in the official `no_weight_decay()` sets, besides every 1-D param (norms, biases).
NO_DECAY_NAMES = ("pos_embed", "positional_embedding", "class_embedding", "logit_scale", "mask_token")


def schedule(peak_lr: float, total_steps: int, warmup_steps: int, min_lr: float = 0.0,
             warmup_start: float = 0.0) -> optax.Schedule:
  """Linear warmup from `warmup_start` to `peak_lr`, then per-step cosine to `min_lr` (the official
  `cosine_scheduler`)."""
  return optax.warmup_cosine_decay_schedule(warmup_start, peak_lr, max(warmup_steps, 0),
                                            max(total_steps, warmup_steps + 1), min_lr)


def path_name(path) -> str:
  """A jax key path -> 'blocks_0/attn/qkv/kernel'."""
  return "/".join(str(getattr(k, "key", k)) for k in path)


# Leaves that are 1-D in the torch layout even where Flax splits heads ((H, Dh) q_bias, query/bias, ...).
_TORCH_1D = ("bias", "q_bias", "v_bias", "in_proj_bias", "scale")


def decay_mask(params: Any) -> Any:
  """True where weight decay applies, as the official `len(param.shape) == 1 or name.endswith('.bias')` rule
  reads it on the torch layout: not biases, norms or other 1-D params (0-d ones such as stage 2's `temp` are
  decayed), and not the position tables / tokens in `NO_DECAY_NAMES`."""
  def decays(path, x) -> bool:
    name = path_name(path)
    return (x.ndim != 1 and name.rsplit("/", 1)[-1] not in _TORCH_1D
            and not any(n in name for n in NO_DECAY_NAMES))
  return jax.tree_util.tree_map_with_path(decays, params)


def layer_id(path: str, depth: int) -> int:
  """The official fine-tuning `get_layer_id_for_vit`: patch_embed/pos_embed -> 0, blocks.i -> i+1, rest -> depth+1."""
  if "patch_embed" in path or "pos_embed" in path:
    return 0
  m = re.search(r"blocks_(\d+)", path)
  return int(m.group(1)) + 1 if m else depth + 1


def layer_scales(params: Any, depth: int, decay: float) -> Any:
  """Per-param lr multipliers decay^(depth + 1 - layer_id); all ones when decay == 1."""
  return jax.tree_util.tree_map_with_path(lambda p, _: decay ** (depth + 1 - layer_id(path_name(p), depth)), params)


def scale_by_tree(scales: Any) -> optax.GradientTransformation:
  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales), state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def make_optimizer(cfg: ml_collections.ConfigDict, params: Any, total_steps: int, steps_per_epoch: float,
                   depth: int = 0) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """cfg: optim ConfigDict (lr, min_lr, warmup_epochs, b1, b2, eps, weight_decay, layer_decay, grad_clip, batch
  scaling). `lr` and `min_lr` are per 256 clips, scaled by `batch_size / 256` as the official scripts do."""
  scale = cfg.batch_size / 256 if cfg.scale_lr_by_batch else 1.0
  sched = schedule(cfg.lr * scale, total_steps, int(round(cfg.warmup_epochs * steps_per_epoch)),
                   cfg.min_lr * scale, cfg.warmup_lr * scale)
  parts = []
  if cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip))
  parts += [optax.scale_by_adam(cfg.b1, cfg.b2, cfg.eps),
            optax.add_decayed_weights(cfg.weight_decay, decay_mask(params)),
            optax.scale_by_learning_rate(sched)]
  if cfg.layer_decay < 1.0:
    parts.append(scale_by_tree(layer_scales(params, depth, cfg.layer_decay)))
  return optax.chain(*parts), sched


def param_count(params: Any) -> int:
  return sum(x.size for x in jax.tree.leaves(flax.linen.meta.unbox(params)))
