"""The merged model's model card (README.md), `lineage.json` (hashes of every input) and resolved config."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import yaml

from polm.config import to_dict
from polm.io import atomic_write_json, file_sha256
from polm.merge.plan import Input, MergePlan


def _settings_text(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in settings.items()) or "defaults"


def model_card(plan: MergePlan) -> str:
    """Hugging Face model card: front matter, method and paper, ingredients table, config to rerun."""
    cfg, spec = plan.cfg, plan.spec
    front = {"library_name": "peft" if cfg.output_format == "adapter" else "transformers",
             "tags": ["polm", "merge", spec.name]}
    if cfg.base:
        front["base_model"] = cfg.base
    rows = [("base", cfg.base, _kind(plan.base), "—")] if plan.base else []
    rows += [(inp.label.split(" ")[0], inp.ref, _kind(inp), _settings_text(inp.parameters)) for inp in plan.inputs]
    table = "\n".join(f"| {role} | `{ref}` | {kind} | {params} |" for role, ref, kind, params in rows)
    defaults = {**spec.per_input, **spec.shared}
    return (f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\n# Merged model\n\n"
            f"Made with `polm merge` using **{spec.name}**" + (f" ({spec.paper})" if spec.paper else "") + ".\n\n"
            f"## Ingredients\n\n| role | model | kind | parameters |\n|---|---|---|---|\n{table}\n\n"
            f"## Parameters\n\nShared / default settings: {_settings_text(cfg.shared_settings())}.\n"
            f"Method defaults: {_settings_text(defaults)}. Output dtype: {cfg.dtype}; seed: {cfg.seed}.\n\n"
            f"## Reproduce\n\n```yaml\n{yaml.safe_dump(to_dict(cfg), sort_keys=False)}```\n\n"
            "Save the block above as `merge.yaml` and run `polm merge merge.yaml`. `lineage.json` holds the "
            "sha256 of every input file and output shard.\n")


def _kind(inp: Input) -> str:
    return "LoRA adapter, folded into the base" if inp.kind == "adapter" else "full model"


def _input_record(inp: Input, hashes: dict[Path, str]) -> dict[str, Any]:
    files = list(getattr(inp.source, "files", []))
    if inp.kind == "adapter":
        files = [*getattr(inp.source.base, "files", []), inp.source.file]
    for f in files:
        hashes.setdefault(f, file_sha256(f))
    return {"ref": inp.ref, "path": str(inp.path), "kind": inp.kind, "parameters": inp.parameters,
            "sha256": {str(f): hashes[f] for f in files}}


def write_lineage(plan: MergePlan, out: Path, weight_files: list[Path]) -> None:
    """lineage.json: config (and its hash), each input's files with sha256, each output shard's sha256."""
    hashes: dict[Path, str] = {}
    config = to_dict(plan.cfg)
    record = {
        "tool": "polm merge",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "method": plan.spec.name,
        "config": config,
        "config_sha256": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest(),
        "base": _input_record(plan.base, hashes) if plan.base else None,
        "models": [_input_record(inp, hashes) for inp in plan.inputs],
        "output": {f.name: file_sha256(f) for f in weight_files},
    }
    atomic_write_json(out / "lineage.json", record)
    (out / "merge_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
