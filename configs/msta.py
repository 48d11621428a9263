"""MSTA (CVPR 2025): adapters on a frozen ViCLIP-B/16, arg `<protocol>,<dataset>`: protocol few_shot |
base_to_novel | zero_shot | supervised, dataset hmdb | ucf_101 | k400 | k600 | ssv2 (the ETL4Video description
files' names).

  python -m umt_jax.main --config=configs/msta.py:few_shot,hmdb --workdir=$W/msta_hmdb_k2 \\
      --config.data.path=/data/hmdb51_rec --config.msta.clip=viclip_b16.npz \\
      --config.msta.tokenizer=clip-vit-base-patch16/tokenizer.json \\
      --config.msta.descriptions=ETL4Video/description --config.msta.shots=2
  python -m umt_jax.main --config=configs/msta.py:base_to_novel,k400 --workdir=$W/msta_k400_b2n_s1 \\
      --config.data.path=/data/k400_rec --config.msta.clip=... --config.msta.base_classes="<200 names>" \\
      --config.msta.split_seed=1
  python -m umt_jax.main --config=configs/msta.py:zero_shot,k400 --workdir=$W/msta_zs \\
      --config.data.path=/data/k400_rec --config.msta.eval_path=/data/ucf101_rec --config.msta.eval_split=val ...

Recipe (the MSTA training logs, reference section C5): AdamW (0.9, 0.999), wd 0.001, lr 1e-3 at batch 32 (not
scaled), cosine with 5 warm-up epochs, 50 epochs for few-shot and base-to-novel (16 shots per base class), adapters
in blocks 8-12 with d = 128 and λ = 0.005, depthwise temporal kernel 3, α = 1 with N = 2 descriptions (8 for
UCF / SSv2 few-shot), 8 frames at 224², test views 10×3 (HMDB / UCF), 2×3 (SSv2), 4×3 (Kinetics). Zero-shot and
fully supervised are not in the logs: batch 256 with the lr scaled linearly (8e-3, the value a summary reports),
10 and 30 epochs as ViFi-CLIP trains those protocols. `--config.msta.backbone=clip_frames` with a full-CLIP
file runs the frame-wise CLIP instead. Reported (paper, ViCLIP-B): base-to-novel HM K400 72.0, HMDB 66.3,
UCF 82.9, SSv2 18.9; zero-shot from K400 HMDB 55.8, UCF 78.7, K600 74.5; supervised K400 82.2. Nothing here has
run these recipes.
"""
import ml_collections

from umt_jax import config_lib

# dataset -> (test clips, test crops, flip, descriptions for few-shot)
DATASETS = {"hmdb": (10, 3, True, 2), "ucf_101": (10, 3, True, 8), "k400": (4, 3, True, 2),
            "k600": (4, 3, True, 2), "ssv2": (2, 3, False, 8)}
PROTOCOLS = {"few_shot": (32, 1e-3, 50), "base_to_novel": (32, 1e-3, 50), "zero_shot": (256, 8e-3, 10),
             "supervised": (256, 8e-3, 30)}  # batch, lr, epochs


def get_config(arg: str = "few_shot,hmdb") -> ml_collections.ConfigDict:
  protocol, _, dataset = arg.partition(",")
  if protocol not in PROTOCOLS or dataset not in DATASETS:
    raise ValueError(f"configs/msta.py:{arg}: expected '<{'|'.join(PROTOCOLS)}>,<{'|'.join(DATASETS)}>'")
  clips, crops, flip, n_desc = DATASETS[dataset]
  batch, lr, epochs = PROTOCOLS[protocol]
  c = config_lib.base("msta")
  c.name = f"msta_{protocol}_{dataset}"
  c.batch_size, c.num_epochs = batch, epochs
  c.data.update(split="train", eval_split="val", num_frames=8, sampling="segment", size=224, crop="multiscale",
                flip=flip, test_clips=clips, test_crops=crops, workers=8, eval_batch_size=32)
  c.optim.update(lr=lr, min_lr=0.0, warmup_lr=0.0, warmup_epochs=5, scale_lr_by_batch=False, b1=0.9, b2=0.999,
                 weight_decay=0.001)
  c.msta.update(backbone="viclip", protocol=protocol, description_name=dataset, start=8, end=12, dim=128, scale=0.005,
                num_descriptions=n_desc if protocol == "few_shot" else 2,
                shots={"few_shot": 2, "base_to_novel": 16}.get(protocol, 0))
  c.checkpoint.update(every=500, keep=2)
  return c
