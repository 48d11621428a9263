"""Fine-tuning for action recognition (official `exp/finetuning/*.sh`): arg `<variant>,<dataset>`, dataset one of
k710 (from UMT stage 1), k400 (from the K710 fine-tune), ssv2 (from UMT stage 1; no flip, 2×3 test views).

  python -m umt_jax.main --config=configs/finetune_kinetics.py:B,k710 --workdir=$W/ft_b16_k710 \\
      --config.data.path=/data/k710_rec --config.init_from.workdir=$W/umt_b16
  python -m umt_jax.main --config=configs/finetune_kinetics.py:B,k400 --workdir=$W/ft_b16_k400 \\
      --config.data.path=/data/k400_rec --config.init_from.workdir=$W/ft_b16_k710

Recipe: sparse 8-frame sampling, random resized crop (0.08-1) to 224², Mixup 0.8 / CutMix 1.0 / label smoothing
0.1, AdamW (0.9, 0.999) wd 0.05, layer decay 0.75 (B) / 0.85 (L), drop path 0.1 / 0.2, lr per 256 clips
(scaled by batch / 256) with warmup and cosine to 1e-6; softmax averaged over clips × crops at test time.
`init_from.workdir` gives the encoder (a new head); `init_from.params` a whole imported classifier, or with
`--config.init_from.label_map=label_710to400.json` its K710 head rows mapped onto K400 (the official slicing).
Expected (paper, official weights): K400 top-1 87.4 (B) / 90.6 (L); SSv2 70.8 (B) / 74.7 (L).
"""
import ml_collections

from umt_jax import config_lib

# dataset -> (lr per 256 for B, for L, epochs B, L, warmup epochs B, L, test clips, flip, sampling)
RECIPES = {
    "k710": (2e-4, 1e-4, 35, 20, 2, 2, 4, True, "sparse"),
    "k400": (2e-5, 1e-5, 5, 5, 1, 1, 4, True, "sparse"),
    "ssv2": (2e-4, 4e-4, 30, 14, 5, 4, 2, False, "segment"),
}


def get_config(arg: str = "B,k400") -> ml_collections.ConfigDict:
  variant, _, dataset = arg.partition(",")
  if variant not in ("B", "L") or dataset not in RECIPES:
    raise ValueError(f"configs/finetune_kinetics.py:{arg}: expected '<B|L>,<{'|'.join(RECIPES)}>'")
  lr_b, lr_l, ep_b, ep_l, wu_b, wu_l, clips, flip, sampling = RECIPES[dataset]
  big = variant == "L"
  c = config_lib.base("finetune")
  c.name = f"ft_{variant.lower()}16_{dataset}"
  c.batch_size = 512
  c.num_epochs = ep_l if big else ep_b
  c.data.update(split="train", eval_split="val", num_frames=8, sampling=sampling, size=224, crop="rrc",
                rrc_min_scale=0.08, flip=flip, test_clips=clips, test_crops=3, workers=8, eval_batch_size=64)
  c.model.update(variant=variant, drop_path=0.2 if big else 0.1, dtype="bfloat16", attn_impl="auto")
  c.optim.update(lr=lr_l if big else lr_b, min_lr=1e-6, warmup_lr=1e-6, warmup_epochs=wu_l if big else wu_b,
                 b1=0.9, b2=0.999, weight_decay=0.05, layer_decay=0.85 if big else 0.75)
  c.checkpoint.update(every=1000, keep=2)
  c.eval_every = 5000
  return c
