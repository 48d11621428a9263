"""VideoMAE V2 distillation (the paper's last progressive stage; its code was never released): a frozen g/14
teacher, pretrained and post-pretrained on K710 (configs/videomae_finetune.py:g,k710), teaches an S or B student
initialised from its own K710 post-pretrained classifier, by logit distillation on K710. arg: S or B.

  python -m umt_jax.main --config=configs/distill.py:B --workdir=$W/vmae_b_k710_dl \\
      --config.data.path=/data/k710_rec --config.teacher.workdir=$W/vmae_g_k710 \\
      --config.init_from.params=$W/vmae_b_k710/params.npz
  (an imported teacher: --config.teacher.path=vit_g_k710_ft.npz instead of teacher.workdir)
  python -m umt_jax.main --config=configs/videomae_finetune.py:B,k400 --workdir=$W/vmae_b_dl_k400_eval \\
      --config.mode=eval --config.data.path=/data/k400_rec --config.init_from.params=$W/vmae_b_k710_dl/params.npz \\
      --config.init_from.label_map=label_710to400.json      (the released students are evaluated this way)

Loss: T²·KL(softmax(teacher/T) ‖ softmax(student/T)) with T = 1 and no label term (distill.label_weight adds
the soft-target CE); teacher and student see the same augmented clip. The distillation hyperparameters are in
the paper's supplement, which was not available here: this recipe is the B K710 post-pretraining schedule of
configs/videomae_finetune.py (16 frames, tubelet 2, dense stride 4, num_sample 2, Mixup / CutMix, AdamW, layer
decay 0.75, batch 512) with the loss swapped and 50 epochs; treat it as a starting point. The teacher runs in
bf16, sharded over fsdp = 8 (g/14: 1.0B params, 2048 tokens per clip).
Expected (docs/MODEL_ZOO.md, the released students, 16×5×3 views): K710 top-1 77.6 (S) / 81.5 (B); K400 with the
710 -> 400 head mapping 83.7 / 86.6. This repo has not run the recipe.
"""
import ml_collections

from umt_jax import config_lib


def get_config(arg: str = "B") -> ml_collections.ConfigDict:
  if arg not in ("S", "B"):
    raise ValueError(f"configs/distill.py:{arg}: expected S or B (the student)")
  c = config_lib.base("distill")
  c.name = f"vmae_{arg.lower()}_k710_dl"
  c.batch_size, c.num_epochs = 512, 50
  c.data.update(split="train", eval_split="val", num_frames=16, sampling="dense", stride=4, size=224, crop="rrc",
                rrc_min_scale=0.08, flip=True, test_clips=5, test_crops=3, num_sample=2, workers=8,
                eval_batch_size=32)
  c.model.update(variant=arg, tubelet_size=2, drop_path=0.1, dtype="bfloat16", attn_impl="auto")
  c.teacher.update(dtype="bfloat16", variant="g")  # variant: for the mesh planner, which compiles without the file
  c.distill.update(temperature=1.0, label_weight=0.0)
  c.optim.update(lr=7e-4, min_lr=1e-6, warmup_lr=1e-8, warmup_epochs=5, b1=0.9, b2=0.999, weight_decay=0.05,
                 layer_decay=0.75)
  c.mesh.update(data=-1, fsdp=8)
  c.checkpoint.update(every=1000, keep=2)
  c.eval_every = 5000
  return c
