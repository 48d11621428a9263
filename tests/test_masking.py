"""Masks: semantic (UMT) sampling law, tube / random, and VideoMAE V2 running-cell patterns."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from umt_jax import masking


def _exact_inclusion(p: np.ndarray, k: int) -> np.ndarray:
  """P(i among the first k draws) of sequential sampling without replacement ∝ p, by enumeration."""
  incl = np.zeros_like(p)
  for seq in itertools.permutations(range(len(p)), k):
    prob, left = 1.0, 1.0
    for i in seq:
      prob *= p[i] / left
      left -= p[i]
    incl[list(seq)] += prob
  return incl


def test_semantic_mask_matches_sampling_without_replacement():
  p = np.array([0.40, 0.25, 0.15, 0.10, 0.06, 0.04])
  k, draws = 3, 40_000
  exact = _exact_inclusion(p, k)
  attn = jnp.asarray(np.tile(p, (draws, 1, 1)), jnp.float32)  # (B=draws, T=1, N=6)
  vis = np.asarray(jax.jit(masking.semantic_mask, static_argnums=2)(jax.random.key(0), attn, 0.5))
  freq = np.bincount(vis.ravel(), minlength=6) / draws
  torch.manual_seed(0)
  ref = torch.multinomial(torch.tensor(p).expand(draws, -1), 6)[:, :k].numpy()
  ref_freq = np.bincount(ref.ravel(), minlength=6) / draws
  sigma = np.sqrt(exact * (1 - exact) / draws)
  assert np.all(np.abs(freq - exact) < 5 * sigma + 1e-3), (freq, exact)
  assert np.all(np.abs(ref_freq - exact) < 5 * sigma + 1e-3), (ref_freq, exact)


def test_semantic_mask_shapes_order_and_determinism():
  attn = jax.nn.softmax(jax.random.normal(jax.random.key(1), (2, 8, 196)), -1)
  vis = masking.semantic_mask(jax.random.key(2), attn, 0.8)
  assert vis.shape == (2, 320)  # 40 of 196 per frame, the official count
  v = np.asarray(vis).reshape(2, 8, 40)
  assert np.all(np.diff(v, axis=-1) > 0)  # sorted, unique
  assert np.all(v // 196 == np.arange(8)[None, :, None])  # frame t owns tokens 196t..196t+195
  np.testing.assert_array_equal(vis, masking.semantic_mask(jax.random.key(2), attn, 0.8))
  assert not np.array_equal(vis, masking.semantic_mask(jax.random.key(3), attn, 0.8))


def test_semantic_mask_follows_attention():
  attn = np.full((1, 1, 10), 1e-6, np.float32)
  attn[0, 0, [2, 5, 7]] = 1.0
  vis = masking.semantic_mask(jax.random.key(0), jnp.asarray(attn), 0.7)
  np.testing.assert_array_equal(vis, [[2, 5, 7]])


def test_tube_and_random_masks():
  vis = np.asarray(masking.tube_mask(jax.random.key(0), 3, (8, 14, 14), 0.9))
  assert vis.shape == (3, 160)  # 20 of 196 cells visible, in every one of 8 slots
  cells = vis.reshape(3, 8, 20) % 196
  assert np.all(cells == cells[:, :1])  # the same spatial cells in every slot
  assert np.all(np.diff(vis, axis=-1) > 0)
  rnd = np.asarray(masking.random_mask(jax.random.key(0), 4, 100, 0.75))
  assert rnd.shape == (4, 25) and np.all(np.diff(rnd, axis=-1) > 0) and rnd.max() < 100
  with pytest.raises(ValueError, match="keeps 0 of"):
    masking.random_mask(jax.random.key(0), 1, 10, 1.0)


# Hand-written cells (TL, TR, BL, BR; X = dropped by the decoder) for each phase and slot t = 0..7.
RUNNING_CELL = {
    0: "X..X ..XX .XX. XX.. X..X ..XX .XX. XX..",
    1: "..XX .XX. XX.. X..X ..XX .XX. XX.. X..X",
    2: ".XX. XX.. X..X ..XX .XX. XX.. X..X ..XX",
    3: "XX.. X..X ..XX .XX. XX.. X..X ..XX .XX.",
}


def test_running_cell_patterns_all_phases():
  pats = masking.running_cell_patterns((8, 4, 6), 0.5)
  assert pats.shape == (4, 8, 24)
  for phase, cells in RUNNING_CELL.items():
    for t, cell in enumerate(cells.split()):
      unit = np.array([c == "X" for c in cell], np.int32).reshape(2, 2)
      np.testing.assert_array_equal(pats[phase, t].reshape(4, 6), np.tile(unit, (2, 3)), err_msg=f"{phase},{t}")
  assert np.all(pats.reshape(4, 8, -1).sum(-1) == 12)  # exactly half per slot
  quarter = masking.running_cell_patterns((2, 2, 2), 0.25)
  np.testing.assert_array_equal(quarter[0], [[0, 0, 0, 1], [0, 0, 1, 0]])
  with pytest.raises(ValueError, match="even token grid"):
    masking.running_cell_patterns((8, 7, 7), 0.5)
  with pytest.raises(ValueError, match="1..3 masks"):
    masking.running_cell_patterns((8, 14, 14), 0.1)


def test_running_cell_mask_draws_phases():
  grid = (8, 14, 14)
  kept = np.asarray(masking.running_cell_mask(jax.random.key(0), 64, grid))
  assert kept.shape == (64, 784)  # 50% of 1568, the official count
  pats = masking.running_cell_patterns(grid).reshape(4, -1)
  phases = set()
  for row in kept:
    match = [p for p in range(4) if np.array_equal(np.flatnonzero(pats[p] == 0), row)]
    assert len(match) == 1
    phases.add(match[0])
  assert phases == {0, 1, 2, 3}


def test_visible_to_mask():
  m = masking.visible_to_mask(jnp.array([[0, 2], [1, 3]]), 4)
  np.testing.assert_array_equal(m, [[False, True, False, True], [True, False, True, False]])
