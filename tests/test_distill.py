"""Logit distillation end to end on tiny models: the loss against its formula, teacher and student on the same
mixed clip, a bigger teacher from a fine-tune workdir (frozen, not checkpointed), the student learning and
evaluating, the teacher errors users hit, repeated views in fine-tuning, and the VideoMAE V2 recipes."""
import importlib.util
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from data import synthetic
from tests.helpers import count
from umt_jax import config_lib, input_pipeline as ip, losses, params_io, train_loop
from umt_jax.trainers import distill, finetune

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIG = dict(embed_dim=48, depth=3, num_heads=3, mlp_dim=96, patch_size=4, tubelet_size=2)  # the teacher


def tiny(trainer: str, data: str, **kw):
  """A 16², 4-frame classifier of width 32, depth 2, patch 8; `kw`: dotted overrides."""
  c = config_lib.base(trainer)
  c.data.update(path=data, split="train", eval_split="", size=16, num_frames=4, sampling="segment", crop="rrc",
                rrc_min_scale=0.5, flip=False, test_clips=1, test_crops=1, eval_batch_size=8)
  c.model.update(variant="Ti", embed_dim=32, depth=2, num_heads=2, mlp_dim=64, patch_size=8, drop_path=0.0)
  c.update(batch_size=8, total_steps=2, log_every=1, min_fsdp_size=0)
  c.optim.update(lr=1e-3, warmup_epochs=0.0, scale_lr_by_batch=False)
  c.checkpoint.update(every=100, **{"async": False})
  return config_lib.override(c, kw)


def save_classifier(path: str, c, num_classes: int, seed: int = 0, head_std: float = 0.0, **meta_encoder) -> str:
  """A random classifier of `c`'s student shape as a params file (kind 'classifier'); head_std > 0 replaces the
  near-zero initial head with N(0, head_std²) weights (confident logits)."""
  model = finetune.build(c, num_classes)
  s = c.data.size
  params = flax.linen.meta.unbox(model.init(jax.random.key(seed), jnp.zeros((1, c.data.num_frames, s, s, 3)))["params"])
  params = jax.tree.map(np.asarray, params)
  if head_std:
    params["head"]["kernel"] = np.random.RandomState(seed).normal(0, head_std, params["head"]["kernel"].shape)
  meta = config_lib.student_export_meta(c, "classifier")
  meta["encoder"].update(meta_encoder)
  params_io.save_params(path, params, meta)
  return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("distill_data"))
  synthetic.generate(out, {"train": 24, "test": 8}, size=20, frames=4, clips_per_shard=64)
  return out


@pytest.fixture(scope="module")
def num_classes(data):
  return len(ip.read_metadata(data)["label_names"])


@pytest.fixture(scope="module")
def teacher_workdir(data, num_classes, tmp_path_factory):
  """A finished fine-tune of a bigger classifier (patch 4, tubelet 2, width 48, depth 3); its params.npz gets a
  confident head, so the student has something to learn."""
  w = str(tmp_path_factory.mktemp("teacher_ft"))
  c = tiny("finetune", data, total_steps=1, **{f"model.{k}": v for k, v in BIG.items()})
  finetune.train(c, w)
  path = os.path.join(w, "params.npz")
  params, meta = params_io.load_params(path)
  params["head"]["kernel"] = np.random.RandomState(0).normal(0, 0.5, params["head"]["kernel"].shape)
  params_io.save_params(path, params, meta)
  return w


def test_distill_loss_matches_the_formula():
  rng = np.random.RandomState(0)
  s, t = rng.randn(5, 7) * 3, rng.randn(5, 7) * 3
  for temp in (1.0, 4.0):
    p = np.exp(t / temp) / np.exp(t / temp).sum(1, keepdims=True)
    q = np.exp(s / temp) / np.exp(s / temp).sum(1, keepdims=True)
    want = temp ** 2 * np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1))
    np.testing.assert_allclose(losses.distill_loss(jnp.asarray(s), jnp.asarray(t), temp), want, rtol=1e-5)
    grad = jax.grad(lambda x: losses.distill_loss(x, jnp.asarray(t), temp))(jnp.asarray(s, jnp.float32))
    np.testing.assert_allclose(grad, temp * (q - p) / 5, rtol=1e-4, atol=1e-7)  # d/ds T²·KL = T·(q - p) / B
  assert float(losses.distill_loss(jnp.asarray(t), jnp.asarray(t), 2.0)) == pytest.approx(0.0, abs=1e-6)
  with pytest.raises(ValueError, match=r"student logits \(5, 7\) and teacher logits \(5, 6\)"):
    losses.distill_loss(jnp.asarray(s), jnp.asarray(t[:, :6]))


def test_teacher_and_student_see_the_same_mixed_clip(data, num_classes, tmp_path):
  """The student initialised from the teacher's own file: under Mixup/CutMix (applied every step) the KL is 0
  only if both models get the very same mixed clip."""
  c = tiny("distill", data)
  path = save_classifier(str(tmp_path / "same.npz"), c, num_classes, head_std=0.5)
  c = tiny("distill", data, **{"teacher.path": path, "init_from.params": path, "mixup.prob": 1.0,
                               "distill.label_weight": 0.5})
  task = distill.make_task(c)
  params, _ = params_io.load_params(path)
  video = np.random.RandomState(0).randint(0, 256, (4, 2, 4, 16, 16, 3)).astype(np.uint8)  # num_sample 2
  batch = {"video": jnp.asarray(video), "label": jnp.arange(4) % num_classes}
  for seed in range(3):
    total, aux = jax.jit(task.loss)(params, batch, jax.random.key(seed), task.extra)
    assert float(aux["loss_distill"]) < 1e-6 and float(aux["loss_label"]) > 0.1
    np.testing.assert_allclose(total, aux["loss_distill"] + 0.5 * aux["loss_label"], rtol=1e-6)


def test_distill_from_a_bigger_finetune_workdir(data, num_classes, teacher_workdir, tmp_path):
  c = tiny("distill", data)
  init = save_classifier(str(tmp_path / "student_k710.npz"), c, num_classes, seed=1)
  c = tiny("distill", data, total_steps=10, **{
      "teacher.workdir": teacher_workdir, "init_from.params": init, "data.num_sample": 2, "data.eval_split": "test",
      "mixup.prob": 0.0, "optim.lr": 1e-2, "optim.min_lr": 1e-2})
  w = str(tmp_path / "dl")
  task = distill.make_task(c)
  result = train_loop.run_and_save(c, w, task, finetune.export_meta(c, task))
  # the student learns the teacher's logits and its multi-view eval runs
  kd = [h["loss_distill"] for h in result.history]
  assert np.mean(kd[-3:]) < 0.7 * kd[0], kd
  assert set(result.eval) >= {"top1", "top5"} and 0 <= result.eval["top1"] <= 100
  # the teacher: bigger, frozen, exactly its file
  want, _ = params_io.load_params(os.path.join(teacher_workdir, "params.npz"))
  assert task.extra["encoder"]["patch_embed"]["proj"]["kernel"].shape[-1] == BIG["embed_dim"]
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), task.extra, want)
  # ... and absent from the checkpoint (params + two Adam moments of the student only) and the export
  state = ocp.StandardCheckpointer().metadata(os.path.join(w, "checkpoints", "10", "state"))
  state = getattr(state, "item_metadata", state)
  shapes = [tuple(x.shape) for x in jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "shape"))]
  assert sum(int(np.prod(s)) for s in shapes) <= 3 * count(result.params) + 16
  assert not any(BIG["embed_dim"] in s for s in shapes)
  exported, meta = params_io.load_params(os.path.join(w, "params.npz"))
  assert meta["kind"] == "classifier" and meta["encoder"]["embed_dim"] == 32
  assert count(exported) == count(result.params)


def test_teacher_errors_name_the_file(data, num_classes, teacher_workdir, tmp_path):
  c = tiny("distill", data)
  wrong_kind = str(tmp_path / "pretrain.npz")
  params_io.save_params(wrong_kind, {"encoder": {"w": np.zeros(2)}}, {"kind": "videomae_pretrain"})
  few = save_classifier(str(tmp_path / "few.npz"), c, num_classes - 1)
  lying = save_classifier(str(tmp_path / "lying.npz"), c, num_classes, embed_dim=48)  # meta != arrays
  cases = [({"teacher.path": wrong_kind}, ValueError, r"teacher '.*pretrain\.npz' holds 'videomae_pretrain' params"),
           ({"teacher.path": few}, ValueError,
            rf"teacher '.*few\.npz' has {num_classes - 1} classes, the student {num_classes}"),
           ({"teacher.path": lying}, ValueError, r"teacher '.*lying\.npz' does not fit the model: .*shape mismatches"),
           ({"teacher.workdir": str(tmp_path)}, FileNotFoundError, r"config\.teacher\.workdir='.*' has no params\.npz"),
           ({"teacher.path": few, "teacher.workdir": teacher_workdir}, ValueError, "set one of config.teacher.path"),
           ({}, ValueError, "set one of config.teacher.path")]
  for kw, err, match in cases:
    with pytest.raises(err, match=match):
      distill.make_task(tiny("distill", data, **kw))


def test_finetune_folds_repeated_views_clip_by_clip():
  video = np.arange(2 * 3 * 2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 3, 2, 4, 4, 3)  # B=2 clips × 3 views
  mix = config_lib.base("finetune").mixup
  mix.update(mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.0)
  out, targets = finetune.training_clips(jax.random.key(0), {"video": jnp.asarray(video),
                                                             "label": jnp.asarray([3, 5])}, 7, mix)
  np.testing.assert_allclose(out, ip.normalize(jnp.asarray(video.reshape(6, 2, 4, 4, 3)), jnp.float32))
  np.testing.assert_array_equal(np.argmax(targets, 1), [3, 3, 3, 5, 5, 5])


def _recipe(name: str, arg: str):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_progressive_recipes():
  g = _recipe("videomae_finetune", "g,k710")
  assert (g.trainer, g.model.tubelet_size, g.data.num_frames, g.data.num_sample) == ("finetune", 2, 16, 2)
  assert (g.optim.layer_decay, g.model.drop_path, g.optim.grad_clip, g.num_epochs) == (0.9, 0.3, 5.0, 35)
  k400, ssv2 = _recipe("videomae_finetune", "g,k400"), _recipe("videomae_finetune", "B,ssv2")
  assert (k400.optim.lr, k400.num_epochs, ssv2.data.flip, ssv2.data.test_clips) == (1e-5, 3, False, 2)
  for student in ("S", "B"):
    c = _recipe("distill", student)
    assert (c.trainer, c.model.variant, c.model.tubelet_size, c.distill.temperature) == ("distill", student, 2, 1.0)
  with pytest.raises(ValueError, match=r"configs/distill.py:g: expected S or B"):
    _recipe("distill", "g")
  with pytest.raises(ValueError, match=r"configs/videomae_finetune.py:B,k600"):
    _recipe("videomae_finetune", "B,k600")
