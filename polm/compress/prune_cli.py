"""`polm prune CONFIG [key=value ...]`: prune a causal LM and write it as a Hugging Face model directory.

    polm prune configs/prune_wanda_50.yaml model.name=runs/sft/final output=runs/prune/wanda50
    polm prune configs/prune_sparsegpt_24.yaml        # 2:4 semi-structured, SparseGPT
    polm prune configs/prune_depth.yaml depth.layers=4  # ShortGPT: drop the 4 lowest Block-Influence layers

Unstructured / N:M methods (magnitude, wanda, sparsegpt) keep the architecture and write `masks.safetensors`
(for `polm.compress.prune.keep_masked` during fine-tuning); `depth` and `width` write a smaller dense model.
Every output also holds `sparsity.json` (per layer) and a model card; it is written all or nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from polm.compress.calibration import CalibrationConfig, calibration_batches
from polm.compress.prune import PRUNE_METHODS, Sparsity, parse_pattern, sparsity_of
from polm.config import add_config_arguments, config_from_args, to_dict
from polm.errors import PolmError
from polm.models.load import ModelConfig
from polm.registry import check_options

STRUCTURED = ("depth", "width")


@dataclass
class DepthConfig:
    layers: int = 0            # drop this many lowest-BI decoder layers ...
    fraction: float = 0.0      # ... or this fraction of them (rounded)


@dataclass
class WidthConfig:
    mlp_fraction: float = 0.0    # fraction of MLP neurons removed in every layer
    head_fraction: float = 0.0   # fraction of query heads removed in every KV group (K/V heads all kept)


@dataclass
class PruneConfig:
    model: ModelConfig = field(default_factory=lambda: ModelConfig(dtype="fp32"))
    method: str = "wanda"              # magnitude | wanda | sparsegpt | pkg.mod:fn | depth | width
    sparsity: float = 0.5              # unstructured: fraction of each group's weights set to zero
    pattern: str = "unstructured"      # unstructured | N:M, e.g. 2:4 or 4:8 (N kept of every M inputs)
    scope: str = "row"                 # unstructured comparison group: row (per output) | layer
    options: dict[str, Any] = field(default_factory=dict)   # method parameters, e.g. sparsegpt block_size, damp
    depth: DepthConfig = field(default_factory=DepthConfig)
    width: WidthConfig = field(default_factory=WidthConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    output: str = "runs/prune"
    overwrite: bool = False
    seed: int = 0

    def validate(self) -> None:
        for key in ("n_samples", "seq_len", "batch_size"):
            if getattr(self.calibration, key) < 1:
                raise PolmError(f"calibration.{key} must be at least 1", where=f"calibration.{key}")
        if self.method in STRUCTURED:
            return
        self.sparsity_spec()
        try:
            fn = PRUNE_METHODS.get(self.method)
        except PolmError as err:
            raise PolmError(err.what, where="method", fix=f"{err.fix} Structured: {', '.join(STRUCTURED)}.") from None
        check_options(fn, self.options, where="options", skip=3, owner=f"pruning method '{self.method}'")

    def sparsity_spec(self) -> Sparsity:
        return parse_pattern(self.pattern, self.sparsity, self.scope)

    def needs_data(self) -> bool:
        return self.method in STRUCTURED or PRUNE_METHODS.meta(self.method)["needs"] is not None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "configs/prune_wanda_50.yaml")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(PruneConfig, args)
    out = prune(cfg)
    report = json.loads((out / "sparsity.json").read_text())
    print(format_table(report))
    print(f"pruned with {cfg.method}: model written to {out}")
    return 0


def prune(cfg: PruneConfig) -> Path:
    """Load, check, calibrate, prune and write `cfg.output`; nothing is written unless every step succeeds."""
    from polm.compress.prune_layers import check_model, prune_layerwise
    from polm.models.load import adapter_base, load_model, load_tokenizer, resolve_path

    torch.manual_seed(cfg.seed)
    if adapter_base(resolve_path(cfg.model.name)) is not None:
        raise PolmError(f"'{cfg.model.name}' is a PEFT adapter; pruning needs a full model", where="model.name",
                        fix="Merge it into its base first: polm export.")
    model, tokenizer = load_model(cfg.model).eval(), load_tokenizer(cfg.model.name)
    before = _layer_report(model)
    if cfg.method not in STRUCTURED:
        check_model(model, cfg.sparsity_spec())
    plan = _structured_plan(cfg, model) if cfg.method in STRUCTURED else {}
    batches = None
    if cfg.needs_data():
        c = cfg.calibration
        batches = calibration_batches(c.data, tokenizer, n_samples=c.n_samples, seq_len=c.seq_len,
                                      batch_size=c.batch_size)
    masks = None
    if cfg.method in STRUCTURED:
        model, details = _prune_structured(cfg, model, batches, plan)
    else:
        masks = prune_layerwise(model, batches, cfg.method, cfg.sparsity_spec(), cfg.options,
                                _progress if sys.stderr.isatty() else None)
        details = {}
    report = {"method": cfg.method, "target": _target(cfg), **details,
              "parameters": {"before": _count(before), "after": _count(_layer_report(model))},
              "layers": _layer_report(model)}
    report["overall"] = _overall(report["layers"])
    return _write(cfg, model, tokenizer, masks, report)


def _target(cfg: PruneConfig) -> Any:
    return None if cfg.method in STRUCTURED else cfg.sparsity_spec().target


def _structured_plan(cfg: PruneConfig, model: torch.nn.Module) -> dict[str, Any]:
    """Counts to keep or drop, checked against the model before any data is read."""
    from polm.compress.prune_layers import decoder_layers
    from polm.compress.prune_structured import drop_count, llama_head_dim, width_keep_counts

    if cfg.method == "depth":
        return {"drop": drop_count(len(decoder_layers(model)[1]), cfg.depth.layers, cfg.depth.fraction)}
    llama_head_dim(model)
    mlp_keep, heads_keep = width_keep_counts(model.config, cfg.width.mlp_fraction, cfg.width.head_fraction)
    return {"mlp_keep": mlp_keep, "heads_per_group": heads_keep}


def _prune_structured(cfg: PruneConfig, model: torch.nn.Module, batches: list[torch.Tensor],
                      plan: dict[str, Any]) -> tuple[torch.nn.Module, dict[str, Any]]:
    from polm.compress import prune_structured as ps

    if cfg.method == "depth":
        bi = ps.layer_block_influence(model, batches)
        drop = ps.layers_to_drop(bi, plan["drop"])
        return ps.drop_layers(model, drop), {"block_influence": bi, "dropped_layers": drop}
    mlp, heads = ps.width_importance(model, batches)
    small = ps.prune_width(model, mlp, heads, plan["mlp_keep"], plan["heads_per_group"])
    return small, {"intermediate_size": plan["mlp_keep"], "num_attention_heads": small.config.num_attention_heads,
                   "query_heads_kept_per_kv_group": plan["heads_per_group"]}


def _layer_report(model: torch.nn.Module) -> dict[str, dict[str, Any]]:
    """Per decoder-layer linear weight: shape, zeros, sparsity."""
    from polm.compress.prune_layers import iter_layer_linears

    rows = {}
    for name, linear in iter_layer_linears(model):
        w = linear.weight
        rows[f"{name}.weight"] = {"shape": list(w.shape), "numel": w.numel(), "zeros": int((w == 0).sum()),
                                  "sparsity": round(sparsity_of(w), 6)}
    return rows


def _count(rows: dict[str, dict[str, Any]]) -> int:
    return sum(r["numel"] for r in rows.values())


def _overall(rows: dict[str, dict[str, Any]]) -> float:
    return round(sum(r["zeros"] for r in rows.values()) / max(_count(rows), 1), 6)


def format_table(report: dict[str, Any]) -> str:
    """The sparsity report as a plain-text table: one line per pruned weight, then the total."""
    width = max(len(n) for n in report["layers"])
    lines = [f"{'weight':<{width}}  {'shape':>12}  {'sparsity':>8}"]
    for name, row in report["layers"].items():
        lines.append(f"{name:<{width}}  {'x'.join(map(str, row['shape'])):>12}  {row['sparsity']:>8.4f}")
    lines.append(f"{'overall':<{width}}  {'':>12}  {report['overall']:>8.4f}")
    if "dropped_layers" in report:
        lines.append(f"dropped layers: {report['dropped_layers']} (block influence "
                     f"{', '.join(f'{b:.4f}' for b in report['block_influence'])})")
    return "\n".join(lines)


def _write(cfg: PruneConfig, model: torch.nn.Module, tokenizer: Any, masks: dict[str, torch.Tensor] | None,
           report: dict[str, Any]) -> Path:
    from safetensors.torch import save

    from polm.models.save import save_pretrained_atomic

    extra: dict[str, bytes | str] = {"sparsity.json": json.dumps(report, indent=2),
                                     "prune_config.yaml": yaml.safe_dump(to_dict(cfg), sort_keys=False)}
    if masks is not None:
        extra["masks.safetensors"] = save({k: v.contiguous() for k, v in masks.items()})
    return save_pretrained_atomic(model, tokenizer, Path(cfg.output), card=model_card(cfg, report),
                                  overwrite=cfg.overwrite, extra_files=extra)


def model_card(cfg: PruneConfig, report: dict[str, Any]) -> str:
    """README.md: method and paper, sparsity reached, calibration data, the config to rerun."""
    paper = PRUNE_METHODS.meta(cfg.method)["paper"] if cfg.method not in STRUCTURED else {
        "depth": "Men et al. 2024, ShortGPT (arXiv:2403.03853)",
        "width": "Muralidharan et al. 2024, Compact Language Models via Pruning and Knowledge Distillation "
                 "(arXiv:2407.14679)"}[cfg.method]
    front = {"library_name": "transformers", "tags": ["polm", "pruning", cfg.method]}
    calib = (f"`{cfg.calibration.data}`: {cfg.calibration.n_samples} windows of {cfg.calibration.seq_len} tokens"
             if cfg.needs_data() else "none (magnitude needs no data)")
    what = (f"pattern {cfg.pattern}, target sparsity {report['target']:.4f} ({cfg.scope})"
            if cfg.method not in STRUCTURED else f"structured ({cfg.method})")
    return (f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\n# Pruned model\n\n"
            f"Made with `polm prune` from `{cfg.model.name}` using **{cfg.method}** ({paper}).\n\n"
            f"- what: {what}\n- sparsity of the decoder-layer linear weights: {report['overall']:.4f}\n"
            f"- parameters in those weights: {report['parameters']['before']} -> {report['parameters']['after']}\n"
            f"- calibration data: {calib}\n\n"
            "`sparsity.json` gives every layer; `masks.safetensors` (unstructured / N:M) holds the keep-masks "
            "for `polm.compress.prune.keep_masked` when fine-tuning.\n\n"
            f"## Reproduce\n\n```yaml\n{yaml.safe_dump(to_dict(cfg), sort_keys=False)}```\n")


def _progress(done: int, total: int) -> None:
    end = "\n" if done == total else ""
    print(f"\rpruning layers: {done}/{total}", end=end, file=sys.stderr, flush=True)
