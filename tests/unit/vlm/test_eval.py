"""VLM classification eval: few-shot prompts, exemplars never test items, log-likelihood by hand,
answer normalisation, the confusion matrix and its PNG."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from vlm_helpers import synthetic_images

from polm.errors import PolmError
from polm.ops.logprobs import IGNORE_INDEX
from polm.vlm.collate import encode_image_record
from polm.vlm.data import IMAGE_MARKER, classification_record
from polm.vlm.eval import (
    confusion_matrix,
    evaluate_classification,
    exemplar_pool,
    few_shot_record,
    label_logliks,
    normalize_answer,
    pick_exemplars,
)
from polm.vlm.features import image_inputs
from polm.vlm.model import IMAGE_TOKEN_ID
from polm.vlm.runners import ComposedRunner


def records(n, seed=0, labels=("hello", "world")):
    return [classification_record(img, labels[i % len(labels)], "What is this?", f"r{seed}:{i}")
            for i, img in enumerate(synthetic_images(n, seed, size=16))]


def test_few_shot_interleaves_exemplar_images_and_answers_before_the_query(tiny_tokenizer):
    test, pool = records(1, seed=1), records(2, seed=2)
    rec = few_shot_record(test[0], pool)
    assert [m["role"] for m in rec["messages"]] == ["user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in rec["messages"][1::2]] == ["hello", "world"]
    assert all(m["content"] == f"{IMAGE_MARKER}\nWhat is this?" for m in rec["messages"][0::2])
    assert [img is x for img, x in zip(rec["images"], [pool[0]["images"][0], pool[1]["images"][0],
                                                       test[0]["images"][0]])] == [True] * 3
    ex = encode_image_record(rec, tiny_tokenizer, 4, max_length=500, generation_prompt=True)
    assert ex["input_ids"].count(IMAGE_TOKEN_ID) == 12
    assert tiny_tokenizer.decode(ex["input_ids"][-10:]).endswith("<|im_start|>assistant\n")


def test_exemplars_are_never_test_items():
    test = records(6, seed=1)
    copies = [dict(r, where="copy") for r in test[:3]]   # the same pixels under another name
    pool, removed = exemplar_pool(records(4, seed=2) + copies, test)
    assert removed == 3 and len(pool) == 4
    test_pixels = {r["images"][0].tobytes() for r in test}
    for picked in pick_exemplars(pool, len(test), 3, seed=0):
        assert len(picked) == 3 and not {e["images"][0].tobytes() for e in picked} & test_pixels
    with pytest.raises(PolmError, match="needs at least 2 exemplars outside the test set, the pool has 0"):
        pick_exemplars(exemplar_pool(copies, test)[0], 6, 2, seed=0)


def test_answer_normalisation():
    assert normalize_answer("  Ankle   boot.\n") == "ankle boot" == normalize_answer("ankle boot")
    assert normalize_answer("T-shirt/top") == "t-shirt/top"


def test_label_loglik_is_the_sum_over_label_and_end_tokens(vlm, tiny_tokenizer):
    test = records(3)
    inputs = image_inputs(vlm.tower, None)
    runner = ComposedRunner(vlm, tiny_tokenizer, inputs)
    scores = label_logliks(runner, test, ["hello", "world"], max_length=200, batch_size=4)
    assert scores.shape == (3, 2)
    # by hand for item 1, label "world": one unpadded sequence, log-softmax of the logits at each target
    ex = encode_image_record({**test[1], "messages": [test[1]["messages"][0], {"role": "assistant",
                              "content": "world"}]}, tiny_tokenizer, vlm.spec.tokens_per_image, max_length=200)
    ids = torch.tensor([ex["input_ids"]])
    with torch.no_grad():
        logits = vlm(ids, pixel_values=inputs(ex["images"])["pixel_values"]).logits[0]
    logp = torch.log_softmax(logits.double(), -1)
    total = sum(logp[t - 1, ex["input_ids"][t]].item() for t in range(1, len(ids[0])) if ex["labels"][t] != IGNORE_INDEX)
    n_targets = sum(label != IGNORE_INDEX for label in ex["labels"])
    assert n_targets == len(tiny_tokenizer("world<|im_end|>", add_special_tokens=False)["input_ids"])
    assert scores[1, 1].item() == pytest.approx(total, abs=1e-4)
    batch_of_one = label_logliks(runner, test[1:2], ["hello", "world"], max_length=200)
    torch.testing.assert_close(batch_of_one[0], scores[1], atol=1e-4, rtol=0)   # padding changes nothing


def test_a_k_shot_score_counts_the_final_answer_only(tiny_tokenizer, vlm):
    from polm.vlm.eval import final_answer_only

    runner = ComposedRunner(vlm, tiny_tokenizer, image_inputs(vlm.tower, None))
    rec = few_shot_record(records(1, seed=5)[0], records(2, seed=6))
    ex = runner.encode({**rec, "messages": [*rec["messages"], {"role": "assistant", "content": "thanks"}]},
                       max_length=300)
    assert tiny_tokenizer.decode([t for t in ex["labels"] if t != IGNORE_INDEX]) == (
        "hello<|im_end|>world<|im_end|>thanks<|im_end|>")
    kept = final_answer_only(ex)["labels"]
    assert tiny_tokenizer.decode([t for t in kept if t != IGNORE_INDEX]) == "thanks<|im_end|>"


def test_confusion_matrix_counts_and_other_column():
    counts = confusion_matrix(["a", "a", "b", "b"], ["a", "b", "b", None], ["a", "b"])
    assert counts.tolist() == [[1, 1, 0], [0, 1, 1]]


def test_evaluate_writes_results_and_confusion_pngs(vlm, tiny_tokenizer, tmp_path):
    test, pool = records(4, seed=1), records(4, seed=2)
    results = evaluate_classification(ComposedRunner(vlm, tiny_tokenizer, image_inputs(vlm.tower, None)), test,
                                      pool + test[:1], tmp_path, shots=[0, 1], methods=["exact_match", "loglik"], max_length=300,
                                      max_new_tokens=4)
    assert set(results) == {"exact_match/0shot", "loglik/0shot", "exact_match/1shot", "loglik/1shot"}
    data = json.loads((tmp_path / "eval" / "vlm_loglik_1shot.json").read_text())
    assert data["n"] == 4 and data["pool_removed_test_images"] == 1 and data["classes"] == ["hello", "world"]
    assert all(len(item["exemplars"]) == 1 and item["exemplars"][0].startswith("r2:") for item in data["items"])
    assert all(item["predicted"] in ("hello", "world") for item in data["items"])
    assert np.array(data["confusion"]).sum() == 4
    assert data["value"] == pytest.approx(np.mean([i["correct"] for i in data["items"]]))
    for name in results:
        method, shots = name.split("/")
        assert (tmp_path / "plots" / f"confusion_{method}_{shots}.png").stat().st_size > 1000


def test_captioning_scores_the_greedy_captions_with_cider_and_bleu(vlm, tiny_tokenizer, tmp_path):
    from polm.vlm.caption import cider_d, corpus_bleu
    from polm.vlm.eval import evaluate_captioning

    test = [dict(r, references=["good morning", "hello world"]) for r in records(3, seed=1)]
    results = evaluate_captioning(ComposedRunner(vlm, tiny_tokenizer, image_inputs(vlm.tower, None)), test,
                                  records(3, seed=2) + test[:1], tmp_path, shots=[0, 1], max_length=300,
                                  max_new_tokens=4)
    assert set(results) == {"caption/0shot", "caption/1shot"}
    data = json.loads((tmp_path / "eval" / "vlm_caption_1shot.json").read_text())
    captions = [i["caption"] for i in data["items"]]
    refs = [i["references"] for i in data["items"]]
    assert refs == [["good morning", "hello world"]] * 3 and data["pool_removed_test_images"] == 1
    assert [i["cider_d"] for i in data["items"]] == pytest.approx(cider_d(captions, refs))
    assert data["value"] == pytest.approx(np.mean(cider_d(captions, refs))) and data["metric"] == "cider_d"
    assert data["bleu"] == pytest.approx(corpus_bleu(captions, refs))
    assert all(i["exemplars"][0].startswith("r2:") for i in data["items"])


def test_shared_prefix_scores_equal_whole_sequences(vlm, tiny_tokenizer):
    from polm.vlm.eval import final_answer_only, full_sequence_logliks, query_turns

    runner = ComposedRunner(vlm, tiny_tokenizer, image_inputs(vlm.tower, None))
    labels = ["hello", "good morning", "world", "thanks"]
    for rec in (records(1)[0], few_shot_record(records(1, seed=5)[0], records(2, seed=6))):
        pairs = [final_answer_only(runner.encode({**rec, "messages": [*query_turns(rec)[0],
                                                                      {"role": "assistant", "content": lab}]},
                                                 max_length=300)) for lab in labels]
        torch.testing.assert_close(runner.score_shared_prefix(pairs), full_sequence_logliks(runner, pairs, 2),
                                   atol=1e-4, rtol=0)


def test_a_test_label_outside_the_label_set_is_a_clear_error(vlm, tiny_tokenizer, tmp_path):
    with pytest.raises(PolmError, match="1 test label\\(s\\) are not in eval.labels, e.g. 'world'"):
        evaluate_classification(ComposedRunner(vlm, tiny_tokenizer, image_inputs(vlm.tower, None)), records(2), [],
                                tmp_path, shots=[0], methods=["loglik"], labels=["hello", "thanks"])
