"""Kill-and-resume at length: `polm sft`, `polm dpo` and `polm grpo` on the tiny test model, 30 steps,
SIGKILLed 5 times and (separately) SIGTERMed 5 times at seeded random steps, rerun until they finish.

    python bench/kill_resume.py [--steps 30] [--kills 5] [--seed 0]

For each recipe and signal: every resumed history (loss, grad norm) must equal an uninterrupted run's,
every checkpoint on disk after a kill must load, SIGTERM must leave status "interrupted" per attempt.
Writes bench/results/kill_resume.json. The runs are forked children of one warm interpreter (the
mechanism of tests/e2e/test_kill_resume.py, whose helpers this reuses).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shlex
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import common

ROOT = Path(__file__).resolve().parents[1]
RESULT = common.RESULTS_DIR / "kill_resume.json"
sys.path.insert(0, str(ROOT / "tests"))


def _kill_test_helpers():
    spec = importlib.util.spec_from_file_location("kill_resume_helpers", ROOT / "tests/e2e/test_kill_resume.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_model(folder: Path) -> Path:
    from conftest import build_tiny_llama, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    build_tiny_llama(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def one_case(h, launcher, recipe: str, sig: signal.Signals, model: Path, work: Path, steps: int, kills: int,
             seed: int) -> dict:
    """Straight run, then the killed one; the comparison and what run.json says."""
    from polm.rundir import read_run
    from polm.train.checkpoint import checkpoints_dir

    folder = work / f"{recipe}-{sig.name}"
    folder.mkdir()
    data, log = h.write_data(recipe, folder), folder / "polm.log"
    straight, killed = folder / "straight", folder / "killed"
    began = time.perf_counter()
    assert launcher.run(h.recipe_args(recipe, model, data, straight, steps), log) == 0, log.read_text()[-3000:]
    reference = checkpoints_dir(straight) / f"step-{steps}"
    corrupt, failure, began_from = 0, None, []
    try:
        began_from = h.run_with_kills(launcher, h.recipe_args(recipe, model, data, killed, steps), killed, log,
                                      reference, random.Random(f"{seed}-{recipe}-{sig.name}"), kills, steps, sig)
    except AssertionError as err:   # a checkpoint that did not load, or an attempt that ended unexpectedly
        frames = [f.name for f in traceback.extract_tb(err.__traceback__)]
        corrupt, failure = int("assert_every_checkpoint_loads" in frames), str(err)[-1000:]
    a, b = h.history(straight), h.history(killed)
    attempts = read_run(killed).get("attempts", [])
    stopped = "killed" if sig == signal.SIGKILL else "interrupted"
    return {
        "signal": sig.name, "kills": kills, "steps": steps,
        "resumed_exactly": a == b and len(a) == steps,
        "max_abs_loss_diff": max((abs(x[1] - y[1]) for x, y in zip(a, b)), default=None) if len(a) == len(b) else None,
        "max_abs_grad_norm_diff": max((abs(x[2] - y[2]) for x, y in zip(a, b)), default=None) if len(a) == len(b) else None,
        "corrupt_checkpoints": corrupt,
        "failure": failure,
        "resumed_from": began_from,
        "attempt_statuses": [x.get("status") for x in attempts],
        "attempts_as_expected": [x.get("status") for x in attempts] == [stopped] * kills + ["completed"]
        and [x.get("resumed_from") for x in attempts] == began_from,
        "wall_s": round(time.perf_counter() - began, 1),
        "command": "polm " + shlex.join(h.recipe_args(recipe, "MODEL", "DATA", Path("OUT"), steps)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    h = _kill_test_helpers()
    began, cases = time.perf_counter(), []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = tiny_model(work / "tiny-llama")
        plugins = work / "plugins"
        plugins.mkdir()
        (plugins / "polm_kill_rewards.py").write_text(h.REWARDS)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(plugins)]), "OMP_NUM_THREADS": "1"}
        launcher = h.Launcher(env)
        try:
            for recipe in ("sft", "dpo", "grpo"):
                for sig in (signal.SIGKILL, signal.SIGTERM):
                    cases.append({"recipe": recipe, **one_case(h, launcher, recipe, sig, model, work, args.steps,
                                                               args.kills, args.seed)})
                    print(json.dumps(cases[-1]), flush=True)
        finally:
            launcher.close()
    result = {"command": common.command_line(__file__),
              "all_resumed_exactly": all(c["resumed_exactly"] for c in cases),
              "corrupt_checkpoints": sum(c["corrupt_checkpoints"] for c in cases),
              "total_wall_s": round(time.perf_counter() - began, 1), "cases": cases}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULT}: all resumed exactly: {result['all_resumed_exactly']}, "
          f"corrupt checkpoints: {result['corrupt_checkpoints']}")
    return 0 if result["all_resumed_exactly"] and not result["corrupt_checkpoints"] else 1


if __name__ == "__main__":
    sys.exit(main())
