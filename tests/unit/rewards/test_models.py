"""Reward-model and LLM-judge rewards: parity with a plain forward of the same models."""

import pytest
import torch

from polm.errors import PolmError
from polm.eval.model import ModelAdapter
from polm.rewards import REWARDS
from polm.rewards.models import expected_grade, judge_prompts


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory, tiny_tokenizer):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, num_labels=1,
                      pad_token_id=tiny_tokenizer.pad_token_id)
    path = tmp_path_factory.mktemp("rm")
    LlamaForSequenceClassification(cfg).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def test_reward_model_scores_equal_a_plain_forward(rm_dir, tiny_tokenizer):
    from transformers import AutoModelForSequenceClassification

    from polm.data.preferences import encode_completion

    records = [{"prompt": "What is 12 + 7?"}, {"messages": [{"role": "user", "content": "Hello"}]}]
    got = REWARDS.get("reward_model")(["19", "hello world"], records, model=str(rm_dir), device="cpu", batch_size=2)
    rm = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    for score, (prompt, reply) in zip(got, [("What is 12 + 7?", "19"), ("Hello", "hello world")]):
        ids = encode_completion([{"role": "user", "content": prompt}], reply, tiny_tokenizer, True)[0]
        with torch.no_grad():
            ref = rm(input_ids=torch.tensor([ids])).logits[0, 0].item()
        assert score == pytest.approx(ref, abs=1e-5)


def test_expected_grade_by_hand():
    sure_nine = torch.full((1, 10), -1e9, dtype=torch.float64)
    sure_nine[0, 9] = 0.0
    assert expected_grade(sure_nine).tolist() == [1.0]
    assert expected_grade(torch.zeros(1, 10, dtype=torch.float64)).item() == pytest.approx(0.5)   # uniform: 4.5 / 9


def test_judge_reward_is_the_expected_digit_under_the_judge(tiny_model_dir):
    records = [{"prompt": "What is 2 + 2?"}]
    got = REWARDS.get("judge")(["4"], records, model=str(tiny_model_dir), rubric="correct", device="cpu")
    judge = ModelAdapter.load(str(tiny_model_dir), device="cpu")
    ctx = judge.format_prompt(judge_prompts(["4"], records, "correct")[0])
    sep = "" if judge.chat else " "
    lps = torch.tensor([judge.loglikelihood([(ctx, f"{sep}{d}")])[0][0] for d in range(10)], dtype=torch.float64)
    probs = lps.softmax(-1)
    assert got[0] == pytest.approx(float((probs * torch.arange(10)).sum() / 9), abs=1e-6)
    assert 0.0 <= got[0] <= 1.0


def test_model_rewards_without_a_model_say_which_option_to_set():
    with pytest.raises(PolmError, match="reward_options.reward_model.model"):
        REWARDS.get("reward_model")(["x"], [{"prompt": "p"}])
    with pytest.raises(PolmError, match="reward_options.judge.model"):
        REWARDS.get("judge")(["x"], [{"prompt": "p"}])
