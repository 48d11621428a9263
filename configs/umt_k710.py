"""UMT stage 1 on Kinetics-710 (the paper's recipe): B/16 with a CLIP-B/16 teacher, L/16 with CLIP-L/14 at 196².

  python -m umt_jax.convert.clip_import --src ViT-B-16.pt --out teachers/clip_b16.npz --visual_only
  python -m umt_jax.main --config=configs/umt_k710.py:B --workdir=$W/umt_b16 \\
      --config.data.path=/data/k710_rec --config.teacher.path=teachers/clip_b16.npz

Recipe (official `exp/pretraining/*.sh`): 8 segment-sampled frames at 224², multi-scale crop + flip, semantic mask
0.8, align the last 6 (B) / 6 of 24 (L) teacher blocks; AdamW (0.9, 0.95), wd 0.05, lr 1.5e-4 per 256 clips
(1.2e-3 at batch 2048), min lr 1e-5 per 256, warmup 40 of 201 epochs, drop path 0.1 (B) / 0.2 (L), no layer
decay, no clipping. Expected: the official stage-1 checkpoints reach 87.4 (B) / 90.6 (L) top-1 on K400 after the
K710 fine-tuning in configs/finetune_k400.py (paper Table 7); this repo has not run the full recipe.
"""
import ml_collections

from umt_jax import config_lib


def get_config(arg: str = "B") -> ml_collections.ConfigDict:
  if arg not in ("B", "L"):
    raise ValueError(f"configs/umt_k710.py:{arg}: expected B or L")
  c = config_lib.base("umt")
  c.name = f"umt_{arg.lower()}16_k710"
  c.batch_size, c.num_epochs = 2048, 201
  c.data.update(split="train", num_frames=8, sampling="segment", size=224, crop="multiscale", flip=True, workers=8)
  c.model.update(variant=arg, drop_path=0.1 if arg == "B" else 0.2, dtype="bfloat16", attn_impl="auto",
                 remat="none" if arg == "B" else "dots_no_batch")
  c.teacher.update(align_layers=6, mask_ratio=0.8, dtype="bfloat16", arch="ViT-B/16" if arg == "B" else "ViT-L/14",
                   image_size=0 if arg == "B" else 196)
  c.optim.update(lr=1.5e-4, min_lr=1e-5, warmup_epochs=40, b1=0.9, b2=0.95, weight_decay=0.05)
  c.mesh.update(data=-1, fsdp=1 if arg == "B" else 8)
  c.checkpoint.update(every=1000, keep=3)
  c.log_every = 50
  return c
