"""vid-TLDR (training-free token merging) on fine-tuned UMT retrieval models: the official schedules as recipes.

  python -m umt_jax.main --config=configs/vid_tldr.py:B,msrvtt --workdir=$W/tldr_msrvtt \\
      --config.init_from.params=umt_b16_25m_ret_msrvtt.npz --config.text.vocab=bert-base-uncased/vocab.txt \\
      --config.data.eval_path=/data/msrvtt_1k_rec
  # the ToMe baseline with the same schedule (same FLOPs): --config.model.merge.saliency=False
  # the unmerged baseline (vid-TLDR's r = 0, the same one-mean pooling): --config.model.merge.schedule='()'

`<B|L>,<task>` is configs/retrieval.py's fine-tuning recipe for that size in `mode=eval` (12 test frames at
224², middle sampling, centre crop, VTC and top-128 ITM re-ranking) with `model.merge.schedule` set to the
vid-TLDR README's `vidTLDR_r` for the task (mlvlab/vid-TLDR, evaluated there with batch size 1; any batch
works here), pooled as vid-TLDR's configs pool (`keep_temporal=False`: one mean over all tokens). Tokens after
the last merge block and forward GMACs (fvcore convention, matching not counted; tests/test_merge_flops.py) out
of 2352 tokens and 303.1 (B) / 984.0 (L) GMACs:

  task        B schedule          tokens  GMACs          L schedule          tokens  GMACs
  msrvtt      600,200,100         1452    175.7 (-42%)   550,400             1402    540.8 (-45%)
  msvd        450,250,200         1452    178.8 (-41%)   600,200,100,100     1352    524.9 (-47%)
  anet        500                 1852    226.3 (-25%)   600,300             1452    560.5 (-43%)
  didemo      250,150,150,150     1652    209.4 (-31%)   800,100             1452    556.6 (-43%)
  lsmdc       400,150,150         1652    203.6 (-33%)   250,250,200,200     1452    579.2 (-41%)
  ssv2_label  200,200,200,100     1652    209.4 (-31%)   450,250,100         1552    607.5 (-38%)
  ssv2_tpl    400,300             1652    201.7 (-33%)   350,300,100,50      1552    611.5 (-38%)

Reported (the authors' Representation-Shift paper, R@1 mean of t2v/v2t, RTX A6000): B MSRVTT 50.0 -> 50.8
(1.36x), L MSRVTT 58.7 -> 58.5 (1.59x). ActivityNet and DiDeMo are paragraph retrieval officially (all of a
video's sentences joined into one caption): prepare their records that way. Nothing here has been run on these
datasets.
"""
import importlib.util
import os

import ml_collections

SCHEDULES = {  # vidTLDR_r per task, UMT-B and UMT-L (the vid-TLDR README's retrieval commands)
    "msrvtt": ((600, 200, 100), (550, 400)),
    "msvd": ((450, 250, 200), (600, 200, 100, 100)),
    "anet": ((500,), (600, 300)),
    "didemo": ((250, 150, 150, 150), (800, 100)),
    "lsmdc": ((400, 150, 150), (250, 250, 200, 200)),
    "ssv2_label": ((200, 200, 200, 100), (450, 250, 100)),
    "ssv2_tpl": ((400, 300), (350, 300, 100, 50)),
}


def _retrieval_config(arg: str) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location("retrieval_config",
                                                os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                             "retrieval.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def get_config(arg: str = "B,msrvtt") -> ml_collections.ConfigDict:
  variant, _, task = arg.partition(",")
  if variant not in ("B", "L") or task not in SCHEDULES:
    raise ValueError(f"configs/vid_tldr.py:{arg}: expected B or L, then one of {', '.join(SCHEDULES)} "
                     "(e.g. B,msrvtt)")
  c = _retrieval_config(f"{variant},msrvtt")
  c.name = f"vid_tldr_{variant.lower()}16_{task}"
  c.mode = "eval"
  c.model.merge.schedule = list(SCHEDULES[task][variant == "L"])
  c.model.merge.saliency = True
  c.stage2.keep_temporal = False  # the vid-TLDR configs' pooling, merged or not: one mean over all tokens
  return c
