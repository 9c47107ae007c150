"""Layer-by-layer calibration: windows from a data reference, and layer i calibrated on the pruned layers before it."""

from __future__ import annotations

import json

import pytest
import torch

from polm.compress.calibration import calibration_batches
from polm.compress.prune import PRUNE_METHODS, LayerStats, Sparsity
from polm.compress.prune_layers import prune_layerwise
from polm.errors import PolmError

IDS = [torch.tensor([[5, 9, 12, 40, 7, 3, 100, 8], [2, 4, 6, 8, 10, 12, 14, 16]]), torch.tensor([[1, 7, 9, 30, 2, 6, 8, 9]])]


def inputs_of(model, module) -> torch.Tensor:
    seen = []
    handle = module.register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        for ids in IDS:
            model(input_ids=ids, use_cache=False)
    handle.remove()
    return torch.cat(seen)


def test_each_layer_is_calibrated_on_the_already_pruned_layers_before_it(tiny_llama):
    import copy

    by_hand = copy.deepcopy(tiny_llama)
    masks = prune_layerwise(tiny_llama, IDS, "wanda", Sparsity(0.5))
    wanda = PRUNE_METHODS.get("wanda")
    for i, layer in enumerate(by_hand.model.layers):
        # all linears of layer i see the network with layers < i pruned (and layer i still dense)
        linears = {n: m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
        stats = {}
        for name, lin in linears.items():
            stats[name] = LayerStats()
            stats[name].add(inputs_of(by_hand, lin), "sq_norm")
        for name, lin in linears.items():
            pruned, mask = wanda(lin.weight.data, stats[name], Sparsity(0.5))
            lin.weight.data.copy_(pruned)
            assert torch.equal(masks[f"model.layers.{i}.{name}.weight"], mask), name
    for (name, a), b in zip(tiny_llama.named_parameters(), by_hand.parameters(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_magnitude_reads_no_data(tiny_llama):
    masks = prune_layerwise(tiny_llama, None, "magnitude", Sparsity(0.25))
    assert len(masks) == 14                                    # 7 linears × 2 layers
    assert all(float((~m).float().mean()) == 0.25 for m in masks.values())


def test_calibration_windows_come_from_the_encoded_token_stream(tmp_path, tiny_tokenizer):
    data = tmp_path / "calib.jsonl"
    texts = ["The quick brown fox jumps over the lazy dog.", "What is 12 + 7? The answer is 19."]
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    stream = [t for text in texts for t in tiny_tokenizer(text)["input_ids"] + [tiny_tokenizer.eos_token_id]]
    batches = calibration_batches(str(data), tiny_tokenizer, n_samples=3, seq_len=4, batch_size=2)
    assert [b.shape for b in batches] == [(2, 4), (1, 4)]
    assert torch.cat(batches).reshape(-1).tolist() == stream[:12]
    with pytest.raises(PolmError, match=r"n_samples × seq_len = 100 × 4 = 400 are needed"):
        calibration_batches(str(data), tiny_tokenizer, n_samples=100, seq_len=4, batch_size=2)
