"""Import Hugging Face BERT weights as the UMT stage-2 text encoder (`BertForMaskedLM` with fusion layers).

Sources: HF folders (config.json + model.safetensors / pytorch_model.bin) or a single .safetensors / .bin file
(sizes then come from the tensors, heads = hidden / 64 unless given), holding BertForMaskedLM, BertForPreTraining
or BertModel keys, with or without the `bert.` prefix, legacy `LayerNorm.gamma/beta` names included. The pooler,
the NSP head and `position_ids` are dropped; the decoder is tied to the word embeddings. Layers >= fusion_layer get
freshly initialised cross-attention (bert-base has none; the official code loads with strict=False), and so does
the MLM head when the source is a bare BertModel.

CLI (writes a params file the stage-2 trainer loads as the text encoder):
  python -m umt_jax.convert.bert_import --src bert-base-uncased/ --out bert.npz --fusion_layer 9 --encoder_width 768
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
from typing import Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from umt_jax import params_io
from umt_jax.convert import layout
from umt_jax.convert.clip_import import read_checkpoint
from umt_jax.models.bert import BertConfig, BertForMaskedLM

_DROPPED = (r"^bert\.pooler\.", r"^cls\.seq_relationship\.", r"position_ids$", r"^cls\.predictions\.decoder\.")
_DECODER = "cls.predictions.decoder.weight"
_WORDS = "bert.embeddings.word_embeddings.weight"


def _normalise(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """BertForMaskedLM key names: `bert.` prefix, LayerNorm.gamma/beta -> weight/bias."""
  out = {}
  for k, v in sd.items():
    if k.startswith(("embeddings.", "encoder.", "pooler.")):  # BertModel.save_pretrained
      k = "bert." + k
    k = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", k))
    out[k] = v
  return out


def _count_layers(sd: Mapping[str, np.ndarray]) -> int:
  idx = layout.layer_indices(sd, r"bert\.encoder\.layer\.(\d+)\.")
  return idx[-1] + 1 if idx else 0


def _config(sd: Mapping[str, np.ndarray], src: str, hf: dict | None, num_heads: int | None) -> BertConfig:
  """BertConfig from config.json where there is one, else from the tensor shapes."""
  if _WORDS not in sd:
    raise ValueError(f"{src!r} is not a BERT checkpoint: no {_WORDS!r} (nor 'embeddings.word_embeddings.weight')")
  vocab, hidden = sd[_WORDS].shape
  layers_ = _count_layers(sd)
  cross = sorted({int(m.group(1)) for k in sd if (m := re.match(r"bert\.encoder\.layer\.(\d+)\.crossattention\.", k))})
  fusion = cross[0] if cross else layers_
  key = f"bert.encoder.layer.{fusion}.crossattention.self.key.weight"
  width = sd[key].shape[1] if key in sd else hidden  # a re-exported UMT text encoder has cross-attention
  if hf is not None:
    if hf.get("hidden_act", "gelu") != "gelu":
      raise ValueError(f"{src}: hidden_act {hf['hidden_act']!r} unsupported; the UMT BERT uses exact 'gelu'")
    if not hf.get("tie_word_embeddings", True):
      raise ValueError(f"{src}: tie_word_embeddings is false; only a tied MLM decoder is supported")
    if hf.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError(f"{src}: position_embedding_type {hf['position_embedding_type']!r} unsupported")
    return BertConfig(
        vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
        num_heads=num_heads or hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
        max_position_embeddings=hf["max_position_embeddings"], type_vocab_size=hf.get("type_vocab_size", 2),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12), hidden_dropout=hf.get("hidden_dropout_prob", 0.1),
        attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
        fusion_layer=fusion, encoder_width=width, pad_token_id=hf.get("pad_token_id", 0) or 0)
  heads = num_heads or hidden // 64
  if heads < 1 or hidden % heads:
    raise ValueError(f"{src}: cannot infer the head count of width {hidden} (heads = width / 64); pass num_heads")
  inter = "bert.encoder.layer.0.intermediate.dense.weight"
  return BertConfig(
      vocab_size=vocab, hidden_size=hidden, num_layers=layers_, num_heads=heads,
      intermediate_size=sd[inter].shape[0] if inter in sd else 4 * hidden,
      max_position_embeddings=sd["bert.embeddings.position_embeddings.weight"].shape[0]
      if "bert.embeddings.position_embeddings.weight" in sd else 512,
      type_vocab_size=sd["bert.embeddings.token_type_embeddings.weight"].shape[0]
      if "bert.embeddings.token_type_embeddings.weight" in sd else 2,
      fusion_layer=fusion, encoder_width=width)


def read_hf_bert(src: str, num_heads: int | None = None) -> tuple[BertConfig, dict[str, np.ndarray]]:
  """HF folder or .safetensors / .bin file -> (config of the checkpoint, {BertForMaskedLM key: fp32 array}).

  The config's fusion_layer / encoder_width describe the checkpoint (num_layers / hidden for plain BERT).
  Pooler, NSP head, position_ids and the tied decoder are dropped (a decoder that differs from the word
  embeddings is an error).
  """
  sd = _normalise(read_checkpoint(src))
  cfg_file = os.path.join(src if os.path.isdir(src) else os.path.dirname(src), "config.json")
  hf = None
  if os.path.isdir(src) and os.path.isfile(cfg_file):  # a lone file's neighbours may describe another model
    with open(cfg_file) as f:
      hf = json.load(f)
  cfg = _config(sd, src, hf, num_heads)
  if _DECODER in sd and not np.array_equal(sd[_DECODER], sd[_WORDS]):
    raise ValueError(f"{src}: {_DECODER} differs from the word embeddings; only a tied MLM decoder is supported")
  return cfg, {k: v for k, v in sd.items() if not any(re.search(p, k) for p in _DROPPED)}


def init_params(cfg: BertConfig, seed: int = 0) -> dict:
  """Fresh BertForMaskedLM params with the module's own (HF) init: N(0, 0.02) kernels and embeddings, zero
  biases, unit LayerNorm scales. Drawn in numpy over `jax.eval_shape` shapes, since tracing and compiling the
  random init costs seconds even for tiny models."""
  ids = jnp.zeros((1, 2), jnp.int32)
  vision = jnp.zeros((1, 1, cfg.encoder_width), jnp.float32)
  shapes = jax.eval_shape(lambda: BertForMaskedLM(cfg).init(jax.random.key(0), ids, ids, vision))["params"]
  flat = flax.traverse_util.flatten_dict(flax.linen.meta.unbox(shapes))
  rng = np.random.default_rng(seed)
  normal = lambda s: 0.02 * rng.standard_normal(s, dtype=np.float32)
  fill = {"kernel": normal, "embedding": normal, "bias": np.zeros, "scale": np.ones}
  out = {}
  for path in sorted(flat):
    if path[-1] not in fill:
      raise ValueError(f"no HF init rule for param {'/'.join(path)}")
    out[path] = np.asarray(fill[path[-1]](flat[path].shape), np.float32)
  return flax.traverse_util.unflatten_dict(out)


def import_bert(src: str, *, fusion_layer: int, encoder_width: int, seed: int = 0,
                num_heads: int | None = None) -> tuple[BertConfig, dict]:
  """-> (config, BertForMaskedLM params). Fusion layers' cross-attention missing from `src` is initialised
  fresh (seeded), and so is the whole MLM head when `src` has none; anything else missing, unknown or of the
  wrong shape is one ValueError naming `src` and every such key."""
  ckpt_cfg, sd = read_hf_bert(src, num_heads)
  cfg = dataclasses.replace(ckpt_cfg, fusion_layer=fusion_layer, encoder_width=encoder_width)
  if not 0 <= fusion_layer <= cfg.num_layers:
    raise ValueError(f"fusion_layer {fusion_layer} outside [0, {cfg.num_layers}] for the {cfg.num_layers}-layer {src}")
  init = init_params(cfg, seed)
  fresh_sd = layout.to_state_dict(init)
  fresh = []
  for i in range(fusion_layer, cfg.num_layers):  # only when the layer's cross-attention is absent altogether
    prefix = f"bert.encoder.layer.{i}.crossattention."
    if not any(k.startswith(prefix) for k in sd):
      fresh += [k for k in fresh_sd if k.startswith(prefix)]
  if not any(k.startswith("cls.predictions.") for k in sd):  # a bare BertModel
    fresh += [k for k in fresh_sd if k.startswith("cls.")]
  full = {**sd, **{k: fresh_sd[k] for k in fresh}}
  params = layout.from_state_dict(full, init, source=src)  # `init` gives the tree and the shapes
  if fresh:
    groups = sorted({re.sub(r"(crossattention|predictions)\..*$", r"\1", k) for k in fresh})
    print(f"bert_import: initialised fresh (not in {src}): {', '.join(groups)}")
  return cfg, params


def load_bert(path: str) -> tuple[BertConfig, dict]:
  """A params file written by this CLI -> (config, BertForMaskedLM params)."""
  params, meta = params_io.load_params(path)
  if meta.get("kind") != "bert":
    raise ValueError(f"{path!r} holds {meta.get('kind')!r} params, expected a BERT written by bert_import")
  return BertConfig(**meta["bert_config"]), params


def main(argv: list[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--src", required=True, help="HF folder or .safetensors / .bin file")
  ap.add_argument("--out", required=True, help="output params file (.npz)")
  ap.add_argument("--fusion_layer", type=int, required=True, help="first layer with cross-attention (B: 9, L: 19)")
  ap.add_argument("--encoder_width", type=int, required=True, help="vision token width (B: 768, L: 1024)")
  ap.add_argument("--num_heads", type=int, default=None, help="head count for files without config.json")
  ap.add_argument("--seed", type=int, default=0, help="seed of the freshly initialised cross-attention")
  args = ap.parse_args(argv)
  cfg, params = import_bert(args.src, fusion_layer=args.fusion_layer, encoder_width=args.encoder_width,
                            seed=args.seed, num_heads=args.num_heads)
  meta = {"kind": "bert", "bert_config": dataclasses.asdict(cfg), "source": os.path.abspath(args.src)}
  params_io.save_params(args.out, params, meta)  # atomic (tmp file + rename)
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  print(f"wrote {args.out}: bert {n:,} params, {cfg.num_layers} layers ({cfg.num_layers - cfg.fusion_layer} fusion), "
        f"width {cfg.hidden_size}, encoder_width {cfg.encoder_width}")


if __name__ == "__main__":
  main()
