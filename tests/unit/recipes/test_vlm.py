"""The VLM recipe's stage configs and its per-component trainability and learning rates."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import build_tiny_llama

from polm.config import load_config
from polm.recipes.vlm import VLMConfig, param_groups
from polm.vlm.model import compose

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def test_stage_configs_load_and_chain():
    one = load_config(VLMConfig, CONFIGS / "vlm_stage1.yaml")
    two = load_config(VLMConfig, CONFIGS / "vlm_stage2.yaml")
    assert one.components.projector.train and one.components.llm.train == "none"
    assert not one.components.vision.train and one.components.projector.lr == 1e-3
    assert two.model.init == f"{one.output_dir}/final" and two.components.llm.train == "lora"
    assert one.data.feature_cache == two.data.feature_cache
    assert "fashion-mnist" not in one.data.train and "split=train" in two.data.train
    assert "split=test" in two.eval.data and "split=train" in two.eval.exemplars and len(two.eval.labels) == 10


@pytest.mark.parametrize("llm", ["none", "full"])
def test_one_group_per_trained_component_at_its_rate(llm, tiny_tokenizer):
    cfg = load_config(VLMConfig, None, ["train.lr=0.01", "components.projector.lr=0.001", f"components.llm.train={llm}",
                                        "components.vision.train=true"])
    vlm = compose(build_tiny_llama(len(tiny_tokenizer)), tower="tiny-conv", tower_options={"image_size": 8, "patch": 4})
    vlm.lm.requires_grad_(llm == "full")
    vlm.tower.requires_grad_(True)
    groups = param_groups(vlm, cfg)
    scales = [g["lr_scale"] for g in groups]
    assert scales == pytest.approx([1.0, 0.1] + ([1.0] if llm == "full" else []))
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in vlm.parameters())


def test_dpo_config_starts_from_stage_2_on_training_images():
    from polm.recipes.vlm_dpo import VLMDPOConfig

    two = load_config(VLMConfig, CONFIGS / "vlm_stage2.yaml")
    dpo = load_config(VLMDPOConfig, CONFIGS / "vlm_dpo.yaml")
    assert dpo.model.init == f"{two.output_dir}/final" and dpo.loss == "dpo" and dpo.components.llm.train == "lora"
    assert "split=train" in dpo.data.train and dpo.data.feature_cache == two.data.feature_cache
