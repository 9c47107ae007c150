"""LLM-as-judge: pairwise win rate of model A against model B on a prompt set.

Each pair of responses is judged twice, once with A's response shown first and once with B's, so a
judge that prefers a position cancels out (Zheng et al. 2023, "Judging LLM-as-a-Judge"). The
verdict is read by loglikelihood — the most likely of "A", "B" and "tie" after the judge prompt —
so every judgement is deterministic and parseable, even from a small judge model.

Per prompt, A scores 1 for a win, 0.5 for a tie, 0 for a loss in each order; the prompt's score is
the mean of the two orders. win_rate = mean over prompts (95% bootstrap CI); a prompt whose two
verdicts disagree (position bias) counts as a tie.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from polm.eval.model import ModelAdapter, Prompt

DEFAULT_RUBRIC = ("Prefer the response that follows the user's request, is correct, and is clear and "
                  "concise. Ignore which response comes first and how long it is.")
JUDGE_TEMPLATE = """You compare two assistant responses to the same user prompt.
Rubric: {rubric}

[User prompt]
{prompt}

[Response A]
{first}

[Response B]
{second}

Which response is better according to the rubric? Reply with exactly one of: A, B, tie."""
VERDICTS = ("A", "B", "tie")


def _prompt_text(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def judge_verdicts(judge: ModelAdapter, prompts: Sequence[Prompt], firsts: Sequence[str],
                   seconds: Sequence[str], rubric: str) -> list[str]:
    """For each (prompt, first, second): "A" (first better), "B" (second better) or "tie"."""
    sep = "" if judge.chat else " "
    contexts = []
    for prompt, first, second in zip(prompts, firsts, seconds):
        text = JUDGE_TEMPLATE.format(rubric=rubric, prompt=_prompt_text(prompt), first=first, second=second)
        contexts.append(judge.format_prompt(text) + ("" if judge.chat else "\nVerdict:"))
    scores = judge.loglikelihood([(ctx, sep + v) for ctx in contexts for v in VERDICTS])
    out = []
    for i in range(len(contexts)):
        lps = [lp for lp, _ in scores[3 * i:3 * i + 3]]
        out.append(VERDICTS[max(range(3), key=lps.__getitem__)])
    return out


def pairwise_win_rate(model_a: ModelAdapter, model_b: ModelAdapter, judge: ModelAdapter,
                      prompts: Sequence[Prompt], *, rubric: str = DEFAULT_RUBRIC, max_new_tokens: int = 256,
                      seed: int = 0) -> dict[str, Any]:
    """Generate greedy responses from A and B, judge each pair in both orders, and summarise:
    {win_rate, ci_low, ci_high, n, wins, ties, losses, consistent, records}."""
    from polm.eval.stats import bootstrap_ci

    resp_a = [s[0] for s in model_a.generate(prompts, max_new_tokens=max_new_tokens, seed=seed)]
    resp_b = [s[0] for s in model_b.generate(prompts, max_new_tokens=max_new_tokens, seed=seed)]
    a_first = judge_verdicts(judge, prompts, resp_a, resp_b, rubric)
    b_first = judge_verdicts(judge, prompts, resp_b, resp_a, rubric)
    records = []
    for prompt, ra, rb, v1, v2 in zip(prompts, resp_a, resp_b, a_first, b_first):
        score = (_a_score(v1, a_is_first=True) + _a_score(v2, a_is_first=False)) / 2
        records.append({"prompt": prompt, "response_a": ra, "response_b": rb, "verdict_a_first": v1,
                        "verdict_b_first": v2, "score_a": score,
                        "outcome": "a" if score > 0.5 else "b" if score < 0.5 else "tie"})
    scores = [r["score_a"] for r in records]
    low, high = bootstrap_ci(scores, seed=seed)
    return {"model_a": model_a.name, "model_b": model_b.name, "judge": judge.name, "rubric": rubric,
            "win_rate": sum(scores) / len(scores) if scores else float("nan"), "ci_low": low, "ci_high": high,
            "n": len(records), "wins": sum(r["outcome"] == "a" for r in records),
            "ties": sum(r["outcome"] == "tie" for r in records),
            "losses": sum(r["outcome"] == "b" for r in records),
            "consistent": sum(_a_score(r["verdict_a_first"], a_is_first=True)
                              == _a_score(r["verdict_b_first"], a_is_first=False)
                              for r in records),
            "records": records}


def _a_score(verdict: str, *, a_is_first: bool) -> float:
    """Model A's score from one verdict: 1 win, 0.5 tie, 0 loss."""
    if verdict == "tie":
        return 0.5
    return float((verdict == "A") == a_is_first)
