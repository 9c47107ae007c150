"""Real kills: `polm sft`, `polm dpo` and `polm grpo` are SIGKILLed at random steps and rerun until they
finish; the resumed history (loss and grad norm of every step) equals an uninterrupted run's, every
checkpoint left on disk after a kill loads, and run.json tells each attempt's story.

Each run is its own OS process, forked from a warm interpreter that has imported polm, torch and
transformers once (a cold start costs ~10 s of imports, the training itself under 2 s); a fork shares
nothing with its parent after it starts, so a SIGKILL is a real kill of a real `polm` process.
Fresh interpreters end to end are exercised by bench/kill_resume.py and tests/e2e/test_reproducible.py.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from polm.rundir import read_run
from polm.train.checkpoint import TrainState, checkpoints_dir, latest_checkpoint, load_checkpoint
from polm.train.config import TrainConfig
from polm.train.loop import build_optimizer
from polm.train.metrics import read_metrics
from polm.train.schedule import build_scheduler

ROOT = Path(__file__).resolve().parents[2]
SERVER = r"""
import json, os, sys, traceback
# the slow imports, once (what a run would import lazily too: each child would pay for it again)
import torch, peft, polm.cli, polm.recipes.sft, polm.recipes.dpo, polm.recipes.grpo
import matplotlib.figure, matplotlib.backends.backend_agg, transformers.models.llama.modeling_llama
import peft.utils.transformers_weight_conversion
for line in sys.stdin:
    req = json.loads(line)
    if "wait" in req:
        print(os.waitstatus_to_exitcode(os.waitpid(req["wait"], 0)[1]), flush=True)
        continue
    pid = os.fork()
    if pid == 0:
        fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        try:
            code = polm.cli.main(req["argv"])
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print(pid, flush=True)
"""
REWARDS = '''
def digits(completions, records):
    """The share of a completion's characters that are digits: a reward with spread at every step."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]
'''
CHATS = [
    [{"role": "user", "content": "What is 12 + 7?"}, {"role": "assistant", "content": "The answer is 19."}],
    [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "good morning"}],
    [{"role": "user", "content": "Calculate 5 - 3 - 6."}, {"role": "assistant", "content": "Answer: -4"}],
]
PAIRS = [{"prompt": f"What is {a} + {b}?", "chosen": f"The answer is {a + b}.", "rejected": f"hello world {a}"}
         for a in range(3) for b in range(4)]
PROMPTS = ["What is 12 + 7?", "Hello", "good morning", "the lazy dog"]
STEPS = 8
COMMON = ["train.lr=0.01", "train.schedule=constant", "train.progress=false", "train.tensorboard=false",
          "train.save_every=1"]


def recipe_args(recipe: str, model_dir: Path, data: Path, out: Path, steps: int = STEPS) -> list[str]:
    """A tiny `polm <recipe>` command of `steps` steps, a checkpoint after every one."""
    if recipe == "sft":   # LoRA: the adapter's parameters are what the checkpoints hold
        extra = ["data.max_length=64", "train.micro_batch_size=4", "lora.r=8", "lora.alpha=16"]
    elif recipe == "dpo":  # full fine-tune against a frozen copy
        extra = ["method=full", "data.max_length=64", "train.micro_batch_size=4",
                 f"reference.cache_dir={out.parent / 'cache'}"]
    else:                  # 2 optimizer steps per rollout (μ = 2): checkpoints fall mid-rollout
        extra = ["method=full", "model.device=cpu", "data.chat=false", "rollout.group_size=4",
                 "rollout.prompts_per_rollout=2", "rollout.max_new_tokens=4", "train.micro_batch_size=4",
                 "train.grad_accum=2", "epochs_per_rollout=2", "beta=0.04", "kl=k3",
                 "rewards={polm_kill_rewards:digits: 1.0}"]
    return [recipe, f"model.name={model_dir}", f"data.train={data}", f"output_dir={out}", *COMMON,
            f"train.max_steps={steps}", *extra]


def write_data(recipe: str, folder: Path) -> Path:
    rows = {"sft": [{"messages": m} for m in CHATS * 4], "dpo": PAIRS,
            "grpo": [{"prompt": p} for p in PROMPTS]}[recipe]
    path = folder / f"{recipe}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class Launcher:
    """Starts `polm` runs as forked children of one warm interpreter; `start` returns the child's pid,
    `wait` its exit code (negative: the signal that killed it)."""

    def __init__(self, env: dict[str, str]):
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env, cwd=ROOT)

    def _ask(self, request: dict) -> int:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def start(self, argv: list[str], log: Path) -> int:
        return self._ask({"argv": argv, "log": str(log)})

    def wait(self, pid: int) -> int:
        return self._ask({"wait": pid})

    def run(self, argv: list[str], log: Path) -> int:
        return self.wait(self.start(argv, log))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def launcher(tmp_path_factory):
    plugins = tmp_path_factory.mktemp("plugins")
    (plugins / "polm_kill_rewards.py").write_text(REWARDS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(plugins)]), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    server = Launcher(env)
    yield server
    server.close()


def latest_step(run_dir: Path) -> int | None:
    ckpt = latest_checkpoint(run_dir)
    return int(ckpt.name.split("-")[1]) if ckpt else None


def wait_for_checkpoint(run_dir: Path, step: int, log: Path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (latest_step(run_dir) or 0) < step:
        assert time.monotonic() < deadline, f"no checkpoint of step {step}:\n{log.read_text()[-3000:]}"
        time.sleep(0.002)


class _Position:
    """Stands in for the recipe's batch source: a checkpoint's data position only has to be read."""

    def load_state_dict(self, state: dict) -> None:
        self.state = state


def assert_every_checkpoint_loads(run_dir: Path, reference: Path, steps: int = STEPS) -> list[int]:
    """Every visible entry of checkpoints/ is a complete `step-N` that load_checkpoint restores into
    parameters named and shaped like `reference`'s (an uninterrupted run's checkpoint); returns the steps."""
    shapes = load_file(reference / "trainable.safetensors")
    found = []
    for entry in sorted(checkpoints_dir(run_dir).iterdir()):
        if entry.name.startswith("."):
            continue                                   # the temp dir of a save the kill cut short
        assert entry.is_dir() and entry.name.startswith("step-"), entry
        params = {name: nn.Parameter(torch.zeros_like(t)) for name, t in shapes.items()}
        optimizer = build_optimizer(list(params.values()), TrainConfig(lr=0.01))
        state = TrainState(params, optimizer, build_scheduler(optimizer, TrainConfig(lr=0.01), steps), _Position())
        with torch.random.fork_rng():
            meta = load_checkpoint(entry, state)
        assert meta["step"] == int(entry.name.split("-")[1]) and state.batches.state
        assert any(p.abs().sum() > 0 for p in params.values())
        found.append(meta["step"])
    return sorted(found)


def history(run_dir: Path) -> list[tuple[int, float, float]]:
    return [(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(run_dir) if "loss" in r]


def run_with_kills(launcher: Launcher, argv: list[str], run_dir: Path, log: Path, reference: Path,
                   rng: random.Random, kills: int, steps: int = STEPS,
                   sig: signal.Signals = signal.SIGKILL) -> list[int | None]:
    """Start `argv` again and again: send `sig` `kills` times, each once a random step's checkpoint is on
    disk (plus a random few ms, to land anywhere in the next step or save), the k-th kill within the first
    1/(kills - k) of the steps left; then let it finish. After each kill every checkpoint must load.
    Returns the checkpoint step each attempt began from (None: from scratch)."""
    began_from: list[int | None] = []
    stopped = -sig if sig == signal.SIGKILL else 2       # SIGTERM: checkpoint, one line, exit code 2
    for attempt in range(kills + 1):
        began_from.append(latest_step(run_dir))
        pid = launcher.start(argv, log)
        if attempt < kills:
            start = began_from[-1] or 0                # the kills share the steps left before the last
            wait_for_checkpoint(run_dir, rng.randint(start + 1, start + (steps - 2 - start) // (kills - attempt)),
                                log)
            time.sleep(rng.uniform(0.0, 0.02))
            os.kill(pid, sig)
        code = launcher.wait(pid)
        assert code == (stopped if attempt < kills else 0), log.read_text()[-3000:]
        if attempt < kills:
            assert assert_every_checkpoint_loads(run_dir, reference, steps)
    return began_from


@pytest.mark.parametrize("recipe", ["sft", "dpo", "grpo"])
def test_sigkilled_runs_resume_to_the_uninterrupted_history(recipe, launcher, tiny_model_dir, tmp_path):
    data, log = write_data(recipe, tmp_path), tmp_path / "polm.log"
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert launcher.run(recipe_args(recipe, tiny_model_dir, data, straight), log) == 0, log.read_text()[-3000:]
    reference = checkpoints_dir(straight) / f"step-{STEPS}"

    began_from = run_with_kills(launcher, recipe_args(recipe, tiny_model_dir, data, killed), killed, log,
                                reference, random.Random(f"{recipe}-kills"), kills=2)

    expected = history(straight)
    assert [s for s, _, _ in expected] == list(range(1, STEPS + 1))
    assert history(killed) == expected                    # loss and grad norm, bit for bit
    assert len({loss for _, loss, _ in expected}) > 1 and all(g > 0 for _, _, g in expected)
    attempts = read_run(killed)["attempts"]
    assert [a["status"] for a in attempts] == ["killed", "killed", "completed"]
    assert [a.get("resumed_from") for a in attempts] == began_from
    assert began_from[0] is None and 0 < began_from[1] < began_from[2] < STEPS
    assert read_run(killed)["status"] == "completed"
    assert assert_every_checkpoint_loads(killed, reference) == [STEPS - 1, STEPS]
