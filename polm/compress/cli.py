"""`polm quantize CONFIG [key=value ...]`: weight-only quantization (RTN, GPTQ or torchao) of a model.

    polm quantize configs/quantize_int4.yaml
    polm quantize configs/quantize_gptq.yaml calibration.n_samples=32 output=runs/quantize/gptq-small

The output is a Hugging Face directory that `AutoModelForCausalLM.from_pretrained` loads as an ordinary
model: the dequantized weights in model.safetensors, plus quantized.safetensors (the int8 / packed int4
codes, scales and zeros), quantization.json and a model card stating the scheme. With
`format: compressed-tensors` model.safetensors holds the packed codes instead (`pack-quantized`, which
transformers and vLLM load as a quantized model). Written atomically.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch

from polm.compress.calibration import CalibrationConfig, calibration_batches
from polm.config import add_config_arguments, config_from_args
from polm.errors import PolmError


@dataclass
class GPTQOptions:
    block_size: int = 128           # columns per lazy batch update (does not change the result)
    percdamp: float = 0.01          # damping λ = percdamp · mean(diag H)
    act_order: bool = False         # quantize columns by decreasing diag(H)


@dataclass
class QuantizeConfig:
    model: str = "smollm2-135m-instruct"   # model directory, adapter directory (merged first), embedded name or hub id
    output: str = "runs/quantize"
    method: Literal["rtn", "gptq", "torchao"] = "rtn"
    bits: int = 4                   # 4 or 8
    group_size: int = 64            # columns sharing a scale (64 divides SmolLM2's 576 and 1536); -1: per channel
    symmetric: bool = True
    targets: list[str] | None = None        # Linear names ('q_proj', 'mlp.down_proj', ...); None: every Linear
    exclude: list[str] = field(default_factory=lambda: ["lm_head"])
    gptq: GPTQOptions = field(default_factory=GPTQOptions)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    format: Literal["polm", "compressed-tensors"] = "polm"   # compressed-tensors: packed codes in model.safetensors
    overwrite: bool = False

    def validate(self) -> None:
        if self.bits not in (4, 8):
            raise PolmError(f"bits must be 4 or 8, got {self.bits}", where="bits",
                            fix="Use bits: 8 (int8) or bits: 4 (int4).")
        if self.method == "torchao" and not self.symmetric:
            raise PolmError("torchao's weight-only configs are symmetric", where="symmetric", fix="Set symmetric: true.")
        if self.method == "torchao" and self.bits == 8 and self.group_size != -1:
            raise PolmError("torchao's int8 weight-only config is per-channel", where="group_size",
                            fix="Set group_size: -1, or bits: 4 for group-wise int4.")
        if self.format == "compressed-tensors":
            self._validate_compressed_tensors()

    def _validate_compressed_tensors(self) -> None:
        if self.method == "torchao":
            raise PolmError("method: torchao keeps no codes to pack", where="format",
                            fix="Use method: rtn or gptq with format: compressed-tensors.")
        if not self.symmetric:
            # transformers 5.24 builds the packed layout on the meta device, where compressed-tensors 0.20.1
            # leaves the zero points unpacked, so an asymmetric pack-quantized checkpoint fails to load.
            raise PolmError("asymmetric compressed-tensors checkpoints do not load with transformers "
                            "(its zero-point layout differs)", where="symmetric",
                            fix="Set symmetric: true, or format: polm for asymmetric codes.")
        if self.method == "gptq" and self.gptq.act_order:
            raise PolmError("act-order GPTQ permutes the groups, which compressed-tensors no longer stores",
                            where="gptq.act_order", fix="Set gptq.act_order: false, or format: polm.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "configs/quantize_int4.yaml")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(QuantizeConfig, args)
    out, layers = quantize_to_dir(cfg)
    print(f"quantized {layers} layers of {cfg.model} ({scheme(cfg)}) into {out}")
    return 0


def scheme(cfg: QuantizeConfig) -> str:
    groups = "per-channel" if cfg.group_size == -1 else f"group size {cfg.group_size}"
    return f"{cfg.method} int{cfg.bits} {'symmetric' if cfg.symmetric else 'asymmetric'} {groups}"


def quantize_to_dir(cfg: QuantizeConfig):
    """Load, quantize and write `cfg.output`; returns (output path, number of quantized layers)."""
    from pathlib import Path

    from polm.compress.quantize import check_scheme, select_linears
    from polm.errors import require
    from polm.models import ModelConfig, load_model, load_tokenizer
    from polm.models.peft import merge_adapter
    from polm.models.save import save_pretrained_atomic

    cfg.validate()
    if cfg.method == "torchao":
        from polm.compress.quantize import check_torchao

        check_torchao(require("torchao", "compress", "method: torchao"))
    if cfg.format == "compressed-tensors":
        require("compressed_tensors", "compress", "format: compressed-tensors")
    model = merge_adapter(load_model(ModelConfig(name=cfg.model, device="cpu", dtype="fp32"))).eval()
    tokenizer = load_tokenizer(cfg.model)
    linears = select_linears(model, cfg.targets, cfg.exclude)
    if not linears:
        raise PolmError("no Linear layer is left to quantize", where="targets", fix="Check targets and exclude.")
    for name, module in linears.items():
        try:
            check_scheme(module.in_features, cfg.bits, cfg.group_size, where="")
        except PolmError as err:
            raise PolmError(f"{err.what} (layer '{name}')", where="group_size", fix=err.fix) from None
    codes = _quantize(model, tokenizer, linears, cfg)
    files = {"quantization.json": json.dumps(_manifest(cfg, linears), indent=2)}
    if cfg.format == "compressed-tensors":
        from polm.compress.compressed_tensors_format import checkpoint_files

        files.update(checkpoint_files(model, codes, cfg.bits, cfg.group_size, cfg.symmetric))
    elif codes:
        files["quantized.safetensors"] = _packed(codes)
    save_pretrained_atomic(model, tokenizer, Path(cfg.output), card=_card(cfg, len(linears), bool(codes)),
                           overwrite=cfg.overwrite, extra_files=files)
    return Path(cfg.output), len(linears)


def _quantize(model, tokenizer, linears, cfg: QuantizeConfig) -> dict:
    group = None if cfg.group_size == -1 else cfg.group_size
    if cfg.method == "rtn":
        from polm.compress.quantize import rtn_model

        return rtn_model(linears, cfg.bits, group, cfg.symmetric)
    if cfg.method == "gptq":
        from polm.compress.gptq import gptq_model

        cal = cfg.calibration
        batches = calibration_batches(cal.data, tokenizer, n_samples=cal.n_samples, seq_len=cal.seq_len,
                                      batch_size=cal.batch_size)
        return gptq_model(model, batches, linears, bits=cfg.bits, group_size=group, symmetric=cfg.symmetric,
                          block_size=cfg.gptq.block_size, percdamp=cfg.gptq.percdamp, act_order=cfg.gptq.act_order)
    from polm.compress.quantize import torchao_quantize

    wanted = set(linears)
    torchao_quantize(model, cfg.bits, group, filter_fn=lambda _m, name: name in wanted)
    for module in linears.values():   # written as plain dequantized weights, so transformers loads them
        module.weight = torch.nn.Parameter(module.weight.dequantize().float(), requires_grad=False)
    return {}


def _packed(codes: dict) -> bytes:
    from safetensors.torch import save

    from polm.compress.quantize import pack_int4

    tensors = {}
    for name, qw in codes.items():
        tensors[f"{name}.qweight"] = pack_int4(qw.q) if qw.bits == 4 else qw.q.contiguous()
        tensors[f"{name}.scales"] = qw.scale.contiguous()
        tensors[f"{name}.zeros"] = qw.zero.contiguous()
        if qw.g_idx is not None:
            tensors[f"{name}.g_idx"] = qw.g_idx.contiguous()
    return save(tensors)


def _manifest(cfg: QuantizeConfig, linears: dict) -> dict:
    return {"method": cfg.method, "format": cfg.format, "bits": cfg.bits, "group_size": cfg.group_size, "symmetric": cfg.symmetric,
            "dequantize": "w[i, j] = (q[i, j] - zeros[i, g(j)]) * scales[i, g(j)], g(j) = g_idx[j] or j // group_size",
            "int4_packing": "uint8, two codes per byte, low nibble first, stored as code + 8"
            if cfg.format == "polm" else "compressed-tensors pack-quantized (config.json quantization_config)",
            "layers": sorted(linears), "gptq": asdict(cfg.gptq) if cfg.method == "gptq" else None,
            "calibration": asdict(cfg.calibration) if cfg.method == "gptq" else None}


def _card(cfg: QuantizeConfig, layers: int, has_codes: bool) -> str:
    if cfg.format == "compressed-tensors":
        return _ct_card(cfg, layers)
    codes = ("`quantized.safetensors` holds the codes (`<layer>.qweight`, `.scales`, `.zeros`); "
             "`quantization.json` says how to read them.\n" if has_codes else
             "torchao's quantized tensors are not stored; requantize with `polm quantize` to get them.\n")
    return (f"# Quantized model\n\nWritten by `polm quantize`: `{cfg.model}` with {layers} Linear layers quantized "
            f"weight-only, {scheme(cfg)} (excluded: {', '.join(cfg.exclude) or 'none'}).\n\n"
            "`model.safetensors` holds the dequantized weights, so "
            "`transformers.AutoModelForCausalLM.from_pretrained` loads it as an ordinary model that computes "
            "exactly what the quantized one does (no memory saving at inference).\n" + codes)


def _ct_card(cfg: QuantizeConfig, layers: int) -> str:
    groups = "channel strategy" if cfg.group_size == -1 else f"group strategy, group_size {cfg.group_size}"
    return (f"# Quantized model (compressed-tensors)\n\nWritten by `polm quantize`: `{cfg.model}` with {layers} "
            f"Linear layers quantized weight-only, {scheme(cfg)} (excluded: {', '.join(cfg.exclude) or 'none'}).\n\n"
            f"Scheme: compressed-tensors `pack-quantized`, int{cfg.bits} symmetric weights ({groups}), "
            f"activations unquantized (W{cfg.bits}A16). `model.safetensors` holds per layer `weight_packed` "
            "(int32, codes packed along the input dimension), `weight_scale` and `weight_shape`; "
            "`config.json`'s `quantization_config` (quant_method `compressed-tensors`) describes it, so "
            "`transformers.AutoModelForCausalLM.from_pretrained` (with the `compressed-tensors` package) and vLLM "
            "load it as a quantized model.\n")
