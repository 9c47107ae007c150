"""The streaming merge: plan and check everything, then merge and write one tensor at a time.

    plan = build_plan(cfg)        # open headers, run every check; nothing written yet
    out = execute(plan)           # temp dir beside the output, renamed into place at the end

Peak memory is a few copies of the largest tensor (its inputs, float32 work copies, the result):
inputs are read per tensor (polm.merge.sources) and results go straight into the shard file
(polm.merge.writer).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from polm.data.templating import PROMPT_FORMAT_FILE, TrainedPromptFormat
from polm.errors import PolmError
from polm.io import atomic_dir, atomic_write_json
from polm.merge.adapters import check_adapter_plan, write_adapter
from polm.merge.card import model_card, write_lineage
from polm.merge.checks import (
    TOKENIZER_FILES,
    check_architectures,
    check_tensors,
    check_vocabularies,
    has_tokenizer,
)
from polm.merge.config import MergeConfig
from polm.merge.methods import MERGE_METHODS
from polm.merge.params import layer_index
from polm.merge.plan import Input, MergePlan, tensor_parameters
from polm.merge.sources import AdapterApplied, Checkpoint, TensorMeta, read_json
from polm.merge.writer import ShardWriter, plan_shards, shard_names
from polm.models.load import DTYPES, adapter_base

# --- planning ------------------------------------------------------------------------------------

def locate(ref: str, label: str) -> Path:
    """A model reference as a local directory: a directory, an embedded name, or a downloaded hub id."""
    from polm.models.load import resolve_path

    path = Path(resolve_path(ref)).expanduser()
    if path.is_dir():
        return path
    if Path(ref).expanduser().exists():
        raise PolmError(f"'{ref}' is a file, not a model directory", where=label)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", ref) and not ref.startswith("."):
        return _download(ref, label)
    raise PolmError(f"model '{ref}' does not exist: it is not a local directory nor an embedded model", where=label,
                    fix="Check the path, or see `polm assets list` for embedded names.")


def _download(repo_id: str, label: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model",
                                                               "*.jinja"]))
    except Exception as err:  # offline, unknown repo, network: all mean "cannot get it"
        why = "the hub is offline (HF_HUB_OFFLINE=1)" if os.environ.get("HF_HUB_OFFLINE") == "1" else str(err)
        raise PolmError(f"model '{repo_id}' is not a local directory or embedded model, and {why}",
                        where=label, fix="Use a local directory or an embedded name (`polm assets list`).") from None


def open_input(ref: str, label: str, parameters: dict[str, Any], base: Input | None) -> Input:
    """A full model (its safetensors) or a LoRA adapter folded into the base's pretrained weights.

    Without a merge base an adapter goes onto the base it records. When the merge base is itself an
    adapter (e.g. SLERP between two fine-tunes), the others are folded into that adapter's own base,
    never stacked on top of it.
    """
    path = locate(ref, label)
    if not (path / "adapter_config.json").is_file():
        return Input(ref, label, path, "model", Checkpoint(path, label), parameters, path)
    if base is None:
        recorded = adapter_base(str(path))
        if not recorded:
            raise PolmError("this adapter does not record its base model", where=label,
                            fix="Set base: to the model it was trained on.")
        base = open_input(recorded, f"{label} (its base '{recorded}')", {}, None)
    pretrained = base.source.base if isinstance(base.source, AdapterApplied) else base.source
    return Input(ref, label, path, "adapter", AdapterApplied(pretrained, path, label), parameters, base.model_dir)


def build_plan(cfg: MergeConfig) -> MergePlan:
    """Open every input and run all checks; raises PolmError before anything is written."""
    output = Path(cfg.output).expanduser()
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not cfg.overwrite:
        raise PolmError(f"output '{output}' already exists", where="output",
                        fix="Choose another output, or set overwrite: true to replace it.")
    spec = cfg.spec()
    base = open_input(cfg.base, f"base '{cfg.base}'", {}, None) if cfg.base else None
    inputs = [open_input(ing.ref, f"{ing.key} '{ing.ref}'", ing.parameters, base) for ing in cfg.ingredients()]
    for inp in ([base] if base else []) + inputs:
        if _same_dir(inp.path, output):
            raise PolmError(f"the output '{output}' is one of the inputs", where="output", fix="Write elsewhere.")
    reference = base or inputs[0]
    others = [inp.source for inp in inputs if inp is not reference]
    check_architectures(reference.source, others)
    tokenizer_dir = _tokenizer_dir(cfg, base, inputs)
    check_vocabularies(_tokenizers(base, inputs))
    check_tensors(reference.source, others)
    out_dtype = DTYPES.get(cfg.dtype)
    tensors = [(name, TensorMeta(meta.shape, out_dtype if out_dtype and meta.dtype.is_floating_point else meta.dtype))
               for name, meta in reference.source.meta.items()]
    plan = MergePlan(cfg, spec, MERGE_METHODS.get(cfg.method), base, inputs, tensors,
                     _num_layers(reference), output, tokenizer_dir)
    if cfg.output_format == "adapter":
        check_adapter_plan(plan)
    return plan


def _same_dir(a: Path, b: Path) -> bool:
    return b.exists() and a.resolve() == b.resolve()


def _tokenizers(base: Input | None, inputs: list[Input]) -> list[tuple[str, Path]]:
    found = []
    for inp in ([base] if base else []) + inputs:
        for path in dict.fromkeys([inp.path, inp.model_dir]):
            if has_tokenizer(path):
                found.append((inp.label, path))
                break
    return found


def _tokenizer_dir(cfg: MergeConfig, base: Input | None, inputs: list[Input]) -> Path:
    if cfg.tokenizer:
        path = locate(cfg.tokenizer, "tokenizer")
        if not has_tokenizer(path):
            raise PolmError(f"'{path}' holds no tokenizer files", where="tokenizer")
        return path
    found = _tokenizers(base, inputs)
    if not found:
        raise PolmError("none of the inputs has a tokenizer", where="tokenizer",
                        fix="Set tokenizer: to a directory holding the base model's tokenizer.")
    return found[0][1]


def _num_layers(reference: Input) -> int:
    cfg = getattr(reference.source, "config", None) or {}
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(cfg.get(key), int):
            return cfg[key]
    indices = [i for i in map(layer_index, reference.source.meta) if i is not None]
    return max(indices) + 1 if indices else 1


# --- per-tensor parameters and merging -----------------------------------------------------------

def tensor_seed(seed: int, name: str) -> int:
    """A per-tensor seed from (seed, name): DARE masks do not depend on the order tensors are merged in."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") >> 1


def merge_one(plan: MergePlan, name: str, meta: TensorMeta) -> torch.Tensor:
    tensors = [inp.source.read(name) for inp in plan.inputs]
    base = plan.base.source.read(name) if plan.base is not None and plan.spec.uses_base else None
    if not tensors[0].is_floating_point():
        return _copy_identical(name, [t for t in [base, *tensors] if t is not None])
    kwargs = tensor_parameters(plan, name)
    if plan.spec.random:
        kwargs["generator"] = torch.Generator().manual_seed(tensor_seed(plan.cfg.seed, name))
    try:
        merged = plan.fn(base, tensors, **kwargs)
    except ValueError as err:
        raise PolmError(f"merging tensor '{name}' failed: {err}", where=f"method {plan.spec.name}") from None
    return merged.to(meta.dtype)


def _copy_identical(name: str, tensors: list[torch.Tensor]) -> torch.Tensor:
    """Integer buffers cannot be averaged: they must agree, and are copied."""
    if any(not torch.equal(t, tensors[0]) for t in tensors[1:]):
        raise PolmError(f"non-float tensor '{name}' differs between inputs and cannot be merged",
                        fix="Merge only checkpoints that share their integer buffers.")
    return tensors[0]


# --- writing -------------------------------------------------------------------------------------

def write_weights(plan: MergePlan, out: Path, progress: Callable[[int, int], None] | None = None) -> list[Path]:
    """Merge every tensor in order and stream it into its shard; returns the shard files."""
    shards = plan_shards(plan.tensors, plan.cfg.shard_bytes())
    files = [out / name for name in shard_names(len(shards))]
    done = 0
    for file, entries in zip(files, shards):
        with ShardWriter(file, entries) as writer:
            for name, meta in entries:
                writer.write(name, merge_one(plan, name, meta))
                done += 1
                if progress:
                    progress(done, len(plan.tensors))
    if len(files) > 1:
        weight_map = {name: file.name for file, entries in zip(files, shards) for name, _ in entries}
        total = sum(meta.nbytes for _, meta in plan.tensors)
        atomic_write_json(out / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
    return files


def write_model_files(plan: MergePlan, out: Path) -> None:
    """config.json (dtype updated) and generation config for a model; tokenizer files copied byte for byte."""
    for name in TOKENIZER_FILES:
        if (plan.tokenizer_dir / name).is_file():
            shutil.copyfile(plan.tokenizer_dir / name, out / name)
    if plan.cfg.output_format == "adapter":
        return  # a PEFT adapter directory: its base model's config is loaded from the base
    reference = plan.base or plan.inputs[0]
    if not (reference.model_dir / "config.json").is_file():
        raise PolmError("has no config.json, which the merged model needs", where=reference.label)
    config = read_json(reference.model_dir / "config.json", reference.label)
    if plan.cfg.dtype != "auto":
        name = str(DTYPES[plan.cfg.dtype]).removeprefix("torch.")
        config.update({key: name for key in ("dtype", "torch_dtype") if key in config or key == "dtype"})
    atomic_write_json(out / "config.json", config)
    if (reference.model_dir / "generation_config.json").is_file():
        shutil.copyfile(reference.model_dir / "generation_config.json", out / "generation_config.json")


def execute(plan: MergePlan, progress: Callable[[int, int], None] | None = None) -> Path:
    """Write the merged model directory atomically: weights, config, tokenizer, model card, lineage."""
    with atomic_dir(plan.output, overwrite=plan.cfg.overwrite) as tmp:
        if plan.cfg.output_format == "adapter":
            files = write_adapter(plan, tmp)
        else:
            files = write_weights(plan, tmp, progress)
        write_model_files(plan, tmp)
        fmt = inherited_prompt_format(plan)
        (tmp / "README.md").write_text(model_card(plan) + (fmt.card_section() if fmt else ""))
        if fmt is not None:
            (tmp / PROMPT_FORMAT_FILE).write_text(fmt.to_json())
        write_lineage(plan, tmp, files)
    return plan.output


def inherited_prompt_format(plan: MergePlan) -> TrainedPromptFormat | None:
    """The prompt format the merged model keeps: the first input's (in config order, then the base's)
    that records one in `polm_prompt.json`."""
    for inp in [*plan.inputs, *([plan.base] if plan.base else [])]:
        fmt = TrainedPromptFormat.read(inp.path)
        if fmt is not None:
            return fmt
    return None


def run_merge(cfg: MergeConfig, progress: Callable[[int, int], None] | None = None) -> Path:
    return execute(build_plan(cfg), progress)
