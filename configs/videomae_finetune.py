"""VideoMAE V2's supervised stages through the fine-tuning trainer (official scripts/finetune/vit_{b,g}_*.sh):
arg `<variant>,<stage>`, variant S, B or g; stage one of
  k710  post-pretraining on the labelled Kinetics-710, from a VideoMAE V2 pretraining workdir (configs/videomae_v2.py)
  k400  target fine-tuning from the K710 model: its encoder (init_from.workdir, a new head) or, as the official
        does, its whole classifier with the K710 head rows mapped onto K400 (init_from.params + label_map)
  ssv2  fine-tuning straight from the pretraining (the paper has no K710 stage for SSv2)

  python -m umt_jax.main --config=configs/videomae_finetune.py:g,k710 --workdir=$W/vmae_g_k710 \\
      --config.data.path=/data/k710_rec --config.init_from.workdir=$W/videomae_v2_g
  python -m umt_jax.main --config=configs/videomae_finetune.py:g,k400 --workdir=$W/vmae_g_k400 \\
      --config.data.path=/data/k400_rec --config.init_from.params=$W/vmae_g_k710/params.npz \\
      --config.init_from.label_map=label_710to400.json
  python -m umt_jax.main --config=configs/videomae_finetune.py:g,ssv2 --workdir=$W/vmae_g_ssv2 \\
      --config.data.path=/data/ssv2_rec --config.init_from.workdir=$W/videomae_v2_g

Recipe: 16 frames of 224², tubelet 2; K710 / K400 dense sampling with stride 4 and 5 clips × 3 crops at test,
SSv2 16 segments, no flip, 2 × 3 views; random resized crop (0.08-1), Mixup 0.8 / CutMix 1.0 / label smoothing
0.1 (RandAugment and random erasing are not implemented here); repeated augmentation num_sample 2 (batch_size
counts loaded clips and scales the lr; the views do not); AdamW (0.9, 0.999), lr per 256 clips, warmup from
1e-8 and cosine to 1e-6 (both per 256). Batches are the official GPUs × per-GPU counts.
  g  K710: lr 1e-3, 35 epochs, warmup 5, drop path 0.3, layer decay 0.9, wd 0.1, clip_grad 5, batch 96 (32×3).
     K400: lr 1e-5, 3 epochs, warmup 1, drop path 0.25.  SSv2: lr 3e-4, 20 epochs, wd 0.05, drop path 0.25.
  B  K710: lr 7e-4, 90 epochs, warmup 5, drop path 0.1, layer decay 0.75, wd 0.05, batch 512 (32×16).
     SSv2: lr 2e-3, 25 epochs, layer decay 0.65, batch 256 (16×16). K400 after K710 has no official B script:
     g's 3-epoch schedule at B's drop path and layer decay. S has no official script: B's recipe.
Expected (docs/MODEL_ZOO.md, official weights, g): K710 83.8, K400 88.4 (after K710), SSv2 77.0 top-1; this
repo has not run these recipes. The K710 S / B models are the distillation students' init (configs/distill.py).
"""
import ml_collections

from umt_jax import config_lib

# (size group, stage) -> (lr per 256, epochs, warmup epochs, drop path, layer decay, weight decay, clip_grad, batch)
RECIPES = {
    ("g", "k710"): (1e-3, 35, 5, 0.3, 0.9, 0.1, 5.0, 96),
    ("g", "k400"): (1e-5, 3, 1, 0.25, 0.9, 0.1, 0.0, 96),
    ("g", "ssv2"): (3e-4, 20, 5, 0.25, 0.9, 0.05, 0.0, 96),
    ("B", "k710"): (7e-4, 90, 5, 0.1, 0.75, 0.05, 0.0, 512),
    ("B", "k400"): (1e-5, 3, 1, 0.1, 0.75, 0.1, 0.0, 96),
    ("B", "ssv2"): (2e-3, 25, 5, 0.1, 0.65, 0.05, 0.0, 256),
}


def get_config(arg: str = "g,k710") -> ml_collections.ConfigDict:
  variant, _, stage = arg.partition(",")
  if variant not in ("S", "B", "g") or stage not in ("k710", "k400", "ssv2"):
    raise ValueError(f"configs/videomae_finetune.py:{arg}: expected '<S|B|g>,<k710|k400|ssv2>'")
  lr, epochs, warmup, drop_path, layer_decay, wd, clip, batch = RECIPES["g" if variant == "g" else "B", stage]
  ssv2 = stage == "ssv2"
  c = config_lib.base("finetune")
  c.name = f"vmae_{variant.lower()}_{stage}"
  c.batch_size, c.num_epochs = batch, epochs
  c.data.update(split="train", eval_split="val", num_frames=16, sampling="segment" if ssv2 else "dense", stride=4,
                size=224, crop="rrc", rrc_min_scale=0.08, flip=not ssv2, test_clips=2 if ssv2 else 5, test_crops=3,
                num_sample=2, workers=8, eval_batch_size=32)
  c.model.update(variant=variant, tubelet_size=2, drop_path=drop_path, dtype="bfloat16", attn_impl="auto",
                 remat="dots_no_batch" if variant == "g" else "none")
  c.optim.update(lr=lr, min_lr=1e-6, warmup_lr=1e-8, warmup_epochs=warmup, b1=0.9, b2=0.999, weight_decay=wd,
                 layer_decay=layer_decay, grad_clip=clip)
  c.mesh.update(data=-1, fsdp=8 if variant == "g" else 1)
  c.checkpoint.update(every=1000, keep=2)
  c.eval_every = 5000
  return c
