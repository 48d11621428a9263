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
