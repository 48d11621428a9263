"""Video-text retrieval with a UMT stage-2 model: zero-shot evaluation, and retrieval fine-tuning.

  # zero-shot (the paper's Table 8 protocol): an imported official model or a stage-2 params.npz
  python -m umt_jax.convert.umt_import --src b16_25m.pth --out umt_b16_25m.npz
  python -m umt_jax.main --config=configs/retrieval.py:B,zeroshot --workdir=$W/zs_msrvtt --config.mode=eval \\
      --config.init_from.params=umt_b16_25m.npz --config.text.vocab=bert-base-uncased/vocab.txt \\
      --config.data.eval_path=/data/msrvtt_1k_rec --config.data.eval_split=test
  # fine-tuning on MSRVTT-9k (official exp/finetuning/ret_msrvtt): VTC + VTM, 12 frames, no teacher, no mask
  python -m umt_jax.main --config=configs/retrieval.py:B,msrvtt --workdir=$W/ret_msrvtt \\
      --config.init_from.params=umt_b16_25m.npz --config.text.vocab=bert-base-uncased/vocab.txt \\
      --config.data.path=/data/msrvtt_9k_rec --config.data.eval_path=/data/msrvtt_1k_rec

Zero-shot: 4 frames, middle sampling, center crop at 224; two rows (VTC similarity; top-128 re-ranked by ITM),
written to <workdir>/retrieval.json. Expected (MODEL_ZOO, MSRVTT-1k t2v R@1 re-ranked): B-5M 29.6, B-25M 35.2,
L-25M 40.7. Fine-tuning recipe: 12 frames ('rand' segments) at 224, rrc (0.5, 1) + flip, batch 32 per GPU
(here 256 = 32 × 8 GPUs), AdamW lr 1e-5 (B) / 2e-5 (L), β (0.9, 0.999), wd 0.02, 10 (B) / 7 (L) epochs with 1
warm-up, cosine to 0.01×, drop path 0.2 (B) / 0.3 (L); VTC + VTM only. Expected (paper, L-25M): MSRVTT t2v R@1
58.8. This repo has not run either on real data.
"""
import ml_collections

from umt_jax import config_lib


def get_config(arg: str = "B,zeroshot") -> ml_collections.ConfigDict:
  variant, _, task = arg.partition(",")
  if variant not in ("B", "L") or task not in ("zeroshot", "msrvtt"):
    raise ValueError(f"configs/retrieval.py:{arg}: expected B or L, then zeroshot or msrvtt (e.g. B,zeroshot)")
  c = config_lib.base("umt_stage2")
  c.name = f"ret_{variant.lower()}16_{task}"
  c.mode = "eval" if task == "zeroshot" else "train"
  frames = 4 if task == "zeroshot" else 12
  c.data.update(split="train", eval_split="test", num_frames=frames, sampling="segment", size=224, crop="rrc",
                rrc_min_scale=0.5, flip=True, workers=8, eval_batch_size=64)
  c.model.update(variant=variant, drop_path=0.2 if variant == "B" else 0.3, dtype="bfloat16", attn_impl="auto")
  c.teacher.path = ""  # fine-tuning has no teacher and no mask (official clip_teacher='none', mask ratio 0)
  c.text.update(preset="bert-base" if variant == "B" else "bert-large", max_length=32, dropout=0.1)
  c.stage2.update(embed_dim=512 if variant == "B" else 768, rerank_k=128)
  c.loss_weights.update(uta=0.0, vtc=1.0, vtm=1.0, mlm=0.0)
  c.batch_size, c.num_epochs = 256, 10 if variant == "B" else 7
  c.optim.update(lr=1e-5 if variant == "B" else 2e-5, min_lr=1e-7 if variant == "B" else 2e-7, warmup_epochs=1,
                 warmup_lr=1e-7 if variant == "B" else 2e-7, scale_lr_by_batch=False, b1=0.9, b2=0.999,
                 weight_decay=0.02)
  c.checkpoint.update(every=500, keep=2)
  return c
