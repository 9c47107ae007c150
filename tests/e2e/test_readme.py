"""Every `polm ...` command in README.md's code blocks is a tested example: it runs here on the tiny model
(real model names become the tiny model, long runs get tiny step counts from TINY), or a named e2e test
covers it (COVERED_BY). A README command in neither table fails, and so does a table entry the README
no longer has."""

from __future__ import annotations

import io
import re
import shlex
from pathlib import Path

from polm.cli import main

ROOT = Path(__file__).resolve().parents[2]
REAL_MODEL = "smollm2-135m-instruct"
TINY_RUN = ["train.max_steps=2", "train.micro_batch_size=2", "train.progress=false", "train.tensorboard=false"]
ARITH = "builtin:reasoning-gym/basic_arithmetic?n=12&seed=0&min_terms=2&max_terms=2&min_digits=1&max_digits=2"

# README command -> what it runs here besides the README's own arguments (a few steps on little data).
TINY: dict[str, list[str]] = {
    "polm generate --model runs/demo-arith-sft/sft/final --prompt 'Calculate 12 + 7.'": ["--max-new-tokens", "4"],
    "polm sft configs/sft_lora.yaml": [f"data.train={ARITH}", "data.max_length=96", *TINY_RUN],
    "polm sft configs/sft_lora.yaml lora.r=32 train.lr=5e-4 output_dir=runs/sft-lora-r32": [f"data.train={ARITH}", "data.max_length=96", *TINY_RUN],
    "polm sft configs/cpt_wiki.yaml": ["data.train=builtin:wiki-summaries?n=8&seed=0", "data.max_length=64", *TINY_RUN],
    "polm generate --model runs/sft-lora/final --prompt 'Calculate 12 + 7.'": ["--max-new-tokens", "4"],
    "polm export --model runs/sft-lora/final --out runs/sft-lora/merged": [],
    "polm eval --model smollm2-135m-instruct --model runs/sft-lora/final --task arith:chain_sum --limit 50":
        ["--limit", "2", "--max-new-tokens", "4", "--out", "runs/eval-readme"],
    "polm assets list": [],
}
# `make demo` runs this (the Makefile says so, checked below); README lines after it read its run directory.
MAKE_DEMO = "polm demo configs/demo_arith_sft.yaml"
TINY_DEMO = ["eval_tasks=arith:chain_sum?n=4&seed=1234&min_terms=2&max_terms=2&max_digits=1", "train_per_task=8",
             "eval_max_new_tokens=4", "sft.lora.r=4", "sft.data.max_length=128", *(f"sft.{o}" for o in TINY_RUN)]
AFTER_MAKE_DEMO = {"polm generate --model runs/demo-arith-sft/sft/final --prompt 'Calculate 12 + 7.'"}

# README command -> the e2e test that covers it (interactive: it reads stdin).
COVERED_BY = {
    "polm chat --model runs/sft-lora/final":
        "tests/e2e/test_generate_cli.py::test_chat_applies_the_recorded_suffix_to_the_user_turn",
}


def readme_commands() -> list[str]:
    """The `polm ...` lines of README.md's fenced code blocks, comments dropped, arguments re-quoted."""
    text = (ROOT / "README.md").read_text()
    lines = [line for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S) for line in block.splitlines()]
    return [shlex.join(shlex.split(line, comments=True)) for line in lines if line.strip().startswith("polm ")]


def tiny_argv(command: str, tiny_model: Path) -> list[str]:
    """The README command's arguments (without `polm`) on the tiny model, configs read from the repo,
    plus the tiny settings; a recipe config's model is the tiny model too."""
    args = [str(tiny_model) if a == REAL_MODEL else str(ROOT / a) if a.startswith("configs/") else a
            for a in shlex.split(command)[1:]]
    extra = list(TINY.get(command, TINY_DEMO if command == MAKE_DEMO else []))
    if any(a.endswith(".yaml") for a in args):
        extra.append(f"{'sft.' if args[0] == 'demo' else ''}model.name={tiny_model}")
    return args + extra


def test_every_readme_command_is_tested():
    commands = readme_commands()
    assert commands, "README.md has no polm commands: the extraction is broken"
    untested = [c for c in commands if c not in TINY and c not in COVERED_BY]
    assert not untested, f"README commands no test covers (add them to TINY or COVERED_BY): {untested}"
    stale = [c for c in [*TINY, *COVERED_BY] if c not in commands]
    assert not stale, f"test entries for commands the README no longer has: {stale}"
    for test in COVERED_BY.values():
        path, name = test.split("::")
        assert f"def {name}(" in (ROOT / path).read_text(), f"{test} does not exist"


def test_readme_commands_run_in_order_on_the_tiny_model(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """In the README's order, from a fresh directory: later lines use the runs earlier lines made."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert f"$(BIN)/{MAKE_DEMO}" in (ROOT / "Makefile").read_text()
    for command in readme_commands():
        if command in COVERED_BY:
            continue
        if command in AFTER_MAKE_DEMO and not (tmp_path / "runs/demo-arith-sft").exists():
            assert main(tiny_argv(MAKE_DEMO, tiny_model_dir)) == 0, capsys.readouterr().err
        assert main(tiny_argv(command, tiny_model_dir)) == 0, (command, capsys.readouterr().err)
    assert (tmp_path / "runs/sft-lora/final/polm_prompt.json").is_file()
    assert (tmp_path / "runs/sft-lora/merged/polm_prompt.json").is_file()
    assert "Answer: <answer>" in (tmp_path / "runs/demo-arith-sft/sft/final/polm_prompt.json").read_text()
