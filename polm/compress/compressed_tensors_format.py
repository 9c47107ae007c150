"""polm's quantized codes in the compressed-tensors `pack-quantized` safetensors format, which
transformers (`AutoModelForCausalLM.from_pretrained`) and vLLM load as a quantized model.

Per quantized Linear `<name>`: `weight_packed` (int32, 32/b codes per word along the input dim),
`weight_scale` [out, groups], `weight_shape` and, asymmetric only, `weight_zero_point` (packed along
the output dim); config.json gets `quantization_config` with quant_method "compressed-tensors".
"""

from __future__ import annotations

import json

import torch

from polm.compress.quantize import QuantizedWeight
from polm.errors import require

CT_VERSION = "0.20.1"     # the pin in pyproject's `compress` extra
FORMAT = "pack-quantized"


def weight_args(bits: int, group_size: int, symmetric: bool) -> dict:
    """The compressed-tensors QuantizationArgs of polm's scheme: group_size -1 is its 'channel' strategy."""
    strategy = {"strategy": "channel"} if group_size == -1 else {"strategy": "group", "group_size": group_size}
    return {"num_bits": bits, "type": "int", "symmetric": symmetric, "dynamic": False, "observer": "minmax",
            **strategy}


def quantization_config(bits: int, group_size: int, symmetric: bool, ignore: list[str]) -> dict:
    """config.json's `quantization_config`: every Linear not in `ignore` is `pack-quantized`, weights only.
    Built through compressed-tensors' own QuantizationConfig, so an invalid scheme fails here."""
    require("compressed_tensors", "compress", "the compressed-tensors format")
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**weight_args(bits, group_size, symmetric)))
    config = QuantizationConfig(config_groups={"group_0": scheme}, format=FORMAT, quantization_status="compressed",
                                ignore=sorted(ignore))
    return config.model_dump(mode="json")


def compressed_state_dict(model: torch.nn.Module, codes: dict[str, QuantizedWeight]) -> dict[str, torch.Tensor]:
    """`model`'s state dict with each quantized `<name>.weight` replaced by its packed codes.

    The codes are packed as they are (no re-rounding), so loading dequantizes to exactly
    w = (q - zero) · scale, polm's dequantized weight. Tied tensors are stored once (the first name).
    """
    require("compressed_tensors", "compress", "the compressed-tensors format")
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    dtype = next(model.parameters()).dtype
    state, seen = {}, set()
    for key, tensor in model.state_dict().items():
        name = key.removesuffix(".weight")
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        if key.endswith(".weight") and name in codes:
            state.update(_packed_layer(name, codes[name], dtype, pack_to_int32))
        else:
            state[key] = tensor.contiguous()
    return state


def _packed_layer(name: str, qw: QuantizedWeight, dtype: torch.dtype, pack) -> dict[str, torch.Tensor]:
    out = {f"{name}.weight_packed": pack(qw.q, qw.bits).contiguous(),
           f"{name}.weight_scale": qw.scale.to(dtype).contiguous(),
           f"{name}.weight_shape": torch.tensor(list(qw.q.shape))}
    if not qw.symmetric:
        out[f"{name}.weight_zero_point"] = pack(qw.zero, qw.bits, packed_dim=0).contiguous()
    return out


def checkpoint_files(model: torch.nn.Module, codes: dict[str, QuantizedWeight], bits: int, group_size: int,
                     symmetric: bool) -> dict[str, bytes | str]:
    """{"model.safetensors": packed state dict, "config.json": the model's config + `quantization_config`}, to
    write over the dense files `save_pretrained` leaves; every Linear without codes goes to `ignore`."""
    from safetensors.torch import save

    ignore = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in codes]
    config = model.config.to_dict()
    config["quantization_config"] = quantization_config(bits, group_size, symmetric, ignore)
    return {"model.safetensors": save(compressed_state_dict(model, codes), metadata={"format": "pt"}),
            "config.json": json.dumps(config, indent=2, sort_keys=True) + "\n"}
