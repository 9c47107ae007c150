"""Preference records: validation messages, counted skips, prompt tokens excluded from the loss."""

from __future__ import annotations

import json

import pytest

from polm.data.preferences import encode_pairs, encode_unpaired, load_preferences, mismatched, validate_pair
from polm.data.templating import IGNORE_INDEX
from polm.errors import PolmError


def write(tmp_path, rows) -> str:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join((json.dumps(r) if not isinstance(r, str) else r) + "\n" for r in rows))
    return str(path)


GOOD = {"prompt": "What is 12 + 7?", "chosen": "The answer is 19.", "rejected": "The answer is 7."}


@pytest.mark.parametrize("record,message", [
    ({"prompt": "hi", "chosen": "a"}, "field 'rejected' is missing"),
    ({"prompt": "hi", "chosen": "same", "rejected": "same "}, "identical"),
    ({"prompt": "hi", "chosen": "  ", "rejected": "b"}, "field 'chosen' is empty"),
    ({"prompt": "hi", "chosen": 3, "rejected": "b"}, "field 'chosen' must be a string"),
    ({"prompt": [{"role": "usr", "content": "x"}], "chosen": "a", "rejected": "b"}, "not a known role"),
    ({"prompt": "hi", "completion": "a", "label": True, "chosen": "a"}, "loss=kto"),
    ({"prompt": "hi", "chosen": "a", "rejected": "b", "margin": "big"}, "field 'margin' must be a number"),
])
def test_bad_pairs_name_file_line_and_field(tmp_path, record, message):
    path = write(tmp_path, [GOOD, record])
    with pytest.raises(PolmError, match=message) as err:
        load_preferences(path)
    assert err.value.where.startswith(f"{path}:2")


def test_skip_invalid_counts_instead_of_stopping(tmp_path):
    path = write(tmp_path, [GOOD, {"prompt": "x", "chosen": "a", "rejected": "a"}, "{not json", GOOD])
    loaded = load_preferences(path, skip_invalid=True)
    assert len(loaded.records) == 2
    assert [where for where, _ in loaded.skipped] == [f"{path}:2", f"{path}:3"]


def test_implicit_prompt_conversations_are_split():
    user = {"role": "user", "content": "What is 12 + 7?"}
    pair = validate_pair({"chosen": [user, {"role": "assistant", "content": "19"}],
                          "rejected": [user, {"role": "assistant", "content": "7"}]}, "x:1")
    assert pair == {"prompt": [user], "chosen": "19", "rejected": "7"}


def test_labels_cover_only_the_completion(tiny_tokenizer):
    pairs, stats = encode_pairs([validate_pair(GOOD, "x:1")], tiny_tokenizer, max_length=128)
    chosen = pairs[0]["chosen"]
    prompt_text = tiny_tokenizer.apply_chat_template([{"role": "user", "content": GOOD["prompt"]}], tokenize=False,
                                                     add_generation_prompt=True)
    n_prompt = len(tiny_tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    assert chosen["prompt_len"] == n_prompt
    assert set(chosen["labels"][:n_prompt]) == {IGNORE_INDEX}
    target = [t for t in chosen["labels"] if t != IGNORE_INDEX]
    assert tiny_tokenizer.decode(target) == "The answer is 19.<|im_end|>"
    # the two sides share the prompt tokens exactly
    assert pairs[0]["rejected"]["input_ids"][:n_prompt] == chosen["input_ids"][:n_prompt]


def test_earlier_assistant_turns_stay_in_the_prompt(tiny_tokenizer):
    prompt = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "good morning"},
              {"role": "user", "content": "What is 12 + 7?"}]
    pairs, _ = encode_pairs([validate_pair({**GOOD, "prompt": prompt}, "x:1")], tiny_tokenizer, max_length=128)
    target = [t for t in pairs[0]["chosen"]["labels"] if t != IGNORE_INDEX]
    assert tiny_tokenizer.decode(target) == "The answer is 19.<|im_end|>"


def test_prompt_longer_than_max_length_is_counted_not_nan(tiny_tokenizer):
    long = {**GOOD, "prompt": "hello world " * 40}
    pairs, stats = encode_pairs([validate_pair(GOOD, "a"), validate_pair(long, "b")], tiny_tokenizer, max_length=24)
    assert stats.kept == 1 and stats.prompt_too_long == 1
    assert "1 skipped: prompt longer than data.max_length" in stats.summary()
    assert all(sum(t != IGNORE_INDEX for t in p[k]["labels"]) > 0 for p in pairs for k in ("chosen", "rejected"))


def test_pairs_become_kto_examples_and_kl_samples_mismatch(tmp_path, tiny_tokenizer):
    path = write(tmp_path, [GOOD, {"prompt": "hello", "completion": "good morning", "label": False}])
    records = load_preferences(path, unpaired=True).records
    assert [r["label"] for r in records] == [True, False, False]
    examples, _ = encode_unpaired(records, tiny_tokenizer, max_length=128)
    kl = mismatched(examples, 128)
    # sample 0 = prompt of example 0 + completion of example 1
    k0, k1 = examples[0]["prompt_len"], examples[1]["prompt_len"]
    assert kl[0]["input_ids"] == examples[0]["input_ids"][:k0] + examples[1]["input_ids"][k1:]
    assert kl[0]["labels"][:k0] == [IGNORE_INDEX] * k0


def test_kto_label_must_be_boolean(tmp_path):
    path = write(tmp_path, [{"prompt": "hi", "completion": "a", "label": "yes"}])
    with pytest.raises(PolmError, match="field 'label' must be true or false"):
        load_preferences(path, unpaired=True)


# --- builders (polm data preferences) ------------------------------------------------------------

def test_wrong_final_number_changes_only_the_last_number():
    import random

    from polm.data.cli import wrong_final_number

    text = "12 + 7 = 19\nAnswer: 19"
    out = wrong_final_number(text, random.Random(0))
    assert out.startswith("12 + 7 = 19\nAnswer: ") and out != text
    assert int(out.rsplit(" ", 1)[1]) != 19
    assert wrong_final_number("no digits here", random.Random(0)) is None


def test_truncated_reasoning_drops_the_answer():
    from polm.data.cli import truncated_reasoning

    assert truncated_reasoning("a = 1\nb = 2\nc = 3\nd = 4\nAnswer: 4") == "a = 1\nb = 2"
    assert truncated_reasoning("Answer: 4") is None


def test_pair_by_score_pairs_best_with_worse_distinct_texts():
    import random

    from polm.data.cli import pair_by_score

    samples = ["Answer: 3", "Answer: 3 ", "Answer: 4", "Answer: 5", "Answer: 4"]
    pairs = pair_by_score(samples, [1.0, 1.0, 0.0, 0.0, 0.0], k=5, rng=random.Random(0))
    # one distinct correct text, so one pair; its rejected side is a wrong answer
    assert len(pairs) == 1 and samples[pairs[0][0]].strip() == "Answer: 3" and pairs[0][1] in (2, 3, 4)


def test_judge_keeps_only_order_consistent_verdicts():
    from polm.data.cli import agreed_winner

    assert agreed_winner("A", "B") == 0 and agreed_winner("B", "A") == 1
    assert agreed_winner("A", "A") is None and agreed_winner("tie", "B") is None


def test_references_builder_writes_pairs_with_provenance(tmp_path, capsys):
    from polm.cli import main

    src = tmp_path / "refs.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"What is {a} + 2?", "completion": f"{a} + 2 = {a + 2}\nAnswer: {a + 2}",
                                       "id": a}) + "\n" for a in range(6)))
    out = tmp_path / "pairs.jsonl"
    assert main(["data", "preferences", "references", "--data", str(src), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and {r["perturbation"] for r in rows} == {"wrong-number", "truncate"}
    assert all(r["builder"] == "references" and r["record"] == i for i, r in enumerate(rows))
    assert rows[1]["rejected"] == "1 + 2 = 3"          # truncated: the answer line is gone
    assert rows[0]["rejected"].startswith("0 + 2 = 2\nAnswer: ") and rows[0]["rejected"] != rows[0]["chosen"]
    # the output is valid training data
    assert len(load_preferences(str(out)).records) == 6


def test_prompt_suffix_reaches_every_prompt_string_or_chat(tmp_path):
    from polm.cli import main
    from polm.data.templating import with_suffix

    src = tmp_path / "refs.jsonl"
    src.write_text(json.dumps({"prompt": "What is 1 + 2?", "completion": "1 + 2 = 3\nAnswer: 3"}) + "\n")
    out = tmp_path / "pairs.jsonl"
    assert main(["data", "preferences", "references", "--data", str(src), "--out", str(out),
                 "--prompt-suffix", "Reply as 'Answer: <n>'."]) == 0
    assert json.loads(out.read_text())["prompt"] == "What is 1 + 2?\nReply as 'Answer: <n>'."
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "2 + 2?"}]
    assert with_suffix(turns, "S")[-1]["content"] == "2 + 2?\nS" and turns[-1]["content"] == "2 + 2?"
    assert with_suffix(turns, "S")[1]["content"] == "Hi"


def test_held_out_split_keeps_each_prompt_on_one_side():
    from polm.data.preferences import split_by_prompt

    records = [{"prompt": f"q{i // 2}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(20)]   # 2 pairs per prompt
    train, held = split_by_prompt(records, 0.2, seed=0)
    assert len(held) == 4 and len(train) == 16
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    assert split_by_prompt(records, 0.2, seed=0) == (train, held)                # seeded
    assert split_by_prompt(records[:2], 0.5, seed=0) == (records[:2], [])        # one prompt: nothing to hold out
    assert split_by_prompt(records, 0.0, seed=0) == (records, [])


def test_onpolicy_pairs_need_a_verified_chosen_unless_asked(monkeypatch):
    """Chosen = a sample scoring >= --min-chosen-score (1.0: verified correct), rejected = a lower-scored one."""
    import argparse

    import polm.generate
    import polm.rollout
    import polm.rollout.text
    import polm.verify
    from polm.data.cli import onpolicy_pairs

    samples = {"p1": ["right", "wrong", "wrong"], "p2": ["closer", "wrong", "wrong"], "p3": ["wrong"] * 3}
    scores = {"right": 1.0, "closer": 0.5, "wrong": 0.0}
    monkeypatch.setattr(polm.generate, "load_for_inference", lambda name: (None, None))
    monkeypatch.setattr(polm.rollout, "build_generator", lambda backend, m, t, **kw: None)
    monkeypatch.setattr(polm.rollout.text, "generate_text", lambda g, t, prompts, s, **kw: [samples[p] for p in prompts])
    monkeypatch.setattr(polm.verify, "score_response", lambda text, record: scores[text])
    records = [{"prompt": p, "answer": "x"} for p in samples]
    args = argparse.Namespace(model="m", data="d", max_new_tokens=8, temperature=0.8, num_samples=3, batch_size=4,
                              seed=0, pairs_per_prompt=1, min_chosen_score=1.0)
    pairs, stats = onpolicy_pairs(records, args)
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [("p1", "right", "wrong")]
    assert stats["best_below_min_chosen_score"] == 1 and stats["none_correct"] == 1
    args.min_chosen_score = 0.0
    pairs, _ = onpolicy_pairs(records, args)
    assert [(p["chosen"], p["chosen_score"], p["rejected_score"]) for p in pairs] == [("right", 1.0, 0.0),
                                                                                      ("closer", 0.5, 0.0)]
