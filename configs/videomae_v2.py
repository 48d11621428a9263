"""VideoMAE V2 pretraining with dual masking (official scripts/pretrain/vit_{b,l,h,g}_hybrid_pt.sh).

  python -m umt_jax.main --config=configs/videomae_v2.py:B --workdir=$W/videomae_v2_b \\
      --config.data.path=/data/unlabeled_hybrid_rec [--config.data.stride=2 for SSv2]
  python -m umt_jax.convert.torch_export --params $W/videomae_v2_b/params.npz --out vit_b_pt.pth

Recipe: 16 frames densely sampled with stride 4 (SSv2: 2), 224², multi-scale crop (scales 1, .875, .75, .66), no
flip; tubelet 2; tube mask 0.9 for the encoder, running cell 0.5 for the decoder (decoder_mask_ratio=0 gives
VideoMAE v1), decoder depth 4, per-patch normalised pixel targets; repeated augmentation num_sample 4 (each
loaded clip gives 4 crops with their own masks; batch_size counts loaded clips, so "300 epochs" = 1200e);
AdamW (0.9, 0.95), wd 0.05, lr 1e-3 per 256 clips (g: 6e-4), warmup lr 1e-6 and min lr 1e-5 per 256, cosine,
warmup 20 (B) / 30 epochs, 200 (B, "800e") / 300 epochs, no drop path, clip_grad 0.02 for g only, activation
checkpointing for H and g. Batches are the official GPU × per-GPU counts (B 32×32, L 48×32, H/g 64×32). S has no
official pretraining script (the released S is distilled); it uses B's schedule.
Expected: fine-tuned on K400 after this pretraining, the paper's ViT-g reaches 87.2 top-1 (88.4 with the K710
stage, docs/MODEL_ZOO.md); this repo has not run the full recipe.
"""
import ml_collections

from umt_jax import config_lib

# variant -> (decoder width, heads, global batch, epochs, warmup epochs, base lr)
RECIPES = {"S": (192, 3, 1024, 200, 20, 1e-3), "B": (384, 6, 1024, 200, 20, 1e-3), "L": (512, 8, 1536, 300, 30, 1e-3),
           "H": (512, 8, 2048, 300, 30, 1e-3), "g": (512, 8, 2048, 300, 30, 6e-4)}


def get_config(arg: str = "B") -> ml_collections.ConfigDict:
  if arg not in RECIPES:
    raise ValueError(f"configs/videomae_v2.py:{arg}: expected one of {'|'.join(RECIPES)}")
  dec_dim, dec_heads, batch, epochs, warmup, lr = RECIPES[arg]
  c = config_lib.base("videomae")
  c.name = f"videomae_v2_{arg}"
  c.batch_size, c.num_epochs = batch, epochs
  c.data.update(split="train", num_frames=16, sampling="dense", stride=4, size=224, crop="multiscale", flip=False,
                num_sample=4, workers=8)
  c.model.update(variant=arg, tubelet_size=2, drop_path=0.0, dtype="bfloat16", attn_impl="auto",
                 remat="dots_no_batch" if arg in ("H", "g") else "none")
  c.videomae.update(mask_ratio=0.9, decoder_mask_ratio=0.5, decoder_dim=dec_dim, decoder_depth=4,
                    decoder_heads=dec_heads, normalize_target=True)
  c.optim.update(lr=lr, min_lr=1e-5, warmup_lr=1e-6, warmup_epochs=warmup, b1=0.9, b2=0.95, weight_decay=0.05,
                 grad_clip=0.02 if arg == "g" else 0.0)
  c.mesh.update(data=-1, fsdp=1 if arg in ("S", "B") else 8)
  c.checkpoint.update(every=1000, keep=3)
  return c
