"""Write models in Hugging Face format (safetensors only), atomically, with the prompt format they
were trained with (`polm_prompt.json` and a model-card section) when one is given."""

from __future__ import annotations

from pathlib import Path

from polm.data.templating import PROMPT_FORMAT_FILE, TrainedPromptFormat
from polm.io import atomic_dir


def save_pretrained_atomic(model, tokenizer, out: Path, *, card: str | None = None, overwrite: bool = False,
                           extra_files: dict[str, bytes | str] | None = None,
                           prompt_format: TrainedPromptFormat | None = None) -> Path:
    """`save_pretrained` model (or PEFT adapter) + tokenizer + README (+ `extra_files`, + `prompt_format`
    as polm_prompt.json and a card section) into `out`, all or nothing."""
    files = dict(extra_files or {})
    if prompt_format is not None:
        files[PROMPT_FORMAT_FILE] = prompt_format.to_json()
        card = (card or "") + prompt_format.card_section()
    with atomic_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if card:
            (tmp / "README.md").write_text(card)
        for name, content in files.items():
            target = tmp / name
            target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)
    return Path(out)


def save_final(model, tokenizer, run_dir: Path, *, card: str, extra_files: dict[str, bytes | str] | None = None,
               prompt_format: TrainedPromptFormat | None = None) -> Path:
    """`run_dir/final`: the model (or PEFT adapter) + tokenizer + README `card` (+ `extra_files`, name ->
    content; + the `prompt_format` it was trained with), all or nothing. A full model whose use_cache was
    turned off for gradient checkpointing is saved with it on again, so the output generates with a KV cache."""
    config = getattr(model, "config", None)
    if not callable(getattr(model, "disable_adapter", None)) and getattr(config, "use_cache", None) is False:
        config.use_cache = True
    return save_pretrained_atomic(model, tokenizer, Path(run_dir) / "final", card=card, overwrite=True,
                                  extra_files=extra_files, prompt_format=prompt_format)
