"""The frozen-feature cache: each image through the tower once, read back from disk, keyed by tower."""

from __future__ import annotations

import numpy as np
import torch
from vlm_helpers import synthetic_images

from polm.vlm.features import FeatureCache
from polm.vlm.towers import build_tower


def test_features_equal_the_tower_and_are_computed_once(tmp_path):
    tower = build_tower("tiny-conv", {"image_size": 8, "patch": 4})
    images = synthetic_images(3)
    cache = FeatureCache(tower, tmp_path)
    feats = cache.get([images[0], images[1], images[0], images[2]])
    with torch.no_grad():
        expected = tower(torch.stack([tower.preprocess(images[i]) for i in (0, 1, 0, 2)]))
    torch.testing.assert_close(feats, expected)
    assert cache.computed == 3
    cache.get(images)
    assert cache.computed == 3                       # memory hit
    again = FeatureCache(tower, tmp_path)
    torch.testing.assert_close(again.get(images[::-1]), expected[[3, 1, 0]])
    assert again.computed == 0                       # disk hit
    assert len(list(tmp_path.rglob("*.safetensors"))) == 3


def test_another_tower_or_other_pixels_is_another_key(tmp_path):
    images = synthetic_images(1)
    FeatureCache(build_tower("tiny-conv", {"image_size": 8, "patch": 4}), tmp_path).get(images)
    other = FeatureCache(build_tower("tiny-conv", {"image_size": 8, "patch": 4, "seed": 1}), tmp_path)
    other.get(images)
    assert other.computed == 1
    same = FeatureCache(build_tower("tiny-conv", {"image_size": 8, "patch": 4}), tmp_path)
    changed = images[0].copy()
    changed[0, 0] ^= np.uint8(1)
    same.get([changed])
    assert same.computed == 1
