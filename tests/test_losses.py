"""Objectives against the official PyTorch formulas (engine_for_pretraining*.py)."""
import einops
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from umt_jax import losses, masking


def test_uta_loss_matches_official_formula():
  rng = np.random.RandomState(0)
  s, t = rng.randn(6, 2, 5, 8).astype(np.float32), rng.randn(6, 2, 5, 8).astype(np.float32)
  ts, tt = torch.from_numpy(s), torch.from_numpy(t)
  ts, tt = ts / ts.norm(dim=-1, keepdim=True), tt / tt.norm(dim=-1, keepdim=True)
  want = (2 - 2 * (ts * tt).sum(dim=-1)).mean().item()
  np.testing.assert_allclose(losses.uta_loss(s, t), want, rtol=1e-6)
  np.testing.assert_allclose(losses.uta_loss(s, s), 0.0, atol=1e-6)
  with pytest.raises(ValueError, match="differ in shape"):
    losses.uta_loss(s, t[:, :, :4])


def _official_targets(video: np.ndarray, p: int) -> torch.Tensor:
  x = torch.from_numpy(video).permute(0, 4, 1, 2, 3)  # B C T H W, in [0, 1]
  sq = einops.rearrange(x, "b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c", p0=2, p1=p, p2=p)
  norm = (sq - sq.mean(dim=-2, keepdim=True)) / (sq.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
  return einops.rearrange(norm, "b n p c -> b n (p c)")


def test_pixel_targets_and_loss_match_official():
  rng = np.random.RandomState(1)
  b, grid, p = 2, (2, 4, 4), 4
  video = rng.rand(b, 4, 16, 16, 3).astype(np.float32)
  targets = losses.pixel_targets(jnp.asarray(video), 2, p)
  want_t = _official_targets(video, p)
  np.testing.assert_allclose(targets, want_t.numpy(), atol=1e-4)

  visible = masking.tube_mask(jax.random.key(0), b, grid, 0.75)  # 4 of 16 per slot
  decode = masking.running_cell_mask(jax.random.key(1), b, grid, 0.5)
  pred = rng.randn(b, decode.shape[1], targets.shape[-1]).astype(np.float32)
  got = losses.pixel_loss(jnp.asarray(pred), targets, visible, decode)

  bool_masked = torch.from_numpy(np.array(masking.visible_to_mask(visible, 32)))
  decode_masked = torch.from_numpy(np.array(masking.visible_to_mask(decode, 32)))  # True = dropped
  labels = want_t[~decode_masked].reshape(b, -1, want_t.shape[-1])
  loss = ((torch.from_numpy(pred) - labels) ** 2).mean(dim=-1)
  cal = bool_masked[~decode_masked].reshape(b, -1)
  want = ((loss * cal).sum() / cal.sum()).item()
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_combine_weights_and_names():
  total, metrics = losses.combine({"uta": jnp.float32(2.0), "vtc": jnp.float32(1.0)}, {"uta": 1.0, "vtc": 0.5})
  assert float(total) == 2.5 and set(metrics) == {"loss", "loss_uta", "loss_vtc"}
  with pytest.raises(ValueError, match=r"\['mlm'\] have no weight"):
    losses.combine({"mlm": jnp.float32(1.0)}, {"uta": 1.0})
