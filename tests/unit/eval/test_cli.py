"""`polm eval --config`: file values fill unset flags, flags win, lists add; example configs are valid."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from polm.config import load_config
from polm.errors import PolmError
from polm.eval import cli
from polm.eval.registry import get_task

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(list(argv))
    if args.config:
        cli._apply_config(args)
    return args


def test_config_fills_defaults_and_flags_win(tmp_path):
    cfg = tmp_path / "ev.yaml"
    cfg.write_text("models: [m1]\ntasks: [gsm8k]\nlimit: 20\nmode: cot\nseed: 7\n")
    args = parse("--config", str(cfg), "--model", "m2", "--limit", "5")
    assert args.model == ["m1", "m2"] and args.task == ["gsm8k"]
    assert args.limit == 5 and args.mode == "cot" and args.seed == 7 and args.batch_size == 8


def test_config_errors_name_the_line(tmp_path):
    cfg = tmp_path / "ev.yaml"
    cfg.write_text("models: [m1]\nmdoe: cot\n")
    with pytest.raises(PolmError, match=r"ev.yaml:2: unknown config key 'mdoe'. Did you mean 'mode'"):
        parse("--config", str(cfg))


@pytest.mark.parametrize("name", ["eval_smollm2.yaml", "eval_humaneval.yaml", "eval_judge.yaml"])
def test_example_configs_are_valid(name):
    cfg = load_config(cli.EvalConfig, CONFIGS / name)
    for spec in cfg.tasks:
        get_task(spec)
    if cfg.judge_prompts:
        from polm.generate import read_prompts

        assert len(read_prompts(str(CONFIGS.parent / cfg.judge_prompts))) >= cfg.limit


def test_example_qa_task_file():
    task = get_task(str(CONFIGS / "eval_qa_example.yaml"))
    items = task.load_items()
    assert len(items) == 8 and task.metrics("Answer: Paris", items[0])["exact_match"] == 1.0
