"""Merge a LoRA/DoRA adapter into its base and write a standalone model: `polm export`.

    polm export --model runs/sft/final --out runs/sft/merged
    polm export --model runs/sft/final --out runs/sft/model.gguf --format gguf --quant q8_0

`--format gguf` writes one llama.cpp GGUF file instead (adapters merged first; polm.compress.gguf).
The default output is an ordinary Hugging Face directory (safetensors, config, tokenizer, model card)
that loads with `AutoModelForCausalLM.from_pretrained` and needs neither peft nor polm. It keeps the
prompt format the adapter records (`polm_prompt.json`). It is written to a temporary directory beside
the target and renamed into place, so a failed export leaves nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from polm.compress.gguf import QUANTS as GGUF_QUANTS
from polm.data.templating import TrainedPromptFormat
from polm.errors import PolmError
from polm.models import ModelConfig, load_model, load_tokenizer
from polm.models.load import adapter_base
from polm.models.peft import merge_adapter
from polm.models.save import save_pretrained_atomic


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="adapter directory (e.g. runs/sft/final)")
    parser.add_argument("--out", required=True, help="directory to write the merged model to")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="dtype of the written weights (auto: as loaded)")
    parser.add_argument("--format", default="hf", choices=["hf", "gguf"],
                        help="hf: a Hugging Face directory; gguf: one GGUF file for llama.cpp (--out is the file)")
    parser.add_argument("--quant", default="f16", choices=GGUF_QUANTS,
                        help="GGUF tensor type of the weight matrices (--format gguf)")
    parser.add_argument("--overwrite", action="store_true")


def export_merged(model_ref: str, out: Path, dtype: str = "auto", overwrite: bool = False) -> Path:
    from polm.models.load import resolve_path

    path = resolve_path(model_ref)
    base = adapter_base(path)
    if base is None:
        raise PolmError(f"'{model_ref}' is not an adapter directory (no adapter_config.json)",
                        fix="A full model needs no export; point --model at an adapter such as runs/sft/final.")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise PolmError(f"output directory '{out}' exists and is not empty", fix="Pass --overwrite or another --out.")
    model = merge_adapter(load_model(ModelConfig(name=model_ref, device="cpu", dtype=dtype)))
    tokenizer = load_tokenizer(model_ref)
    card = (f"# Merged model\n\nWritten by `polm export`: the adapter `{model_ref}` folded into its base "
            f"`{base}`.\nLoad with `transformers.AutoModelForCausalLM.from_pretrained`.\n")
    save_pretrained_atomic(model, tokenizer, out, card=card, overwrite=overwrite,
                           prompt_format=TrainedPromptFormat.read(path))
    return out


def run(args: argparse.Namespace) -> int:
    if args.format == "gguf":
        from polm.compress.gguf import export_gguf

        out = export_gguf(args.model, Path(args.out), args.quant, args.overwrite)
        print(f"wrote {args.quant} GGUF to {out}")
        return 0
    out = export_merged(args.model, Path(args.out), args.dtype, args.overwrite)
    print(f"wrote merged model to {out}")
    return 0


