"""Caption metrics: CIDEr-D and BLEU by hand, and BLEU against sacrebleu."""

from __future__ import annotations

import math

import pytest

from polm.vlm.caption import cider_d, corpus_bleu, tokens


def test_tokens():
    assert tokens("A Cat, sitting.") == ["a", "cat", ",", "sitting", "."]


def test_cider_d_by_hand():
    refs = [["a b"], ["c d"]]
    # identical captions: every n-gram has df 1 of N = 2, so each sim_n with an n-gram is 1 (n = 1, 2), and
    # n = 3, 4 have no n-grams (0): 10 · (1 + 1 + 0 + 0) / 4 = 5
    assert cider_d(["a b", "c d"], refs) == pytest.approx([5.0, 5.0])
    # "a c" vs "a b": unigrams g = log2 each; Σ min·g_r = log²2, |g_c||g_r| = 2 log²2 -> 1/2; no shared
    # bigram; equal lengths (no penalty): 10 · (1/2) / 4 = 1.25
    assert cider_d(["a c", "x y"], refs)[0] == pytest.approx(1.25)
    assert cider_d(["e f", "g h"], refs) == [0.0, 0.0]


def test_cider_d_length_penalty():
    refs = [["a b c d e f g h"], ["z"]]
    long = cider_d(["a b c d e f g h", "z"], refs)[0]
    short = cider_d(["a b", "z"], refs)[0]
    assert long == pytest.approx(10.0) and short < long * math.exp(-36 / 72) + 1e-9


def test_bleu_by_hand_and_against_sacrebleu():
    assert corpus_bleu(["the cat sat on the mat"], [["the cat sat on the mat"]]) == pytest.approx(100.0)
    # 6-word candidate, 7-word reference: every n-gram matches, BP = exp(1 - 7/6)
    assert corpus_bleu(["the cat sat on the mat"], [["the cat sat on the mat ."]]) == pytest.approx(
        100 * math.exp(1 - 7 / 6))
    import sacrebleu

    cands = ["a small white dog runs on the grass", "two men play chess in a park today"]
    refs = [["a white dog runs on green grass", "a small dog running"], ["two men are playing chess in the park", "men play chess"]]
    ours = corpus_bleu(cands, refs)
    theirs = sacrebleu.corpus_bleu(cands, [list(r) for r in zip(*refs)], tokenize="none", smooth_method="none").score
    assert ours == pytest.approx(theirs, abs=1e-6) and ours > 0
