"""Cached features of a frozen vision tower, keyed by (tower fingerprint, image pixel hash).

A frozen tower gives the same features for the same pixels, so each image goes through it once per
tower: in memory, and on disk under `root/<fingerprint[:16]>/<image hash>.safetensors` when a root is
given (a rerun, a second stage or an eval then reads them back instead of recomputing).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from polm.io import atomic_file
from polm.vlm.images import image_hash
from polm.vlm.towers import VisionTower


class FeatureCache:
    def __init__(self, tower: VisionTower, root: str | Path | None = None, batch_size: int = 32):
        self.tower, self.batch_size = tower, batch_size
        self.fingerprint = tower.fingerprint()
        self.dir = Path(root) / self.fingerprint[:16] if root else None
        self._memory: dict[str, torch.Tensor] = {}
        self.computed = 0   # images that went through the tower (not found in memory or on disk)

    def get(self, images: list[np.ndarray]) -> torch.Tensor:
        """[len(images), N, D] features (fp32, CPU) of uint8 images, computing only the missing ones."""
        keys = [image_hash(img) for img in images]
        first = {k: i for i, k in reversed(list(enumerate(keys)))}   # one computation per distinct image
        missing = sorted(i for k, i in first.items() if not self._lookup(k))
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start:start + self.batch_size]
            feats = self._compute([images[i] for i in chunk])
            for i, f in zip(chunk, feats):
                self._store(keys[i], f)
        return torch.stack([self._memory[k] for k in keys])

    def _lookup(self, key: str) -> bool:
        if key in self._memory:
            return True
        path = self._path(key)
        if path is not None and path.is_file():
            from safetensors.torch import load_file

            self._memory[key] = load_file(path)["features"]
            return True
        return False

    @torch.no_grad()
    def _compute(self, images: list[np.ndarray]) -> torch.Tensor:
        device = next(self.tower.parameters()).device
        pixels = torch.stack([self.tower.preprocess(img) for img in images]).to(device)
        was_training = self.tower.training
        self.tower.eval()
        try:
            out = self.tower(pixels).float().cpu()
        finally:
            self.tower.train(was_training)
        self.computed += len(images)
        return out

    def _store(self, key: str, features: torch.Tensor) -> None:
        self._memory[key] = features.contiguous()
        path = self._path(key)
        if path is not None:
            from safetensors.torch import save_file

            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(path) as tmp:
                save_file({"features": self._memory[key]}, str(tmp))

    def _path(self, key: str) -> Path | None:
        return self.dir / f"{key}.safetensors" if self.dir is not None else None


def image_inputs(tower: VisionTower, cache: FeatureCache | None):
    """images -> the batch's image tensors: {"image_features"} from the cache (a frozen tower) or
    {"pixel_values"} preprocessed for a tower that trains."""
    if cache is not None:
        return lambda images: {"image_features": cache.get(images)}
    return lambda images: {"pixel_values": torch.stack([tower.preprocess(img) for img in images])}
