"""polm's codes in compressed-tensors' pack-quantized layout: the library's own decompressor rebuilds
exactly polm's dequantized weights, and the config names the scheme."""

from __future__ import annotations

import pytest
import torch

from polm.compress.quantize import dequantize, quantize_rtn

pytest.importorskip("compressed_tensors")


def _decompress(state: dict, name: str, args: dict) -> torch.Tensor:
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**args))
    local = {k.removeprefix(name + "."): v for k, v in state.items() if k.startswith(name + ".")}
    return BaseCompressor.get_value_from_registry("pack-quantized").decompress(local, scheme)["weight"]


@pytest.mark.parametrize("bits,group_size", [(4, 16), (4, -1), (8, -1), (8, 32)])
def test_the_library_unpacks_polm_codes_to_polm_weights(bits, group_size):
    from polm.compress.compressed_tensors_format import compressed_state_dict, weight_args

    layer = torch.nn.Linear(64, 24, bias=False)
    torch.nn.init.normal_(layer.weight, generator=torch.Generator().manual_seed(0))
    qw = quantize_rtn(layer.weight, bits, None if group_size == -1 else group_size)
    state = compressed_state_dict(torch.nn.Sequential(layer), {"0": qw})
    assert sorted(state) == ["0.weight_packed", "0.weight_scale", "0.weight_shape"]
    assert state["0.weight_packed"].dtype == torch.int32
    assert state["0.weight_packed"].shape == (24, 64 * bits // 32)     # 32/b codes per int32 word
    assert state["0.weight_shape"].tolist() == [24, 64]
    assert torch.equal(state["0.weight_scale"], qw.scale)             # [out, groups]: [24, 4] or [24, 1]
    assert torch.equal(_decompress(state, "0", weight_args(bits, group_size, True)), dequantize(qw))


def test_a_hand_checked_int4_row():
    """Row w = [-7, ..., 7, 0]·0.5 with one group of 16: scale = 3.5/7 = 0.5, codes = 2w = [-7..7, 0]."""
    from polm.compress.compressed_tensors_format import compressed_state_dict, weight_args

    layer = torch.nn.Linear(16, 1, bias=False)
    layer.weight.data = (torch.cat([torch.arange(-7.0, 8.0), torch.zeros(1)]) * 0.5)[None]
    qw = quantize_rtn(layer.weight, 4, 16)
    assert qw.scale.item() == 0.5 and qw.q.tolist() == [list(range(-7, 8)) + [0]]
    state = compressed_state_dict(torch.nn.Sequential(layer), {"0": qw})
    assert torch.equal(_decompress(state, "0", weight_args(4, 16, True)), layer.weight.data)


def test_tied_tensors_are_stored_once_and_other_tensors_as_they_are():
    from polm.compress.compressed_tensors_format import compressed_state_dict

    embed, head, proj = torch.nn.Embedding(10, 32), torch.nn.Linear(32, 10, bias=False), torch.nn.Linear(32, 32)
    head.weight = embed.weight
    model = torch.nn.ModuleDict({"embed": embed, "proj": proj, "head": head})
    state = compressed_state_dict(model, {"proj": quantize_rtn(proj.weight, 8, 16)})
    assert sorted(state) == ["embed.weight", "proj.bias", "proj.weight_packed", "proj.weight_scale", "proj.weight_shape"]
    assert torch.equal(state["proj.bias"], proj.bias)


def test_quantization_config_names_the_scheme():
    from polm.compress.compressed_tensors_format import quantization_config

    config = quantization_config(4, 64, True, ["lm_head"])
    assert (config["quant_method"], config["format"], config["quantization_status"]) == (
        "compressed-tensors", "pack-quantized", "compressed")
    assert config["ignore"] == ["lm_head"]
    group = config["config_groups"]["group_0"]
    assert group["targets"] == ["Linear"] and group["input_activations"] is None
    weights = group["weights"]
    assert (weights["num_bits"], weights["type"], weights["symmetric"], weights["strategy"], weights["group_size"]) == (
        4, "int", True, "group", 64)
    assert quantization_config(8, -1, True, [])["config_groups"]["group_0"]["weights"]["strategy"] == "channel"
