"""Tiny VLM test helpers: the shared tiny Llama (32-d, wide init so answers depend on the image) with the
tiny conv tower (16x16 images -> 16 tokens of 24-d), and synthetic images."""

from __future__ import annotations

import numpy as np
from conftest import build_tiny_llama


def tiny_vlm(tokenizer, projector: str = "mlp2x_gelu", seed: int = 0, **options):
    from polm.vlm.model import compose

    lm = build_tiny_llama(len(tokenizer), seed, initializer_range=0.5)
    return compose(lm, tower="tiny-conv", tower_options={"image_size": 16, "patch": 4, "out_dim": 24},
                   projector=projector, projector_options=options)


def synthetic_images(n: int, seed: int = 0, size: int = 12) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(size, size), dtype=np.uint8) for _ in range(n)]
