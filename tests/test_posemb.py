"""Position tables and their resizing match PyTorch's F.interpolate and the official fine-tune tables."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests import torch_ref
from umt_jax.models.posemb import resize_axis, resize_grid_table, sincos_table, video_pos_table


def test_sincos_matches_official():
  np.testing.assert_allclose(sincos_table(50, 24), torch_ref.sinusoid(50, 24)[0].numpy(), atol=1e-6)


@pytest.mark.parametrize("old,new", [(14, 24), (14, 7), (16, 14), (5, 5), (3, 11)])
def test_bicubic_matches_torch(old, new):
  x = np.random.RandomState(0).randn(2, 3, old, old).astype(np.float32)
  want = F.interpolate(torch.from_numpy(x), size=(new, new), mode="bicubic", align_corners=False).numpy()
  got = resize_axis(resize_axis(x, new, 2, "cubic"), new, 3, "cubic")
  np.testing.assert_allclose(got, want, atol=2e-5)


@pytest.mark.parametrize("old,new", [(8, 16), (8, 4), (8, 12), (3, 8)])
def test_linear_matches_torch(old, new):
  x = np.random.RandomState(1).randn(4, 5, old).astype(np.float32)
  want = F.interpolate(torch.from_numpy(x), size=new, mode="linear").numpy()
  np.testing.assert_allclose(resize_axis(x, new, 2, "linear"), want, atol=1e-5)  # torch rounds in fp32


@pytest.mark.parametrize("frames,side", [(16, 14), (8, 24), (4, 7), (8, 14)])
def test_finetune_table_matches_official(frames, side):
  got = video_pos_table((frames, side, side), 64, (8, 14, 14))
  want = torch_ref.finetune_table(frames * side * side, 64, frames)[0].numpy()
  np.testing.assert_allclose(got, want, atol=2e-5)


def test_grid_table_keeps_prefix_and_rejects_non_square():
  t = np.random.RandomState(2).randn(1 + 16 * 16, 8).astype(np.float32)
  out = resize_grid_table(t, (14, 14))
  assert out.shape == (1 + 196, 8)
  np.testing.assert_array_equal(out[0], t[0])
  with pytest.raises(ValueError, match="not a square"):
    resize_grid_table(t[:-1], (14, 14))
  with pytest.raises(ValueError, match="resize mode"):
    resize_axis(t, 3, 0, "nearest")
