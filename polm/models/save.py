"""Write models in Hugging Face format (safetensors only), atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def save_pretrained_atomic(model, tokenizer, out: Path, *, card: str | None = None, overwrite: bool = False,
                           extra_files: dict[str, bytes | str] | None = None) -> Path:
    """`save_pretrained` model (or PEFT adapter) + tokenizer + README (+ `extra_files`) into `out`, all or nothing."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if card:
            (tmp / "README.md").write_text(card)
        for name, content in (extra_files or {}).items():
            target = tmp / name
            target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)
        if out.exists():
            if not overwrite and any(out.iterdir()):
                raise FileExistsError(out)
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def save_final(model, tokenizer, run_dir: Path, *, card: str, extra_files: dict[str, bytes | str] | None = None) -> Path:
    """`run_dir/final`: the model (or PEFT adapter) + tokenizer + README `card` (+ `extra_files`, name ->
    content), all or nothing. A full model whose use_cache was turned off for gradient checkpointing is
    saved with it on again, so the output generates with a KV cache."""
    config = getattr(model, "config", None)
    if not callable(getattr(model, "disable_adapter", None)) and getattr(config, "use_cache", None) is False:
        config.use_cache = True
    return save_pretrained_atomic(model, tokenizer, Path(run_dir) / "final", card=card, overwrite=True,
                                  extra_files=extra_files)
