"""Reading images for the VLM: a path or an array -> uint8 array, and the content hash that keys caches.

A missing file and a file that is not an image each end in one PolmError naming the file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from polm.errors import PolmError

ImageRef = Any   # a path (str / Path) or an array [H,W] / [H,W,C] (numpy or nested lists)


def load_image(ref: ImageRef, where: str | None = None) -> np.ndarray:
    """uint8 [H,W] or [H,W,3] from a path (any format Pillow reads) or an array."""
    if isinstance(ref, (str, Path)):
        return _read_file(Path(ref), where)
    arr = np.asarray(ref)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)) or arr.size == 0:
        raise PolmError(f"an image array must be [H,W] or [H,W,C] with C in 1, 3, 4, got shape {arr.shape}",
                        where=where, fix="Pass a grayscale or RGB(A) pixel array.")
    if not np.issubdtype(arr.dtype, np.number):
        raise PolmError(f"an image array must hold numbers, got dtype {arr.dtype}", where=where)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return arr[:, :, :3] if arr.ndim == 3 and arr.shape[2] == 4 else arr


def _read_file(path: Path, where: str | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise PolmError(f"image file '{path}' does not exist", where=where,
                        fix="Check the path (relative paths are read from the data file's folder).")
    try:
        with Image.open(path) as img:
            img = img.convert("L") if img.mode in ("L", "1", "I;16", "I") else img.convert("RGB")
            return np.asarray(img, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise PolmError(f"image file '{path}' cannot be read as an image ({type(err).__name__})", where=where,
                        fix="Replace or remove the file (PNG, JPEG and the other formats Pillow reads work).") from None


def image_hash(image: np.ndarray) -> str:
    """sha256 of the decoded pixels (shape, dtype and bytes): equal pixels, equal key, whatever the file."""
    arr = np.ascontiguousarray(image)
    digest = hashlib.sha256(f"{arr.shape}|{arr.dtype}|".encode())
    digest.update(arr.tobytes())
    return digest.hexdigest()
