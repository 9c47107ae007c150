"""Per-tensor parameter settings: layer gradients and name filters, as mergekit resolves them."""

from __future__ import annotations

import pytest

from polm.errors import PolmError
from polm.merge.params import check_setting, layer_index, layer_position, resolve_setting


def test_layer_position_spreads_blocks_over_zero_to_one():
    assert layer_index("model.layers.12.self_attn.q_proj.weight") == 12
    assert layer_index("transformer.h.3.attn.c_attn.weight") == 3
    assert layer_index("model.embed_tokens.weight") is None
    assert layer_position("model.layers.3.mlp.up_proj.weight", num_layers=5) == 0.75
    assert layer_position("model.layers.0.mlp.up_proj.weight", num_layers=5) == 0.0
    assert layer_position("model.norm.weight", num_layers=5) == 0.0      # outside the stack: x = 0
    assert layer_position("model.layers.0.mlp.up_proj.weight", num_layers=1) == 1.0


def test_gradient_interpolates_between_evenly_spaced_anchors():
    # anchors at x = 0, 0.5, 1
    assert resolve_setting([0.0, 0.5, 1.0], "w", 0.25) == pytest.approx(0.25)
    assert resolve_setting([0.0, 1.0, 0.0], "w", 0.75) == pytest.approx(0.5)
    assert resolve_setting([0.2, 0.8], "w", 1.0) == pytest.approx(0.8)
    assert resolve_setting(0.3, "w", 0.9) == 0.3
    assert resolve_setting(["a", "b"], "w", 0.4) == "a"                  # non-numbers: nearest anchor below


def test_filters_pick_the_first_matching_entry():
    setting = [{"filter": "self_attn", "value": 0.1}, {"filter": "mlp", "value": [0.0, 1.0]}, {"value": 0.9}]
    assert resolve_setting(setting, "model.layers.1.self_attn.q_proj.weight", 0.5) == 0.1
    assert resolve_setting(setting, "model.layers.1.mlp.up_proj.weight", 0.5) == pytest.approx(0.5)
    assert resolve_setting(setting, "model.embed_tokens.weight", 0.0) == 0.9
    assert resolve_setting([{"filter": "mlp", "value": 1}], "model.norm.weight", 0.0) is None
    assert resolve_setting({"filter": "*", "value": 2}, "anything", 0.0) == 2


def test_check_setting_returns_every_anchor_and_rejects_mixed_lists():
    assert check_setting([{"filter": "mlp", "value": [0.1, 0.9]}, {"value": 0.5}], "p") == [
        (0.1, "p[0].value[0]"), (0.9, "p[0].value[1]"), (0.5, "p[1].value")]
    with pytest.raises(PolmError, match="only numbers"):
        check_setting([0.1, {"value": 1}], "p")
    with pytest.raises(PolmError, match=r"p\[0\].*needs 'value'"):
        check_setting([{"filter": "mlp", "valu": 1}], "p")
    with pytest.raises(PolmError, match="expected a number"):
        check_setting([], "p")
