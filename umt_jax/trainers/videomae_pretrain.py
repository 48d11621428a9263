"""VideoMAE V2 pretraining: pixel reconstruction with dual masking.

Per step, for each of the B·num_sample samples (repeated augmentation: `data.num_sample` crops of every loaded
clip, each masked independently; `batch_size` and so the lr scaling count loaded clips, as the official does):
tube mask (one random spatial mask repeated over time, `videomae.mask_ratio`) -> encoder on the Nv visible
tokens -> running-cell decoder mask (one random phase of 4 per sample, `videomae.decoder_mask_ratio`; 0 gives
VideoMAE v1: the decoder reconstructs every encoder-masked token) -> decoder on [proj(enc) + pos, mask_token +
pos at the Nd decoder-kept tokens] -> pixels at the Nd mask-token slots -> `pixel_loss` over decoder-kept ∩
encoder-masked tokens against per-patch normalised targets (fp32, unbiased std + 1e-6). Masks are drawn on
device from the step's key, so all shapes are static. Checkpoints, resume and sharding: the shared loop.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from umt_jax import config_lib, flops, input_pipeline as ip, losses, masking
from umt_jax.models.heads import VideoMAEPretrain, decoder_mlp_dim
from umt_jax.train_loop import Task, run_and_save


def build(config: ml_collections.ConfigDict) -> VideoMAEPretrain:
  v = config.videomae
  return VideoMAEPretrain(encoder=config_lib.student_kwargs(config.model), decoder_dim=v.decoder_dim,
                          decoder_depth=v.decoder_depth, decoder_heads=v.decoder_heads,
                          dtype=jnp.dtype(config.model.dtype))


def token_grid(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  kt, p = config.model.tubelet_size, config_lib.student_kwargs(config.model)["patch_size"]
  t, s = config.data.num_frames, config.data.size
  if t % kt or s % p:
    raise ValueError(f"config.data: {t} frames of {s}² do not divide into tubelets {kt}×{p}×{p} (config.model)")
  return t // kt, s // p, s // p


def dual_masks(key: jax.Array, batch: int, grid: tuple[int, int, int], mask_ratio: float,
               decoder_mask_ratio: float) -> tuple[jax.Array, jax.Array]:
  """-> (visible (B, Nv) tube-mask tokens the encoder sees, decode (B, Nd) tokens the decoder reconstructs)."""
  k_enc, k_dec = jax.random.split(key)
  visible = masking.tube_mask(k_enc, batch, grid, mask_ratio)
  if decoder_mask_ratio == 0:
    return visible, masking.encoder_masked(visible, grid[0] * grid[1] * grid[2])
  return visible, masking.running_cell_mask(k_dec, batch, grid, decoder_mask_ratio)


def reconstruction(model: VideoMAEPretrain, grid: tuple[int, int, int], v: ml_collections.ConfigDict):
  """The objective: loss(params, batch, rng, _) -> (pixel_loss, {}). batch['video'] (B[, num_sample], T, S, S, 3)
  uint8; repeated views are flattened into the batch."""
  kt, p = model.encoder["tubelet_size"], model.encoder["patch_size"]

  def loss(params, batch, rng, _):
    video = batch["video"]
    video = video.reshape((-1,) + video.shape[-4:])
    k_mask, k_drop = jax.random.split(rng)
    visible, decode = dual_masks(k_mask, video.shape[0], grid, v.mask_ratio, v.decoder_mask_ratio)
    pred = model.apply({"params": params}, ip.normalize(video, model.dtype), visible, decode, deterministic=False,
                       rngs={"dropout": k_drop})
    targets = losses.pixel_targets(video.astype(jnp.float32) / 255.0, kt, p, v.normalize_target)
    return losses.pixel_loss(pred, targets, visible, decode), {}
  return loss


def model_task(config: ml_collections.ConfigDict) -> Task:
  """The stage without data: init, the dual-masked loss, analytic FLOPs of B·num_sample samples."""
  model, grid, v = build(config), token_grid(config), config.videomae
  n = grid[0] * grid[1] * grid[2]
  nv = masking.num_visible(grid[1] * grid[2], v.mask_ratio) * grid[0]
  nd = n - nv if v.decoder_mask_ratio == 0 else int((masking.running_cell_patterns(grid, v.decoder_mask_ratio)[0] == 0).sum())
  s = config.data.size
  init = lambda rng: model.init({"params": rng}, jnp.zeros((1, config.data.num_frames, s, s, 3)),
                                jnp.zeros((1, nv), jnp.int32), jnp.zeros((1, nd), jnp.int32))["params"]
  enc = model.encoder
  step_flops = flops.videomae_step(config.batch_size * config.data.num_sample, nv, nd, enc, v.decoder_dim,
                                   v.decoder_depth, decoder_mlp_dim(v.decoder_dim, enc), enc["tubelet_size"])
  return Task(init=init, loss=reconstruction(model, grid, v), flops_per_step=step_flops)


def batch_shapes(config: ml_collections.ConfigDict) -> dict:
  """{'video': (global shape, dtype)} of a training batch."""
  b, t, s, ns = config.batch_size, config.data.num_frames, config.data.size, config.data.num_sample
  return {"video": ((b,) + ((ns,) if ns > 1 else ()) + (t, s, s, 3), jnp.uint8)}


def make_task(config: ml_collections.ConfigDict) -> Task:
  meta = config_lib.check_data(config, (config.data.split,))
  data = ip.train_dataset([ip.Source(config.data.path, config.data.split, clip=config_lib.clip_spec(config.data))],
                          config.batch_size, config.seed)
  n_train = meta["splits"][config.data.split]["num_records"] if meta else 0
  return dataclasses.replace(model_task(config), train_data=data, clips_per_epoch=n_train)


def export_meta(config: ml_collections.ConfigDict) -> dict:
  v = config.videomae
  return {**config_lib.student_export_meta(config, "videomae_pretrain"), "decoder_dim": v.decoder_dim,
          "decoder_depth": v.decoder_depth, "decoder_heads": v.decoder_heads}


def train(config: ml_collections.ConfigDict, workdir: str, devices=None):
  return run_and_save(config, workdir, make_task(config), export_meta(config), devices)
