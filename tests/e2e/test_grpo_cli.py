"""`polm grpo` end to end on a tiny model: RL that must succeed, exact resume, failing rewards, bad input."""

import json
import sys
import textwrap

import pytest

from polm.cli import main
from polm.train.metrics import read_metrics

PLUGIN = textwrap.dedent('''
    import os
    CALLS = []

    def says_19(completions, records):
        """The toy task: the share of a 4-token completion that is the word '19'."""
        return [sum(w == "19" for w in c.split(" ")) / 4 for c in completions]

    def kill_switch(completions, records):
        """Scores like says_19; interrupts the run (as Ctrl-C would) on call number KILL_AT."""
        CALLS.append(1)
        if len(CALLS) == int(os.environ.get("KILL_AT", "0")):
            raise KeyboardInterrupt
        return says_19(completions, records)

    def flaky(completions, records):
        if any("Hello" in r["prompt"] for r in records):
            raise ValueError("no score for greetings")
        return [0.5] * len(completions)
''')
PROMPTS = ["What is 12 + 7?", "Hello", "good morning", "the lazy dog"]


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "polm_toy_rewards.py").write_text(PLUGIN)
    sys.path.insert(0, str(folder))
    import polm_toy_rewards

    yield polm_toy_rewards
    sys.path.remove(str(folder))


@pytest.fixture()
def prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


def _args(model_dir, prompts, out, *extra):
    return ["grpo", f"model.name={model_dir}", "model.device=cpu", "method=full", f"data.train={prompts}",
            "data.chat=false", f"output_dir={out}", "rollout.group_size=8", "rollout.prompts_per_rollout=2",
            "rollout.max_new_tokens=4", "train.micro_batch_size=16", "train.lr=0.01", "train.schedule=constant",
            "train.progress=false", "train.tensorboard=false", *extra]


def _rewards(run_dir):
    return [r["reward/mean"] for r in read_metrics(run_dir) if "reward/mean" in r]


@pytest.mark.parametrize(("advantage", "loss"), [("grpo", "grpo"), ("rloo", "dapo"), ("reinforce_pp", "dr_grpo")])
def test_toy_rl_learns_to_emit_the_rewarded_token(tiny_model_dir, prompts, tmp_path, plugin, advantage, loss):
    out = tmp_path / "run"
    code = main(_args(tiny_model_dir, prompts, out, "rewards={polm_toy_rewards:says_19: 1.0}",
                      f"advantage={advantage}", f"loss={loss}", "train.max_steps=45"))
    assert code == 0
    rewards = _rewards(out)
    assert len(rewards) == 45
    assert sum(rewards[:5]) / 5 < 0.05               # a random model almost never says it
    assert sum(rewards[-5:]) / 5 > 0.8               # RL made it the policy's answer
    timing = json.loads((out / "timing.json").read_text())
    assert timing["generation_s"] > 0 and timing["training_s"] > 0
    assert (out / "final" / "model.safetensors").is_file()


def test_killed_run_resumes_with_the_same_rewards_and_losses(tiny_model_dir, prompts, tmp_path, plugin,
                                                              monkeypatch):
    # rollout = 16 completions, steps of 4 × 2 micro-batches, μ = 2: 4 steps per rollout, checkpoints every 3
    common = ["rewards={polm_toy_rewards:kill_switch: 1.0}", "train.micro_batch_size=4", "train.grad_accum=2",
              "epochs_per_rollout=2", "train.max_steps=10", "train.save_every=3", "beta=0.04", "kl=k3"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(_args(tiny_model_dir, prompts, straight, *common)) == 0
    plugin.CALLS.clear()
    monkeypatch.setenv("KILL_AT", "3")               # the third rollout (step 9) never happens ...
    assert main(_args(tiny_model_dir, prompts, resumed, *common)) == 130
    assert (resumed / "checkpoints" / "step-6").is_dir()   # ... the last checkpoint is mid-rollout
    monkeypatch.setenv("KILL_AT", "0")
    assert main(_args(tiny_model_dir, prompts, resumed, *common)) == 0
    keys = ("loss", "reward/mean", "grad_norm", "kl", "ratio", "clip/region")
    a = [{k: r[k] for k in keys} for r in read_metrics(straight) if "loss" in r]
    b = [{k: r[k] for k in keys} for r in read_metrics(resumed) if "loss" in r]
    assert len(a) == len(b) == 10
    assert a == b
    assert any(r["ratio"] != 1.0 for r in a)         # the second pass over a rollout is off-policy


def test_a_failing_reward_is_counted_and_reported_not_fatal(tiny_model_dir, prompts, tmp_path, plugin, capsys):
    out = tmp_path / "run"
    code = main(_args(tiny_model_dir, prompts, out, "rewards={polm_toy_rewards:flaky: 1.0}", "train.max_steps=4",
                      "rollout.prompts_per_rollout=4", "train.micro_batch_size=32"))
    assert code == 0
    rows = [r for r in read_metrics(out) if "loss" in r]
    # every rollout holds all 4 prompts; the 8 completions of 'Hello' fail
    assert [r["reward/polm_toy_rewards:flaky/failures"] for r in rows] == [8.0] * 4
    assert [r["reward/mean"] for r in rows] == [pytest.approx(0.375)] * 4      # 24 × 0.5 + 8 × 0 over 32
    assert json.loads((out / "timing.json").read_text())["reward_failures"] == {"polm_toy_rewards:flaky": 32}
    err = capsys.readouterr()
    assert "reward 'polm_toy_rewards:flaky' failed (ValueError: no score for greetings)" in err.err
    assert "reward failures during the run" in err.out


def test_bad_input_gives_one_line_errors(tiny_model_dir, prompts, tmp_path, plugin, capsys):
    out = tmp_path / "run"
    cases = [
        (["rewards={math_answer: 1.0}"], "record 1 has no 'answer' field, which reward 'math_answer' needs"),
        (["advantage=rlo"], "advantage: unknown advantage estimator 'rlo'. Did you mean 'rloo'?"),
        (["advantage=gae"], "Use `polm ppo` for GAE"),
        (["train.micro_batch_size=5", "rewards={format: 1.0}"], "does not split into optimizer steps"),
        (["rewards={no_such_reward: 1.0}"], "unknown reward 'no_such_reward'"),
    ]
    for extra, message in cases:
        assert main(_args(tiny_model_dir, prompts, out, *extra)) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "x", "text": "y"}) + "\n")
    assert main(_args(tiny_model_dir, bad, out, "rewards={format: 1.0}")) == 2
    assert "neither a 'prompt' string nor a 'messages' list" in capsys.readouterr().err
    assert not out.exists()                          # a mistake never leaves a run directory behind
