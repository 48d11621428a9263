"""Merge-aware analytic FLOPs (umt_jax.flops) against XLA's count of the merged classifier forward, the official
vid-TLDR retrieval recipes' cuts, and the schedule-search tool (umt_jax.tools.merge_schedule)."""
import importlib.util
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data import synthetic
from umt_jax import flops, input_pipeline as ip, train_loop
from umt_jax.models import merging, vit
from umt_jax.models.heads import VideoClassifier
from umt_jax.tools import merge_schedule

WIDTH = 256  # wide enough that matmuls dominate, as in test_flops.py (XLA also counts elementwise work)
ENC = dict(embed_dim=WIDTH, depth=3, num_heads=4, mlp_dim=4 * WIDTH, patch_size=8)
FRAMES, SIZE, CLASSES = 4, 64, 10  # 4 × 8 × 8 = 256 tokens
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def xla_forward_flops(enc: dict, batch: int = 2) -> float:
  model = VideoClassifier(encoder=enc, num_classes=CLASSES)
  video = jax.ShapeDtypeStruct((batch, FRAMES, SIZE, SIZE, 3), jnp.float32)
  params = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), video))["params"]
  compiled = jax.jit(lambda p, v: model.apply({"params": p}, v)).lower(params, video).compile()
  return float(train_loop.xla_cost(compiled)["flops"]) / batch


@pytest.fixture(scope="module")
def unmerged():
  """(analytic, XLA) forward FLOPs per clip of the classifier without merging."""
  return flops.classifier_forward(FRAMES * (SIZE // 8) ** 2, ENC, CLASSES), xla_forward_flops(ENC)


@pytest.mark.parametrize("schedule,saliency", [((), True), ((64, 32), True), ((64, 32), False),
                                               ((0.25, 0.5, 0.1), True)])
def test_merged_classifier_flops_match_xla(schedule, saliency, unmerged):
  enc = dict(ENC, merge_schedule=schedule, merge_saliency=saliency) if schedule else ENC
  analytic = flops.classifier_forward(FRAMES * (SIZE // 8) ** 2, enc, CLASSES)
  xla = xla_forward_flops(enc)
  assert analytic == pytest.approx(xla, rel=0.05)
  # the cut itself: XLA's elementwise extra is about the same share with and without merging
  assert 1 - analytic / unmerged[0] == pytest.approx(1 - xla / unmerged[1], abs=0.01)


def test_merged_count_by_hand():
  # 10 tokens, width 8, MLP 32, r = (3, 0): block 0 attends over 10, matches 5×5, MLP on 7; block 1 all on 7.
  attn = lambda n: 2 * n * 8 * 24 + 2 * 2 * n * n * 8 + 2 * n * 8 * 8
  mlp = lambda n: 2 * 2 * n * 8 * 32
  assert flops.merged_blocks(10, 8, 32, (3, 0)) == (attn(10) + mlp(7) + attn(7) + mlp(7), 2 * 5 * 5 * 8)
  assert flops.merged_blocks(10, 8, 32, (0, 0))[0] == flops.blocks(10, 8, 2, 32)
  # merge-aware training FLOPs: the blocks 3 passes, the matching one
  enc = dict(embed_dim=8, depth=2, mlp_dim=32, patch_size=1, merge_schedule=(3,))
  assert flops.student(10, enc) == 3 * (attn(10) + mlp(7) + attn(7) + mlp(7)) + 2 * 5 * 5 * 8 + 2 * 2 * 10 * 3 * 8


def load_config(name: str, arg: str):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


# The reference's forward GMACs of the official schedules (12 frames at 224², matching not counted), and cuts.
OFFICIAL = {"B,msrvtt": (175.7, 0.42), "B,msvd": (178.8, 0.41), "L,msrvtt": (540.8, 0.45),
            "L,msvd": (524.9, 0.47), "B,anet": (226.3, 0.25)}


@pytest.mark.parametrize("arg", sorted(OFFICIAL))
def test_official_retrieval_schedule_cut(arg):
  c = load_config("vid_tldr", arg)
  assert c.mode == "eval" and c.data.num_frames == 12 and c.data.size == 224 and not c.stage2.keep_temporal
  enc = vit.vit_kwargs(arg[0], merge_schedule=tuple(c.model.merge.schedule))
  n = 12 * 14 * 14
  counts = merging.merge_counts(enc["merge_schedule"], n, enc["depth"])
  blk, match = flops.merged_blocks(n, enc["embed_dim"], enc["mlp_dim"], counts)
  embed = flops.linear(n, 768, enc["embed_dim"])
  gmacs, cut = OFFICIAL[arg]
  assert (blk + embed) / 2e9 == pytest.approx(gmacs, rel=2e-3)
  base = flops.blocks(n, enc["embed_dim"], enc["depth"], enc["mlp_dim"]) + embed
  assert 1 - (blk + match + embed) / base == pytest.approx(cut, abs=0.01)
  if arg.endswith("msrvtt"):
    assert 1 - (blk + match + embed) / base >= 0.40  # the target cut, with the matching counted
  head = flops.linear(1, enc["embed_dim"], 400)
  assert merge_schedule.flops_cut(enc, 12, 14, 400) == pytest.approx(1 - (blk + match + embed + head) / (
      base + head), rel=1e-9)


def test_vid_tldr_config_errors():
  with pytest.raises(ValueError, match="vid_tldr.py:B,nope"):
    load_config("vid_tldr", "B,nope")


def test_candidates_meet_the_cut():
  enc = dict(ENC, depth=4)
  cut = lambda sched: merge_schedule.flops_cut(dict(enc, merge_schedule=tuple(sched)), FRAMES, SIZE // 8, CLASSES)
  found = merge_schedule.candidates(enc, FRAMES, SIZE // 8, CLASSES, target=0.4)
  assert found and all(cut(s) >= 0.4 for s in found)
  r = found[0][0]  # constant from block 0: the smallest r that meets the cut
  assert found[0] == (r,) * 4 and cut((r - 1,) * 4) < 0.4
  assert merge_schedule.family("decreasing", 1, 40, 4, 256) == (0, 40, 20, 10)
  assert merge_schedule.family("constant", 0, 100, 3, 256) == (100, 78, 39)  # clipped to N//2 per block
  with pytest.raises(ValueError, match="schedule family 'linear'"):
    merge_schedule.family("linear", 0, 1, 4, 256)


@pytest.fixture(scope="module")
def tiny_workdir(tmp_path_factory):
  """A random-weight classifier params file and 12 synthetic validation clips."""
  root = tmp_path_factory.mktemp("merge")
  data = str(root / "data")
  synthetic.generate(data, {"test": 12}, size=32, frames=4)
  return data


def test_search_returns_a_schedule_meeting_the_cut(tiny_workdir, tmp_path):
  from umt_jax import params_io
  enc = dict(embed_dim=64, depth=3, num_heads=2, mlp_dim=128, patch_size=8, tubelet_size=1)
  model = VideoClassifier(encoder=enc, num_classes=10)
  params = model.init(jax.random.key(0), jnp.zeros((1, 4, 32, 32, 3)))["params"]
  path = str(tmp_path / "params.npz")
  params_io.save_params(path, nn.meta.unbox(params), {"kind": "classifier", "encoder": enc, "num_frames": 4,
                                                      "img_size": 32})
  out = merge_schedule.main(["--params", path, "--data", tiny_workdir, "--split", "test", "--cut", "0.3",
                             "--batch_size", "12", "--families", "constant,decreasing"])
  best = out["best"]
  assert best["cut"] >= 0.3 and best["top1"] == max(r["top1"] for r in out["rows"])
  assert merge_schedule.flops_cut(dict(enc, merge_schedule=tuple(best["schedule"])), 4, 4, 10) == \
      pytest.approx(best["cut"])
  assert np.isfinite(out["base"]["top1"])


@pytest.mark.parametrize("saliency", [False, True])
def test_merge_map_assignments(saliency):
  from benchmarks import merge_map
  enc = dict(embed_dim=64, depth=3, num_heads=2, mlp_dim=128, patch_size=8)
  model = VideoClassifier(encoder=enc, num_classes=10)
  video = jax.random.randint(jax.random.key(1), (2, 4, 32, 32, 3), 0, 256).astype(jnp.uint8)
  params = model.init(jax.random.key(0), jnp.zeros((1, 4, 32, 32, 3)))["params"]
  prov, size, logits = merge_map.assignments(params, enc, 10, video, (16, 8), saliency)
  assert prov.shape == (2, 64 - 24, 64) and (prov >= 0).all()
  merged = VideoClassifier(encoder=dict(enc, merge_schedule=(16, 8), merge_saliency=saliency), num_classes=10)
  np.testing.assert_allclose(logits, merged.apply({"params": params}, ip.normalize(video)), rtol=1e-4, atol=1e-7)
  members = (prov > 0).sum(-1)
  assert (members >= 1).all() and ((prov > 0).sum(1) <= 1).all()  # each patch in at most one final token
  if not saliency:  # ToMe drops nothing, and a token's mass is its patch count
    assert members.sum(-1).tolist() == [64, 64]
    np.testing.assert_allclose(size, members, rtol=1e-5)
  else:  # vid-TLDR drops zero-saliency sources: fewer patches survive, masses count only those kept
    assert (members.sum(-1) < 64).all()
    assert (size <= members + 1e-4).all()


def test_paired_difference():
  from benchmarks.merging import paired_difference
  d, e = paired_difference(np.array([1, 1, 0, 0, 1], bool), np.array([0, 1, 0, 1, 0], bool))
  assert d == pytest.approx(20.0) and e == pytest.approx(100 * np.std([1, 0, 0, -1, 1], ddof=1) / np.sqrt(5))


def test_cut_curve_searches_each_method(tiny_workdir):
  """The accuracy-vs-cut curve: each method at its own searched best, evaluated again on both splits."""
  from benchmarks import merging as bm
  enc = dict(embed_dim=64, depth=3, num_heads=2, mlp_dim=128, patch_size=8, tubelet_size=1)
  params = nn.meta.unbox(VideoClassifier(encoder=enc, num_classes=10).init(
      jax.random.key(0), jnp.zeros((1, 4, 32, 32, 3)))["params"])
  src = ip.Source(tiny_workdir, "test", clip=ip.ClipSpec(num_frames=4, size=32, crop="center", flip=False))
  (row,) = bm.cut_curve(params, enc, 10, src, src, [0.3], 12, "count", lambda _: None)
  for name, sal in (("vid-TLDR", True), ("ToMe", False)):
    best = merge_schedule.search(params, enc, 10, src, 0.3, 12, saliency=sal, log=lambda _: None)["best"]
    assert row[name]["schedule"] == best["schedule"] and row[name]["cut"] >= 0.3
    assert row[name]["search"] == pytest.approx(best["top1"]) == pytest.approx(row[name]["test"])
  assert row["diff_search"][0] == pytest.approx(row["vid-TLDR"]["search"] - row["ToMe"]["search"])
  assert bm.curve_table([row], "test").count("\n") == 2


def test_seed_comparison_pools_the_classifiers(tiny_workdir):
  """Per classifier the three models' top-1 on each split; the pooled row is over all classifiers' clips."""
  from benchmarks import merging as bm
  enc = dict(embed_dim=64, depth=3, num_heads=2, mlp_dim=128, patch_size=8, tubelet_size=1)
  model = VideoClassifier(encoder=enc, num_classes=10)
  clfs = {f"seed{i}": nn.meta.unbox(model.init(jax.random.key(i), jnp.zeros((1, 4, 32, 32, 3)))["params"])
          for i in range(2)}
  src = ip.Source(tiny_workdir, "test", clip=ip.ClipSpec(num_frames=4, size=32, crop="center", flip=False))
  rows = bm.seed_comparison(clfs, enc, 10, {"a": src}, (16, 8), 12, "count", lambda _: None)
  assert [r["classifier"] for r in rows] == ["seed0", "seed1", "all (pooled)"]
  for r, params in zip(rows, clfs.values()):
    for m, sched, sal in (("none", (), False), ("vid-TLDR", (16, 8), True), ("ToMe", (16, 8), False)):
      assert r[f"{m}/a"] == pytest.approx(merge_schedule.evaluate(params, enc, 10, src, 12, sched, sal)["top1"])
  pooled = rows[-1]
  for m in ("none", "vid-TLDR", "ToMe"):
    assert pooled[f"{m}/a"] == pytest.approx((rows[0][f"{m}/a"] + rows[1][f"{m}/a"]) / 2)
  assert pooled["vid-TLDR − ToMe/a"][0] == pytest.approx(pooled["vid-TLDR/a"] - pooled["ToMe/a"])
  assert bm.seed_table(rows, (16, 8)).count("\n") == 4
