"""Write models in Hugging Face format (safetensors only), atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def save_pretrained_atomic(model, tokenizer, out: Path, *, card: str | None = None, overwrite: bool = False) -> Path:
    """`save_pretrained` model (or PEFT adapter) + tokenizer + README into `out`, all or nothing."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if card:
            (tmp / "README.md").write_text(card)
        if out.exists():
            if not overwrite and any(out.iterdir()):
                raise FileExistsError(out)
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
