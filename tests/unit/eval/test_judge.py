"""LLM-as-judge: both orders are judged, position bias cancels, ties are counted."""

from __future__ import annotations

import re

import pytest

from polm.eval.judge import judge_verdicts, pairwise_win_rate


class Responder:
    """A model double answering every prompt with responses[i]."""

    chat = False

    def __init__(self, name, responses):
        self.name, self.responses = name, responses

    def generate(self, prompts, **kwargs):
        return [[self.responses[i]] for i in range(len(prompts))]


class Judge:
    """A judge double: `prefer(first, second)` returns the verdict it should give."""

    chat = False
    name = "judge"

    def __init__(self, prefer):
        self.prefer, self.contexts = prefer, []

    def format_prompt(self, text):
        return text

    def loglikelihood(self, requests):
        out = []
        for ctx, cont in requests:
            first = re.search(r"\[Response A\]\n(.*?)\n\n\[Response B\]", ctx, re.S).group(1)
            second = re.search(r"\[Response B\]\n(.*?)\n\nWhich", ctx, re.S).group(1)
            self.contexts.append(ctx)
            out.append((0.0 if cont.strip() == self.prefer(first, second) else -5.0, False))
        return out


def test_a_content_preferring_judge_counts_wins_and_losses():
    a = Responder("A", ["good answer", "bad answer", "good answer"])
    b = Responder("B", ["bad answer", "good answer", "good answer"])
    judge = Judge(lambda f, s: "A" if "good" in f and "good" not in s else "B" if "good" in s and "good" not in f else "tie")
    res = pairwise_win_rate(a, b, judge, ["p1", "p2", "p3"])
    assert [r["outcome"] for r in res["records"]] == ["a", "b", "tie"]
    assert res["win_rate"] == pytest.approx(0.5) and (res["wins"], res["ties"], res["losses"]) == (1, 1, 1)
    assert res["consistent"] == 3
    assert len(judge.contexts) == 3 * 2 * 3   # 3 prompts × 2 orders × 3 verdict options


def test_position_bias_cancels_out():
    a = Responder("A", ["good", "good"])
    b = Responder("B", ["bad", "bad"])
    always_first = Judge(lambda f, s: "A")
    res = pairwise_win_rate(a, b, always_first, ["p1", "p2"])
    assert res["win_rate"] == 0.5 and res["ties"] == 2 and res["consistent"] == 0


def test_verdict_is_the_most_likely_label_of_a_real_judge(tiny_llama, tiny_tokenizer):
    from polm.eval.judge import JUDGE_TEMPLATE, VERDICTS
    from polm.eval.model import ModelAdapter

    judge = ModelAdapter(tiny_llama, tiny_tokenizer, chat="false")
    [verdict] = judge_verdicts(judge, ["What is 12 + 7?"], ["19"], ["20"], "Be correct.")
    ctx = JUDGE_TEMPLATE.format(rubric="Be correct.", prompt="What is 12 + 7?", first="19", second="20")
    lps = [lp for lp, _ in judge.loglikelihood([(ctx + "\nVerdict:", " " + v) for v in VERDICTS])]
    assert verdict == VERDICTS[max(range(3), key=lps.__getitem__)]
