"""Typed configs: YAML + dotted overrides, and errors that name the key, the line and the fix."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from polm.config import dump_config, field_names, load_config
from polm.errors import PolmError


@dataclass
class Lora:
    r: int = 8
    alpha: float = 16.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj"])


@dataclass
class Cfg:
    output_dir: str = "runs/x"
    method: Literal["full", "lora"] = "lora"
    lr: float = 1e-4
    eval: str | None = None
    lora: Lora = field(default_factory=Lora)

    def validate(self) -> None:
        if self.lr <= 0:
            raise PolmError(f"lr must be positive, got {self.lr}")


def write(tmp_path, text: str):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_yaml_then_overrides_win(tmp_path):
    path = write(tmp_path, "method: full\nlr: 3.0e-4\nlora:\n  r: 4\n")
    cfg = load_config(Cfg, path, ["lora.r=32", "lora.target_modules=[q_proj,v_proj]", "eval=data/dev.jsonl"])
    assert cfg == Cfg(method="full", lr=3e-4, eval="data/dev.jsonl",
                      lora=Lora(r=32, target_modules=["q_proj", "v_proj"]))


def test_numbers_yaml_reads_as_strings_are_floats(tmp_path):
    # YAML 1.1 reads `1e-4` (no dot) as a string; a float field accepts it.
    assert load_config(Cfg, write(tmp_path, "lr: 1e-4\n")).lr == pytest.approx(1e-4)
    assert load_config(Cfg, None, ["lr=2"]).lr == 2.0


def test_unknown_key_names_line_and_closest_key(tmp_path):
    path = write(tmp_path, "method: lora\nlora:\n  rank: 4\n")
    with pytest.raises(PolmError) as err:
        load_config(Cfg, path)
    assert err.value.message == f"{path}:3: unknown config key 'lora.rank'. Did you mean 'lora.r'?"


def test_unknown_override_names_the_argument():
    with pytest.raises(PolmError, match=r"command line 'lerning_rate=1': unknown config key 'lerning_rate'"):
        load_config(Cfg, None, ["lerning_rate=1"])


def test_wrong_type_names_expected_type(tmp_path):
    with pytest.raises(PolmError) as err:
        load_config(Cfg, write(tmp_path, "lora:\n  r: four\n"))
    assert err.value.message == f"{tmp_path / 'cfg.yaml'}:2: config key 'lora.r' expects int, got 'four' (str)"
    with pytest.raises(PolmError, match="expects one of 'full', 'lora'"):
        load_config(Cfg, None, ["method=qlora"])
    with pytest.raises(PolmError, match="expects int, got True"):
        load_config(Cfg, None, ["lora.r=true"])
    with pytest.raises(PolmError, match="'lora' must be a section"):
        load_config(Cfg, None, ["lora=3"])


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(PolmError, match=r"cfg.yaml:3: the config is not valid YAML"):
        load_config(Cfg, write(tmp_path, "lr: 1\nlora: {r: 1\nmethod: [\n"))
    with pytest.raises(PolmError, match="does not exist"):
        load_config(Cfg, tmp_path / "nope.yaml")
    with pytest.raises(PolmError, match="not of the form key=value"):
        load_config(Cfg, None, ["lora.r"])


def test_validate_hook_runs():
    with pytest.raises(PolmError, match="lr must be positive"):
        load_config(Cfg, None, ["lr=-1"])


def test_flow_list_with_colons_on_the_command_line():
    cfg = load_config(Cfg, None, ["lora.target_modules=[a:b?x=1, c]"])
    assert cfg.lora.target_modules == ["a:b?x=1", "c"]


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(Cfg, None, ["lora.r=2", "lr=0.5"])
    dump_config(cfg, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["lora"]["r"] == 2
    assert load_config(Cfg, tmp_path / "config.yaml") == cfg
    assert field_names(Cfg) == ["output_dir", "method", "lr", "eval", "lora.r", "lora.alpha", "lora.target_modules"]


def test_a_section_keeps_the_recipes_own_defaults_for_keys_it_does_not_set(tmp_path):
    """DPO's `TrainConfig(lr=5e-6)`, PPO's rollout shape and the RL mmap threshold survive a YAML
    `train:` / `rollout:` section or an override that sets other keys of the section."""
    from polm.recipes.dpo import DPOConfig
    from polm.recipes.grpo import GRPOConfig
    from polm.recipes.ppo import PPOConfig

    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_steps: 3\nrollout:\n  max_new_tokens: 8\n")
    ppo = load_config(PPOConfig, path, [])
    assert (ppo.rollout.group_size, ppo.rollout.prompts_per_rollout, ppo.rollout.max_new_tokens) == (1, 16, 8)
    assert (ppo.train.malloc_mmap_threshold_mb, ppo.train.max_steps) == (1, 3)
    assert load_config(DPOConfig, None, ["train.max_steps=3"]).train.lr == 5e-6
    assert load_config(GRPOConfig, None, ["train.lr=0.1"]).train.malloc_mmap_threshold_mb == 1
