"""Small shared helpers for tests."""
import os

import flax
import jax
import numpy as np


def init_params(model, *args, seed: int = 0, **kwargs):
  """Unboxed params of `model.init(key, *args)`."""
  variables = model.init(jax.random.key(seed), *args, **kwargs)
  return flax.linen.meta.unbox(variables["params"])


def randomize(params, seed: int = 0, scale: float = 0.1):
  """Replace every param with noise, so that zero-initialised biases and unit LayerNorms are tested too."""
  leaves, tree = jax.tree.flatten(params)
  rng = np.random.RandomState(seed)
  return jax.tree.unflatten(tree, [np.asarray(x) + scale * np.asarray(rng.randn(*np.shape(x)), np.float32)
                                   for x in leaves])


def to_torch_video(video: np.ndarray):
  """(B, T, H, W, C) -> torch (B, C, T, H, W)."""
  import torch
  return torch.from_numpy(np.ascontiguousarray(video.transpose(0, 4, 1, 2, 3)))


def count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def subprocess_env(devices: int) -> dict:
  """The environment for a test's JAX subprocess: `devices` CPU devices, the session's XLA flags otherwise."""
  from tests.conftest import FAST_COMPILE
  return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}",
          "JAX_PLATFORMS": "cpu"}


def preempt_and_resume(train, make_config, workdir: str, stop_after: int, monkeypatch) -> list[float]:
  """Runs `train(make_config(), workdir)` preempted after step `stop_after`, then again to the end.

  Returns the resumed run's per-step losses (steps stop_after+1 .. total), for comparison with an
  uninterrupted run's tail.
  """
  from umt_jax import train_loop
  calls = iter(range(10**6))
  monkeypatch.setattr(train_loop._Preemption, "reached", lambda self: next(calls) == stop_after - 1)
  first = train(make_config(), workdir)
  assert first.preempted and first.step == stop_after, (first.preempted, first.step)
  monkeypatch.undo()
  again = train(make_config(), workdir)
  assert not again.preempted and again.step == make_config().total_steps
  return [h["loss"] for h in again.history]


def load_init(config) -> dict:
  """The params (numpy) a fresh fine-tuning run of `config` starts from: its init_from.* loaded onto a mesh."""
  import flax.linen as nn
  from umt_jax import sharding
  from umt_jax.trainers import finetune
  task = finetune.make_task(config)
  boxed = jax.eval_shape(task.init, jax.random.key(0))
  sh = sharding.param_shardings(boxed, sharding.make_mesh({"data": -1}), sharding.DEFAULT_RULES)
  return jax.tree.map(np.asarray, task.load_init(nn.meta.unbox(boxed), sh))


def tree_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)
