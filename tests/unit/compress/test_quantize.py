"""RTN quantization: hand-computed scales, zeros and codes; the scale/2 error bound; packing; bad input."""

from __future__ import annotations

import pytest
import torch

from polm.compress.quantize import (
    QUANTIZERS,
    dequantize,
    pack_int4,
    quantize_rtn,
    rtn_model,
    select_linears,
    torchao_quantize,
    unpack_int4,
)
from polm.errors import PolmError


def test_int8_symmetric_per_channel_by_hand():
    w = torch.tensor([[1.0, -3.0, 0.5, 4.0], [0.1, 0.2, -0.3, 0.0]])
    qw = quantize_rtn(w, bits=8, group_size=None, symmetric=True)
    # scale = max|w| / 127; code = round(w / scale): 1·127/4 = 31.75 -> 32, -3·127/4 = -95.25 -> -95, ...
    torch.testing.assert_close(qw.scale, torch.tensor([[4 / 127], [0.3 / 127]]))
    assert qw.q.tolist() == [[32, -95, 16, 127], [42, 85, -127, 0]]
    assert qw.zero.tolist() == [[0], [0]] and qw.q.dtype == torch.int8 and qw.group_size == 4


def test_int4_asymmetric_groups_use_the_whole_range_on_all_positive_rows():
    w = torch.tensor([[2.0, 3.0, 1.0, 5.0], [-1.0, 2.0, 0.0, 0.0]])
    qw = quantize_rtn(w, bits=4, group_size=2, symmetric=False)
    # range holds 0: [2,3] -> [0,3], scale 3/15, zero = -8 - round(0) = -8, codes round(w/scale) - 8
    # [1,5] -> scale 5/15, codes [3-8, 15-8]; [-1,2] -> scale 3/15, zero = -8 - round(-5) = -3
    torch.testing.assert_close(qw.scale, torch.tensor([[0.2, 1 / 3], [0.2, 1.0]]))
    assert qw.zero.tolist() == [[-8, -8], [-3, -8]]
    assert qw.q.tolist() == [[2, 7, -5, 7], [-8, 7, -8, -8]]
    torch.testing.assert_close(dequantize(qw), w)


@pytest.mark.parametrize("bits,group_size", [(8, None), (8, 16), (4, 8), (4, None)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_round_trip_error_is_at_most_half_a_scale(bits, group_size, symmetric):
    torch.manual_seed(0)
    w = torch.randn(12, 32) * 3
    w[0] = w[0].abs() + 1.0   # an all-positive row
    qw = quantize_rtn(w, bits, group_size, symmetric)
    scale = qw.scale[:, qw.group_index()]
    assert ((w - dequantize(qw)).abs() <= scale / 2 + 1e-6).all()
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    assert qw.q.min() >= lo and qw.q.max() <= hi


def test_int4_packing_round_trips():
    q = torch.arange(-8, 8, dtype=torch.int8).repeat(3, 2)
    packed = pack_int4(q)
    assert packed.shape == (3, 16) and packed.dtype == torch.uint8
    assert packed[0, 0].item() == (0 | (1 << 4))   # codes -8, -7 stored as nibbles 0, 1
    assert torch.equal(unpack_int4(packed), q)


def test_bad_bits_and_group_size_are_clear_errors():
    with pytest.raises(PolmError, match="bits must be 4 or 8, got 3"):
        quantize_rtn(torch.ones(2, 8), bits=3)
    with pytest.raises(PolmError, match="group size 5 does not divide in_features 8"):
        quantize_rtn(torch.ones(2, 8), bits=4, group_size=5)


def test_registered_by_name():
    assert QUANTIZERS.get("rtn") is quantize_rtn
    assert QUANTIZERS.meta("rtn") == {"needs_hessian": False}


def test_select_linears_and_rtn_model(tiny_llama):
    linears = select_linears(tiny_llama)
    assert len(linears) == 14 and "lm_head" not in linears
    assert list(select_linears(tiny_llama, ["q_proj"])) == [f"model.layers.{i}.self_attn.q_proj" for i in (0, 1)]
    with pytest.raises(PolmError, match="'embed_tokens' names a Embedding"):
        select_linears(tiny_llama, ["embed_tokens"])
    with pytest.raises(PolmError, match="no module is named 'qproj'"):
        select_linears(tiny_llama, ["qproj"])
    weight = linears["model.layers.0.mlp.up_proj"].weight.detach().clone()
    codes = rtn_model(linears, bits=4, group_size=16)
    torch.testing.assert_close(linears["model.layers.0.mlp.up_proj"].weight,
                               dequantize(quantize_rtn(weight, 4, 16)))
    assert set(codes) == set(linears)


def test_torchao_int8_matches_polm_int8_per_channel(tiny_llama):
    pytest.importorskip("torchao")
    x = torch.randint(0, 100, (1, 12))
    reference = {n: m.weight.detach().clone() for n, m in select_linears(tiny_llama).items()}
    polm_codes = {n: quantize_rtn(w, 8) for n, w in reference.items()}
    torchao_quantize(tiny_llama, bits=8, filter_fn=lambda m, name: name in reference)
    for name, module in select_linears(tiny_llama).items():
        # both are symmetric per-channel int8: weights agree to within one step of either scale
        step = polm_codes[name].scale
        assert ((module.weight.dequantize() - reference[name]).abs() <= step).all()
    with torch.no_grad():
        assert torch.isfinite(tiny_llama(x).logits).all()


def test_torchao_missing_is_a_clear_error(monkeypatch, tiny_llama):
    import sys

    monkeypatch.setitem(sys.modules, "torchao", None)   # import torchao now raises ImportError
    with pytest.raises(PolmError, match=r"needs the optional package 'torchao'.*polm\[compress\]"):
        torchao_quantize(tiny_llama)
