"""UMT stage 2 (video-text pretraining, the paper's recipe): `B,5m`, `B,17m`, `B,25m`, `L,5m`, `L,17m`, `L,25m`.

  python -m umt_jax.convert.bert_import --src bert-base-uncased/ --out text/bert_base.npz --fusion_layer 9 \\
      --encoder_width 768
  python -m umt_jax.main --config=configs/umt_stage2.py:B,5m --workdir=$W/umt_b16_5m \\
      --config.init_from.workdir=$W/umt_b16 --config.teacher.path=teachers/clip_b16.npz \\
      --config.text.init=text/bert_base.npz --config.text.vocab=bert-base-uncased/vocab.txt \\
      --config.data.path=/data/webvid2m_rec --config.data.image_path=/data/cc3m_rec \\
      --config.data.eval_path=/data/msrvtt_1k_rec --config.data.eval_split=test

Recipe (official `multi_modality/exp/pretraining/{b16,l16}_{5m,17m,25m}.py`): 4 frames ('rand' segments) at 224²,
random resized crop (0.5, 1) + flip; batch 128 per GPU per media type on 16 (B) / 32 (L) GPUs, i.e. 2048 / 4096
clips per step; AdamW lr 1e-4 (not scaled by batch), β (0.9, 0.999), wd 0.02, no clipping, 10 epochs with 1
warm-up epoch, cosine to 0.01×; drop path 0.1 (B) / 0.2 (L); semantic masks 0.8 (video) / 0.5 (image), UTA on the
last 6 blocks with CLIP-B/16 at 224 (B) or CLIP-L/14 at 196 (L); BERT base (fusion from layer 9) / large (19);
embedding 512 (B) / 768 (L); VTC + VTM + MLM (p 0.5) + UTA, all weight 1. Corpora: 5m = WebVid-2M + CC3M;
17m = 5m + COCO + VG + SBU + CC12M; 25m = WebVid-10M + CC3M + COCO + VG + SBU + CC12M: pass the converted folders
as comma-separated `data.path` (video-text) and `data.image_path` (image-text).
Expected (paper / MODEL_ZOO, zero-shot MSRVTT-1k text-to-video R@1, ITM re-ranked): B 29.6 / 35.5 / 35.2, L 33.3 /
42.6 / 40.7 for 5m / 17m / 25m. This repo has not run the full recipe.
"""
import ml_collections

from umt_jax import config_lib

GPUS = {"B": 16, "L": 32}


def get_config(arg: str = "B,5m") -> ml_collections.ConfigDict:
  variant, _, corpus = arg.partition(",")
  if variant not in GPUS or corpus not in ("5m", "17m", "25m"):
    raise ValueError(f"configs/umt_stage2.py:{arg}: expected B or L, then 5m, 17m or 25m (e.g. B,5m)")
  c = config_lib.base("umt_stage2")
  c.name = f"umt_{variant.lower()}16_{corpus}"
  c.batch_size, c.num_epochs = 128 * GPUS[variant], 10
  c.data.update(split="train", num_frames=4, sampling="segment", size=224, crop="rrc", rrc_min_scale=0.5, flip=True,
                workers=8, eval_split="test", test_clips=1, test_crops=1)
  c.model.update(variant=variant, drop_path=0.1 if variant == "B" else 0.2, dtype="bfloat16", attn_impl="auto")
  c.teacher.update(align_layers=6, mask_ratio=0.8, image_mask_ratio=0.5, dtype="bfloat16",
                   arch="ViT-B/16" if variant == "B" else "ViT-L/14", image_size=0 if variant == "B" else 196)
  c.text.update(preset="bert-base" if variant == "B" else "bert-large", max_length=32, dropout=0.1)
  c.stage2.update(embed_dim=512 if variant == "B" else 768, temp=0.07, mlm_prob=0.5, rerank_k=128)
  c.optim.update(lr=1e-4, min_lr=1e-6, warmup_lr=1e-6, warmup_epochs=1, scale_lr_by_batch=False, b1=0.9, b2=0.999,
                 weight_decay=0.02)
  c.checkpoint.update(every=1000, keep=3)
  c.log_every = 50
  return c
