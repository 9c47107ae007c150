"""The `polm` command: one sub-command per recipe or tool.

Each sub-command lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`;
this file only maps names to modules (imported lazily, so `polm --help` stays fast) and turns a
`PolmError` into one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("polm.demo", "the main job: arithmetic accuracy of SmolLM2 before and after LoRA SFT"),
    "sft": ("polm.recipes.sft", "supervised fine-tuning: full / LoRA / DoRA / QLoRA, chat or plain text"),
    "rm": ("polm.recipes.reward", "train a reward model (Bradley-Terry) on preference pairs"),
    "dpo": ("polm.recipes.dpo", "preference optimisation: DPO, IPO, cDPO, robust, hinge, KTO, ORPO, SimPO, CPO"),
    "grpo": ("polm.recipes.grpo", "RL with verifiable rewards: GRPO, Dr. GRPO, DAPO, RLOO, REINFORCE++"),
    "ppo": ("polm.recipes.ppo", "PPO-based RLHF with a value head and a reward model or verifier"),
    "distill": ("polm.recipes.distill", "knowledge distillation: logit KD (KL, JSD, TV, top-k) and on-policy GKD"),
    "data": ("polm.data.cli", "build datasets: preference pairs from verifiers, references or a judge"),
    "generate": ("polm.generate", "batched generation from a model or adapter"),
    "chat": ("polm.chat", "interactive chat with a model or adapter"),
    "export": ("polm.export", "merge an adapter into its base and write a standalone model"),
    "quantize": ("polm.compress.cli", "weight-only quantization (RTN, GPTQ, torchao) into a loadable model directory"),
    "assets": ("polm.assets_cli", "list or prepare the embedded offline models and datasets"),
    "eval": ("polm.eval.cli", "evaluate models on benchmark tasks"),
    "report": ("polm.eval.report_cli", "write an HTML report with plots for run directories"),
    "merge": ("polm.merge.cli", "merge fine-tunes of one base model (linear, task arithmetic, TIES, DARE, SLERP)"),
    "rag": ("polm.rag.cli", "retrieval-augmented generation: index, ask with citations, eval, RAFT data"),
    "knowledge": ("polm.knowledge.cli", "SliCK knowledge probes, their transitions, and the two-stage curriculum"),
    "vlm": ("polm.recipes.vlm", "vision-language models: compose a tower, projector and LM; align and instruction-tune"),
    "vlm-demo": ("polm.vlm_demo", "the measured VLM demo: zero-shot, few-shot and fine-tuned on Fashion-MNIST, one results file"),
    "vlm-dpo": ("polm.recipes.vlm_dpo", "preference optimisation of a VLM on image-conditioned pairs (DPO family)"),
    "prune": ("polm.compress.prune_cli", "prune a model: magnitude, Wanda, SparseGPT (unstructured, 2:4), depth, width"),
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    parser = argparse.ArgumentParser(prog="polm", description="Post-training for language models.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules: dict[str, object] = {}
    wanted = _wanted_command(sys.argv[1:])
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if wanted == name:  # import only the command that runs, so `polm --help` stays fast
            module = _import(module_name)
            if module is None:
                continue
            module.add_arguments(p)
            modules[name] = module
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    from polm.errors import PolmError

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = sys.argv[1:] if argv is None else argv
    sys.argv = [sys.argv[0], *argv]
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 1
    if args.command not in modules:
        print(f"polm: the '{args.command}' command is not available in this installation", file=sys.stderr)
        return 2
    try:
        return int(modules[args.command].run(args) or 0)
    except PolmError as err:
        print(f"polm {args.command}: error: {err.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"polm {args.command}: interrupted", file=sys.stderr)
        return 130


def _wanted_command(argv: list[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def _import(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            return None  # capability not built into this installation
        raise


def _version() -> str:
    from polm import __version__

    return f"polm {__version__}"


if __name__ == "__main__":
    sys.exit(main())
