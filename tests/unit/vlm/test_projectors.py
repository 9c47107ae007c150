"""Projectors: shapes, pixel-shuffle order by hand, the resampler's fixed token count."""

from __future__ import annotations

import torch

from polm.vlm.projectors import PROJECTORS, build_projector, pixel_shuffle


def test_pixel_shuffle_folds_2x2_blocks_row_major():
    grid = torch.arange(16.0).view(1, 16, 1)                 # a 4x4 grid, cell (r,c) holds 4r+c
    out = pixel_shuffle(grid, 2)
    assert out.shape == (1, 4, 4)
    assert out[0].tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]


def test_pixel_shuffle_pads_an_odd_grid_with_zeros():
    grid = torch.arange(1.0, 10.0).view(1, 9, 1)             # 3x3 -> padded 4x4 -> 2x2 tokens
    out = pixel_shuffle(grid, 2)
    assert out[0].tolist() == [[1, 2, 4, 5], [3, 0, 6, 0], [7, 8, 0, 0], [9, 0, 0, 0]]


def test_every_projector_maps_to_the_lm_width():
    feats = torch.randn(3, 49, 20)
    expected = {"mlp2x_gelu": 49, "pixel_shuffle": 16, "resampler": 8}
    assert set(PROJECTORS.names()) == set(expected)
    for name, m in expected.items():
        proj = build_projector(name, 20, 32)
        assert proj.num_tokens(49) == m
        assert proj(feats).shape == (3, m, 32)


def test_mlp2x_gelu_is_linear_gelu_linear():
    proj = build_projector("mlp2x_gelu", 3, 2)
    x = torch.randn(1, 1, 3)
    by_hand = torch.nn.functional.gelu(x @ proj.fc1.weight.T + proj.fc1.bias) @ proj.fc2.weight.T + proj.fc2.bias
    torch.testing.assert_close(proj(x), by_hand)
