"""Checks that run before a merge writes anything: architecture, tensor names, shapes, dtypes, vocabulary.

Each failure names the two inputs that disagree and the first thing that differs (config key, tensor,
or token), so the user knows which ingredient is wrong without reading tensors.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from polm.errors import PolmError
from polm.merge.sources import TensorSource

ARCH_KEYS = ("model_type", "architectures")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json")


def check_architectures(reference: TensorSource, others: list[TensorSource]) -> None:
    ref_cfg: dict[str, Any] = getattr(reference, "config", None) or {}
    for other in others:
        cfg: dict[str, Any] = getattr(other, "config", None) or {}
        for key in ARCH_KEYS:
            if key in ref_cfg and key in cfg and ref_cfg[key] != cfg[key]:
                raise PolmError(f"architectures differ: config.json {key} is {cfg[key]!r} here but "
                                f"{ref_cfg[key]!r} in {reference.label}", where=other.label,
                                fix="Merge only fine-tunes of one base model.")


def check_tensors(reference: TensorSource, others: list[TensorSource]) -> None:
    """Same tensor names, shapes and dtypes in every input as in `reference`."""
    for other in others:
        missing = [n for n in reference.meta if n not in other.meta]
        extra = [n for n in other.meta if n not in reference.meta]
        if missing or extra:
            what = (f"lacks tensor '{missing[0]}'" if missing else f"has tensor '{extra[0]}'") + \
                f" ({len(missing)} missing, {len(extra)} extra compared with {reference.label})"
            raise PolmError(f"the tensor names differ: it {what}", where=other.label,
                            fix="Merge only models with the same architecture and layer count.")
        for name, meta in reference.meta.items():
            theirs = other.meta[name]
            if theirs.shape != meta.shape:
                raise PolmError(f"tensor '{name}' has shape {list(theirs.shape)} here but {list(meta.shape)} "
                                f"in {reference.label}", where=other.label,
                                fix="Merge only fine-tunes of one base (same sizes and vocabulary).")
            if theirs.dtype != meta.dtype:
                raise PolmError(f"tensor '{name}' is {_dtype(theirs.dtype)} here but {_dtype(meta.dtype)} in "
                                f"{reference.label}", where=other.label,
                                fix="Save all ingredients in one dtype (e.g. `polm export --dtype` or save_pretrained "
                                    "after .to(dtype)).")


def _dtype(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def has_tokenizer(path: Path) -> bool:
    return any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json"))


def load_vocab(path: Path, label: str) -> dict[str, int]:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path)).get_vocab()
    except Exception as err:  # tokenizer loading fails with many error types; all mean "unreadable"
        raise PolmError(f"the tokenizer in '{path}' cannot be loaded ({type(err).__name__}: {err})".splitlines()[0],
                        where=label, fix="Restore its tokenizer files from the original model.") from None


def vocabulary_fingerprint(path: Path) -> str:
    """sha256 of the files that define token ids; equal fingerprints mean equal vocabularies."""
    digest = hashlib.sha256()
    for name in ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json"):
        if (path / name).is_file():
            digest.update(name.encode() + (path / name).read_bytes())
    config = path / "tokenizer_config.json"
    if config.is_file():
        try:
            added = json.loads(config.read_text()).get("added_tokens_decoder")
        except json.JSONDecodeError:
            added = config.read_text()
        digest.update(json.dumps(added, sort_keys=True).encode())
    return digest.hexdigest()


def check_vocabularies(tokenizers: list[tuple[str, Path]]) -> None:
    """Every tokenizer maps the same tokens to the same ids as the first one.

    Tokenizers whose id-defining files are byte-identical to the first one's are not loaded.
    """
    if len(tokenizers) < 2:
        return
    ref_label, ref_path = tokenizers[0]
    ref_print = vocabulary_fingerprint(ref_path)
    others = [(label, path) for label, path in tokenizers[1:] if vocabulary_fingerprint(path) != ref_print]
    if not others:
        return
    ref = load_vocab(ref_path, ref_label)
    for label, path in others:
        vocab = load_vocab(path, label)
        if len(vocab) != len(ref):
            raise PolmError(f"the vocabularies differ: {len(vocab)} tokens here but {len(ref)} in {ref_label}",
                            where=label, fix="Merge only models that share one tokenizer.")
        for token, index in ref.items():
            if vocab.get(token) != index:
                raise PolmError(f"the vocabularies differ: token {token!r} has id {vocab.get(token)} here but "
                                f"{index} in {ref_label}", where=label, fix="Merge only models that share one tokenizer.")
