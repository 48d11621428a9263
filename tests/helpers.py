"""Small shared helpers for tests."""
import flax
import jax
import numpy as np
import torch


def init_params(model, *args, seed: int = 0, **kwargs):
  """Unboxed params of `model.init(key, *args)`."""
  variables = model.init(jax.random.key(seed), *args, **kwargs)
  return flax.linen.meta.unbox(variables["params"])


def randomize(params, seed: int = 0, scale: float = 0.1):
  """Replace every param with noise, so that zero-initialised biases and unit LayerNorms are tested too."""
  leaves, tree = jax.tree.flatten(params)
  rng = np.random.RandomState(seed)
  return jax.tree.unflatten(tree, [np.asarray(x) + scale * rng.randn(*np.shape(x)).astype(np.float32)
                                   for x in leaves])


def to_torch_video(video: np.ndarray) -> torch.Tensor:
  """(B, T, H, W, C) -> (B, C, T, H, W)."""
  return torch.from_numpy(np.ascontiguousarray(video.transpose(0, 4, 1, 2, 3)))


def count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
