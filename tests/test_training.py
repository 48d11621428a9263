"""Trainers end to end on tiny models: sharded == single-device, exact resume after SIGTERM / SIGKILL, restore onto
another mesh, corrupted-checkpoint fallback, 2 processes == 1 process, and the errors users hit first."""
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data import synthetic
from tests.helpers import subprocess_env
from umt_jax import checkpoint, config_lib, main as umt_main, params_io, sharding, train_loop
from umt_jax.models.clip import CLIPConfig, CLIPVision
from umt_jax.convert.clip_import import load_teacher
from umt_jax.trainers import clip_pretrain, finetune, umt_pretrain

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CLIP = CLIPConfig(embed_dim=16, image_size=16, patch_size=8, vision_width=32, vision_layers=2, vision_heads=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("train_data"))
  synthetic.generate(out, {"pretrain": 48, "train": 40, "test": 12}, size=20, frames=4, clips_per_shard=64)
  return out


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("teacher") / "teacher.npz")
  params = CLIPVision(TINY_CLIP).init(jax.random.key(1), jnp.zeros((1, 16, 16, 3)))["params"]
  params_io.save_params(path, params, {"kind": "clip_visual", "clip_config": dataclasses.asdict(TINY_CLIP)})
  return path


def tiny(stage: str, data: str, **kw):
  """configs/demo.py shrunk to seconds: 16² clips of 4 frames, width 32, depth 2."""
  c = umt_main_config(stage)
  c.data.update(path=data, size=16, eval_split="")
  c.model.update(embed_dim=32, depth=2, num_heads=2, mlp_dim=64)
  c.update(batch_size=8, total_steps=4, log_every=1)
  c.checkpoint.update(every=100, **{"async": False})
  if stage == "umt":
    c.teacher.update(align_layers=2)
  return config_lib.override(c, kw)


def umt_main_config(stage: str):
  from umt_jax.demo import demo_config
  return demo_config(stage, "/nonexistent")


def losses_of(workdir: str) -> dict[int, float]:
  """Per-step losses from metrics.jsonl; a re-run step (after SIGKILL) keeps its last value."""
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      rec = json.loads(line)
      if "loss" in rec:
        out[rec["step"]] = rec["loss"]
  return out


@pytest.mark.parametrize("mesh", [{"data": 2, "fsdp": 4}, {"data": 4, "fsdp": 2}, {"data": 2, "fsdp": 2, "tensor": 2}])
def test_sharded_umt_step_equals_one_device(data, teacher, tmp_path, mesh):
  c1 = tiny("umt", data, **{"teacher.path": teacher, "total_steps": 2})
  one = umt_pretrain.train(c1, str(tmp_path / "one"), devices=jax.devices()[:1])
  c8 = tiny("umt", data, **{"teacher.path": teacher, "total_steps": 2})
  c8.mesh.update({"data": 1, "fsdp": 1, "tensor": 1, **mesh})
  eight = umt_pretrain.train(c8, str(tmp_path / "eight"))
  leaf = eight.params["encoder"]["blocks_0"]["attn"]["qkv"]["kernel"]
  assert len(leaf.sharding.device_set) == 8
  np.testing.assert_allclose([h["loss"] for h in eight.history], [h["loss"] for h in one.history], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7),
               eight.params, one.params)


def _cli(workdir: str, data: str, *extra: str) -> list[str]:
  return [sys.executable, "-m", "umt_jax.main", "--config=configs/demo.py:finetune", f"--workdir={workdir}",
          f"--config.data.path={data}", "--config.data.size=16", "--config.data.eval_split=",
          "--config.model.embed_dim=32", "--config.model.depth=2", "--config.model.num_heads=2",
          "--config.model.mlp_dim=64", "--config.batch_size=8", "--config.total_steps=12", "--config.log_every=1",
          "--config.checkpoint.every=3", *extra]


def _env():
  return {**subprocess_env(2), "PYTHONPATH": ROOT}


def _run_until(cmd: list[str], workdir: str, step: int, sig: int) -> subprocess.CompletedProcess:
  """Starts `cmd`, sends `sig` once metrics.jsonl has reached `step` and a checkpoint is finalised, waits."""
  p = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 300
  while time.time() < deadline and p.poll() is None:
    ckpts = os.path.join(workdir, "checkpoints")
    done = os.path.isdir(ckpts) and any(d.isdigit() for d in os.listdir(ckpts))
    if done and os.path.isfile(path) and max(losses_of(workdir) or [0]) >= step:
      p.send_signal(sig)
      break
    time.sleep(0.05)
  out = p.communicate(timeout=300)[0].decode()
  return subprocess.CompletedProcess(cmd, p.returncode, out)


def test_resume_after_sigterm_and_sigkill_is_exact(data, tmp_path):
  ref_dir = str(tmp_path / "ref")
  ref = subprocess.run(_cli(ref_dir, data), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
  assert ref.returncode == 0, ref.stdout[-2000:] + ref.stderr[-3000:]
  want = losses_of(ref_dir)
  assert sorted(want) == list(range(1, 13))
  for sig, name in ((signal.SIGTERM, "term"), (signal.SIGKILL, "kill")):
    w = str(tmp_path / name)
    first = _run_until(_cli(w, data), w, 5, sig)
    if sig == signal.SIGTERM:
      assert first.returncode == 0 and "preempted: saved step" in first.stdout, first.stdout[-3000:]
    else:
      assert first.returncode == -signal.SIGKILL
    assert max(losses_of(w)) < 12, "the run finished before the signal; make the steps slower"
    again = subprocess.run(_cli(w, data), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "resumed" in again.stderr, again.stderr[-3000:]
    assert losses_of(w) == want, name


def test_restore_onto_another_mesh_and_corrupt_fallback(tmp_path):
  boxed = jax.eval_shape(lambda: nn.Dense(64, kernel_init=nn.with_logical_partitioning(
      nn.initializers.normal(), ("embed", "mlp"))).init(jax.random.key(0), jnp.zeros((1, 32))))
  rules = sharding.DEFAULT_RULES
  state = {"w": jax.random.normal(jax.random.key(0), (32, 64)), "step": jnp.int32(7)}
  mesh_a = sharding.make_mesh({"data": 2, "fsdp": 4})
  sh_a = {"w": sharding.param_shardings(boxed, mesh_a, rules)["params"]["kernel"], "step": sharding.replicated(mesh_a)}
  assert sh_a["w"].spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  ck = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  for step in (1, 2):
    ck.save(step, jax.device_put(state, sh_a), None, {"step": step})
  ck.wait()
  for mesh in (sharding.make_mesh({"fsdp": 2, "tensor": 4}), sharding.make_mesh({"data": 1}, jax.devices()[:1])):
    sh = {"w": sharding.param_shardings(boxed, mesh, rules)["params"]["kernel"], "step": sharding.replicated(mesh)}
    step, got = checkpoint.Checkpointer(str(tmp_path)).restore_latest(state, sh, None)
    assert step == 2 and got["w"].sharding == sh["w"]
    np.testing.assert_array_equal(np.asarray(got["w"]), np.asarray(state["w"]))
  # corrupt the latest: its array data disappears -> warning, set aside, previous one used
  state_dir = tmp_path / "checkpoints" / "2" / "state"
  for f in state_dir.rglob("*"):
    if f.is_file() and "manifest" in f.name or f.parent.name == "d":
      f.unlink()
  step, _ = checkpoint.Checkpointer(str(tmp_path)).restore_latest(state, sh, None)
  assert step == 1 and (tmp_path / "checkpoints" / "corrupt-2").is_dir()


def test_two_processes_equal_one_process(data, tmp_path):
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen([sys.executable, "-m", "tests.multihost_train_worker", data, str(port), str(i),
                             str(tmp_path / "two")], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT) for i in range(2)]
  for p in procs:
    log = p.communicate(timeout=600)[0].decode()
    assert p.returncode == 0, log[-3000:]
  one = finetune.train(tiny("finetune", data, total_steps=3), str(tmp_path / "one"), devices=jax.devices()[:4])
  np.testing.assert_allclose(list(losses_of(str(tmp_path / "two")).values()), [h["loss"] for h in one.history],
                             rtol=1e-5)


def test_config_typo_fails_loudly(tmp_path):
  r = subprocess.run([sys.executable, "-m", "umt_jax.main", "--config=configs/demo.py:umt",
                      f"--workdir={tmp_path}", "--config.optim.lr_typo=1"], cwd=ROOT, env=_env(),
                     capture_output=True, text=True, timeout=120)
  assert r.returncode != 0 and "lr_typo" in r.stderr


def test_missing_data_and_mismatched_checkpoint(data, teacher, tmp_path):
  with pytest.raises(FileNotFoundError, match="config.data.path"):
    finetune.train(tiny("finetune", str(tmp_path / "nope")), str(tmp_path / "w"))
  with pytest.raises(ValueError, match="config.data.path is empty"):
    finetune.train(tiny("finetune", ""), str(tmp_path / "w"))
  umt_pretrain.train(tiny("umt", data, **{"teacher.path": teacher, "total_steps": 1}), str(tmp_path / "umt"))
  wider = tiny("finetune", data, **{"model.embed_dim": 48, "init_from.workdir": str(tmp_path / "umt")})
  with pytest.raises(ValueError, match=r"does not fit the model .*shape mismatches .*checkpoint \(32,\) vs model \(48,\)"):
    finetune.train(wider, str(tmp_path / "ft"))
  with pytest.raises(FileNotFoundError, match="has no checkpoints"):
    finetune.train(tiny("finetune", data, **{"init_from.workdir": str(tmp_path / "none")}), str(tmp_path / "ft2"))


def test_nan_loss_stops_naming_the_step(data, tmp_path):
  c = tiny("finetune", data)
  task = finetune.make_task(c)
  task.loss = lambda params, batch, rng, extra: (jnp.nan * sum(jnp.sum(x) for x in jax.tree.leaves(params)), {})
  with pytest.raises(FloatingPointError, match="loss is nan at step 1"):
    train_loop.run(c, str(tmp_path), task)


def test_finetune_from_stage1_loads_the_encoder_and_evaluates(data, teacher, tmp_path):
  pre = umt_pretrain.train(tiny("umt", data, **{"teacher.path": teacher, "total_steps": 2}), str(tmp_path / "umt"))
  c = tiny("finetune", data, **{"init_from.workdir": str(tmp_path / "umt"), "total_steps": 0,
                                "data.eval_split": "test", "data.eval_batch_size": 8})
  c.num_epochs = 0.0
  task = finetune.make_task(c)
  boxed = jax.eval_shape(task.init, jax.random.key(0))
  mesh = sharding.make_mesh({"data": -1})
  sh = sharding.param_shardings(boxed, mesh, sharding.DEFAULT_RULES)
  params = task.load_init(nn.meta.unbox(boxed), sh)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               params["encoder"], {k: v for k, v in pre.params["encoder"].items() if k != "norm"})
  ev = task.evaluate(params, 0)
  assert set(ev) == {"top1", "top5", "top1_temporal", "top1_appearance"} and 0 <= ev["top1"] <= 100


def test_clip_stage0_learns_and_its_params_are_a_stage1_teacher(data, tmp_path):
  c = tiny("clip", data, total_steps=16, **{"optim.warmup_epochs": 0.0})
  c.clip.update(embed_dim=16, vision_width=32, vision_layers=2, vision_heads=2, text_width=32, text_layers=1,
                text_heads=2)
  r = clip_pretrain.train(c, str(tmp_path / "clip"))
  losses = [h["loss"] for h in r.history if "loss" in h]
  assert losses[-1] < 0.8 * losses[0]  # InfoNCE over batches of 8 starts near ln 8
  assert os.path.isfile(tmp_path / "clip" / "tokenizer.json")
  path = str(tmp_path / "clip" / "params.npz")
  tcfg, _ = load_teacher(path)
  assert (tcfg.image_size, tcfg.vision_width, tcfg.vision_layers) == (16, 32, 2)
  u = umt_pretrain.train(tiny("umt", data, **{"teacher.path": path, "total_steps": 2}), str(tmp_path / "umt"))
  assert u.step == 2 and np.isfinite(u.history[-1]["loss"])
