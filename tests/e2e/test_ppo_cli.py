"""`polm ppo` end to end on a tiny model: a value head + GAE learns the toy task; value head saved; bad input."""

import json
import sys
import textwrap

import pytest
import torch

from polm.cli import main
from polm.train.metrics import read_metrics

PLUGIN = textwrap.dedent('''
    def says_19(completions, records):
        """The share of a 4-token completion that is the word '19'."""
        return [sum(w == "19" for w in c.split(" ")) / 4 for c in completions]
''')


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ppo-plugin")
    (folder / "polm_ppo_toy.py").write_text(PLUGIN)
    sys.path.insert(0, str(folder))
    yield
    sys.path.remove(str(folder))


@pytest.fixture()
def prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["What is 12 + 7?", "Hello", "good morning"]))
    return path


def _args(model_dir, prompts, out, *extra):
    return ["ppo", f"model.name={model_dir}", "model.device=cpu", "method=full", f"data.train={prompts}",
            "data.chat=false", f"output_dir={out}", "rollout.group_size=4", "rollout.prompts_per_rollout=16",
            "rollout.max_new_tokens=4", "train.micro_batch_size=32", "train.grad_accum=2", "train.lr=0.02",
            "train.schedule=constant", "train.progress=false", "train.tensorboard=false", *extra]


def test_ppo_learns_the_toy_task_and_saves_its_value_head(tiny_model_dir, prompts, tmp_path, plugin):
    out = tmp_path / "run"
    code = main(_args(tiny_model_dir, prompts, out, "rewards={polm_ppo_toy:says_19: 1.0}", "train.max_steps=50",
                      "epochs_per_rollout=1", "beta=0", "vf_coef=0.5", "whiten_advantages=false"))
    assert code == 0
    rows = [r for r in read_metrics(out) if "loss" in r]
    rewards = [r["reward/mean"] for r in rows]
    assert sum(rewards[:5]) / 5 < 0.05 and sum(rewards[-5:]) / 5 > 0.8
    assert all("value/loss" in r and "entropy" in r for r in rows)
    assert rows[-1]["entropy"] < 0.5 * rows[0]["entropy"]     # the policy became confident
    from safetensors.torch import load_file

    head = load_file(out / "final" / "value_head.safetensors")
    assert head["linear.weight"].shape == (1, 32) and torch.count_nonzero(head["linear.weight"]) > 0


def test_ppo_bad_input(tiny_model_dir, prompts, tmp_path, plugin, capsys):
    out = tmp_path / "run"
    assert main(_args(tiny_model_dir, prompts, out, "lam=1.5")) == 2
    assert "gamma and lam must be in [0, 1]" in capsys.readouterr().err
    assert main(_args(tiny_model_dir, prompts, out, "rewards={math_answer: 1.0}")) == 2
    assert "record 1 has no 'answer' field" in capsys.readouterr().err
    assert not out.exists()
