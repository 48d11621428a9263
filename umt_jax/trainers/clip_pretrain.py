"""Stage 0 (demo only): image-text CLIP on single frames and captions, so the demo has a teacher without
downloads. Real runs import OpenAI / open_clip / Hugging Face weights with `umt-import-clip` instead.

One random frame per clip (segment sampling with T=1) -> CLIP image tower; the caption -> a word-level
tokenizer (saved as `tokenizer.json`) -> text tower; symmetric InfoNCE with a learned temperature (clamped
at 100, as CLIP). The image tower is fed ImageNet-normalised frames, exactly what the UMT teacher receives.
The result, `<workdir>/params.npz`, has the format `umt-import-clip` writes: stage 1 loads it as its teacher.
"""
from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import ml_collections
import optax

from umt_jax import config_lib, flops, input_pipeline as ip, tokenizer as tok
from umt_jax.models.clip import CLIP, CLIPConfig
from umt_jax.train_loop import Task, run_and_save


def clip_config(config: ml_collections.ConfigDict, vocab_size: int) -> CLIPConfig:
  return CLIPConfig(**{**config.clip.to_dict(), "image_size": config.data.size, "vocab_size": vocab_size})


def make_task(config: ml_collections.ConfigDict, workdir: str, devices=None) -> tuple[Task, CLIPConfig]:
  meta = config_lib.check_data(config, (config.data.split,))
  source = ip.open_source(config.data.path, config.data.split)
  tokenizer = tok.WordTokenizer.from_records(source, config.clip.context_length)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    tokenizer.save(f"{workdir}/tokenizer.json")
  cfg = clip_config(config, tokenizer.vocab_size)
  model = CLIP(cfg, dtype=jnp.dtype(config.model.dtype))
  s = config.data.size
  init = lambda rng: model.init({"params": rng}, jnp.zeros((1, s, s, 3)),
                                jnp.zeros((1, cfg.context_length), jnp.int32))["params"]

  def loss(params, batch, rng, _):
    del rng
    images = ip.normalize(batch["video"][:, 0], jnp.dtype(config.model.dtype))
    img, txt, scale = model.apply({"params": params}, images, batch["text"])
    logits = jnp.minimum(jnp.exp(scale), 100.0) * img @ txt.T
    labels = jnp.arange(logits.shape[0])
    l_i = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    l_t = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
    return (l_i + l_t) / 2, {"temperature": 1.0 / jnp.exp(scale)}

  spec = config_lib.clip_spec(config.data, num_frames=1, sampling="segment", captions=True)
  data = ip.train_dataset([ip.Source(config.data.path, config.data.split, clip=spec)], config.batch_size,
                          config.seed, transform=tok.Tokenize(tokenizer))
  task = Task(init=init, loss=loss, train_data=data, clips_per_epoch=meta["splits"][config.data.split]["num_records"],
              flops_per_step=flops.clip_step(config.batch_size, cfg))
  return task, cfg


def train(config: ml_collections.ConfigDict, workdir: str, devices=None):
  task, cfg = make_task(config, workdir, devices)
  return run_and_save(config, workdir, task, {"kind": "clip", "clip_config": dataclasses.asdict(cfg)}, devices)
