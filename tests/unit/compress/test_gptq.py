"""GPTQ: no worse than RTN on correlated inputs, exactly RTN on an identity Hessian, block-size
invariant; the Hessian by hand; layer-by-layer calibration on the quantized earlier blocks."""

from __future__ import annotations

import pytest
import torch

from polm.compress.gptq import HessianAccumulator, calibrate, gptq_model, gptq_quantize, stages
from polm.compress.quantize import QUANTIZERS, dequantize, quantize_rtn, select_linears


def correlated_layer(out_features=24, in_features=64, tokens=512, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(in_features, in_features, generator=g) / in_features ** 0.5
    x = (torch.randn(tokens, in_features, generator=g) @ mix + 0.3 * torch.randn(tokens, 1, generator=g))
    w = torch.randn(out_features, in_features, generator=g)
    return w.to(dtype), x.to(dtype), 2 * x.T @ x / tokens


def output_error(x, w, qw):
    return torch.linalg.norm(x @ w.T - x @ dequantize(qw, w.dtype).T).item()


def test_hessian_accumulates_two_sequences_by_hand():
    acc = HessianAccumulator(2)
    acc.add(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]))   # one sequence: XᵀX = I
    acc.add(torch.tensor([[[2.0, 0.0]]]))               # another: diag(4, 0)
    # H = 2/N Σ XᵀX with N = 2 sequences = diag(5, 1)
    torch.testing.assert_close(acc.hessian, torch.tensor([[5.0, 0.0], [0.0, 1.0]], dtype=torch.float64))
    assert acc.sequences == 2


@pytest.mark.parametrize("bits,group_size,act_order", [(4, 16, False), (4, 16, True), (8, None, False), (4, None, True)])
def test_gptq_output_error_is_at_most_rtns(bits, group_size, act_order):
    w, x, h = correlated_layer()
    gptq = output_error(x, w, gptq_quantize(w, h, bits, group_size, act_order=act_order))
    rtn = output_error(x, w, quantize_rtn(w, bits, group_size))
    assert gptq <= rtn
    if bits == 4:
        assert gptq < 0.8 * rtn   # on correlated inputs the error feedback helps a lot


@pytest.mark.parametrize("symmetric", [True, False])
def test_identity_hessian_gives_exactly_rtn(symmetric):
    # H = I: U = I / sqrt(1 + percdamp) is diagonal, so no error reaches another column and the
    # group scales come from the untouched weights, which is RTN.
    w, _, _ = correlated_layer()
    got = gptq_quantize(w, torch.eye(64), bits=4, group_size=16, symmetric=symmetric, block_size=8)
    want = quantize_rtn(w, 4, 16, symmetric)
    assert torch.equal(got.q, want.q) and torch.equal(got.zero, want.zero)
    assert torch.equal(got.scale, want.scale)


@pytest.mark.parametrize("act_order", [False, True])
def test_block_size_does_not_change_the_result(act_order):
    w, _, h = correlated_layer(dtype=torch.float64)
    results = [gptq_quantize(w, h, 4, 16, block_size=b, act_order=act_order) for b in (128, 16, 5)]
    for other in results[1:]:   # 5 makes groups straddle blocks; their scales see the pending update
        assert torch.equal(other.q, results[0].q)
        torch.testing.assert_close(other.scale, results[0].scale)


def test_act_order_groups_follow_the_permutation():
    w, _, h = correlated_layer()
    qw = gptq_quantize(w, h, 4, 16, act_order=True)
    order = torch.argsort(torch.diag(h), descending=True, stable=True)
    assert qw.g_idx[order].tolist() == [j // 16 for j in range(64)]


def test_dead_inputs_get_zero_weight():
    w, _, h = correlated_layer()
    h[3, :] = 0
    h[:, 3] = 0
    qw = gptq_quantize(w, h, 8, None)
    assert (dequantize(qw)[:, 3] == 0).all()


def test_registered_with_its_hessian_flag():
    assert QUANTIZERS.get("gptq") is gptq_quantize and QUANTIZERS.meta("gptq") == {"needs_hessian": True}


def test_stages_group_linears_by_block():
    names = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj", "model.layers.1.mlp.up_proj", "head"]
    assert stages(names) == [names[:2], names[2:3], ["head"]]


def test_model_is_quantized_block_by_block_on_the_quantized_outputs(tiny_llama):
    torch.manual_seed(1)
    batches = [torch.randint(0, 300, (2, 16)) for _ in range(3)]
    original = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    linears = select_linears(tiny_llama)
    codes = gptq_model(tiny_llama, batches, linears, bits=4, group_size=16)
    assert set(codes) == set(linears) and "lm_head" not in codes
    for name, module in linears.items():
        assert torch.equal(module.weight, dequantize(codes[name]))

    # Re-derive layer 1's q_proj by hand: quantize block 0 alone, then calibrate block 1 on its outputs.
    tiny_llama.load_state_dict(original)
    block0 = {n: m for n, m in select_linears(tiny_llama).items() if n.startswith("model.layers.0.")}
    gptq_model(tiny_llama, batches, block0, bits=4, group_size=16)
    name = "model.layers.1.self_attn.q_proj"
    module = dict(tiny_llama.named_modules())[name]
    h = calibrate(tiny_llama, {name: module}, batches)[name].hessian
    want = gptq_quantize(module.weight, h, 4, 16)
    assert torch.equal(codes[name].q, want.q)


def test_gptq_model_runs_each_decoder_layer_once_per_batch(tiny_llama):
    """Layer by layer: each layer sees each calibration batch once (not one full forward per block), and a
    targeted linear outside the decoder layers (lm_head) is still calibrated, on the quantized layers' outputs."""
    batches = [torch.randint(0, 300, (2, 16)) for _ in range(3)]
    calls = {i: 0 for i in range(len(tiny_llama.model.layers))}
    handles = [layer.register_forward_pre_hook(lambda *_a, i=i: calls.__setitem__(i, calls[i] + 1))
               for i, layer in enumerate(tiny_llama.model.layers)]
    linears = select_linears(tiny_llama, exclude=[])
    codes = gptq_model(tiny_llama, batches, linears, bits=4, group_size=16)
    for h in handles:
        h.remove()
    # per batch: a capture pass stopping at layer 0; each layer once for its Hessians and, but the last,
    # once more after quantization for the next layer's inputs; then one full forward for the lm_head stage
    n, last = len(batches), len(calls) - 1
    assert calls == {i: n * ((i == 0) + 1 + (i < last) + 1) for i in calls}
    assert "lm_head" in codes
