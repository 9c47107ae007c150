"""Evaluating a VLM on image classification: zero-shot and k-shot, by exact match and by log-likelihood.

- k-shot: k (image, question, answer) exemplars as earlier chat turns before the query, drawn per item
  from a pool with every image of the test set removed (by pixel hash), so no test image is an exemplar.
- exact match: the greedy answer (up to the end-of-turn token), normalised (case, surrounding space and
  punctuation), equals the label.
- log-likelihood: the label whose tokens + end-of-turn token get the highest Σ log p is the prediction
  (a constrained choice over the label set, as lm-evaluation-harness's multiple choice).
Each (method, k) gives accuracy with a bootstrap 95% CI, per-item predictions and a confusion matrix PNG.
`runner` is either family's polm.vlm.runners wrapper.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polm.errors import PolmError
from polm.eval.stats import summarize
from polm.io import atomic_file, atomic_write_json
from polm.ops.logprobs import IGNORE_INDEX, causal_targets, token_logprobs
from polm.vlm.images import image_hash

METHODS = ("exact_match", "loglik")


def normalize_answer(text: str) -> str:
    """Lower case, inner whitespace collapsed, surrounding whitespace and punctuation stripped."""
    return re.sub(r"\s+", " ", text).strip().strip(".,;:!?\"'").strip().lower()


def label_of(record: dict) -> str | None:
    """The record's class: its 'label' field, else its final assistant turn."""
    if record.get("label") is not None:
        return str(record["label"])
    last = record["messages"][-1]
    return last["content"] if last["role"] == "assistant" else None


def query_turns(record: dict) -> tuple[list[dict], list]:
    """(the record's turns up to its final answer, its images): the question to ask."""
    messages = record["messages"]
    turns = messages[:-1] if messages[-1]["role"] == "assistant" else messages
    return [dict(t) for t in turns], list(record["images"])


def few_shot_record(record: dict, exemplars: list[dict]) -> dict:
    """The query preceded by each exemplar's question and answer as earlier turns (interleaved images)."""
    turns, images = [], []
    for ex in exemplars:
        question, ex_images = query_turns(ex)
        answer = ex["messages"][-1]["content"] if ex["messages"][-1]["role"] == "assistant" else ex["label"]
        turns += [*question, {"role": "assistant", "content": answer}]
        images += ex_images
    question, q_images = query_turns(record)
    return {"messages": [*turns, *question], "images": [*images, *q_images], "where": record.get("where"),
            "label": label_of(record)}


def exemplar_pool(pool: list[dict], test: list[dict]) -> tuple[list[dict], int]:
    """(pool records none of whose images is a test image, how many were removed)."""
    test_hashes = {image_hash(img) for r in test for img in r["images"]}
    kept = [r for r in pool if not any(image_hash(img) in test_hashes for img in r["images"])]
    return kept, len(pool) - len(kept)


def pick_exemplars(pool: list[dict], n_items: int, k: int, seed: int) -> list[list[dict]]:
    """k exemplars per test item, drawn without replacement from `pool` (seeded)."""
    if k == 0:
        return [[] for _ in range(n_items)]
    if len(pool) < k:
        raise PolmError(f"{k}-shot evaluation needs at least {k} exemplars outside the test set, the pool has "
                        f"{len(pool)}", where="eval.exemplars",
                        fix="Give eval.exemplars a source disjoint from eval.data (e.g. the training split).")
    rng = random.Random(seed)
    return [rng.sample(pool, k) for _ in range(n_items)]


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


@torch.no_grad()
def predict_greedy(runner, records: list[dict], *, max_length: int, max_new_tokens: int = 16,
                   batch_size: int = 8) -> list[str]:
    """The greedy answer to each record's question, cut at the end-of-turn token (runner: polm.vlm.runners)."""
    answers = []
    for chunk in _batches(records, batch_size):
        examples = [runner.encode(r, max_length=max_length, generation_prompt=True) for r in chunk]
        out = runner.generate(runner.collate(examples, left_pad=True), max_new_tokens)
        for row in out.tolist():
            row = row[:row.index(runner.end_id)] if runner.end_id in row else row
            answers.append(runner.tokenizer.decode(row, skip_special_tokens=True))
    return answers


@torch.no_grad()
def label_logliks(runner, records: list[dict], labels: list[str], *, max_length: int,
                  batch_size: int = 8) -> torch.Tensor:
    """[n_records, n_labels]: Σ log p(label tokens + end-of-turn | the record's question, images). A runner
    with `score_shared_prefix` runs each record's prompt once for all labels."""
    pairs = [runner.encode({**r, "messages": [*query_turns(r)[0], {"role": "assistant", "content": lab}],
                            "images": r["images"]}, max_length=max_length)
             for r in records for lab in labels]
    if any(p is None for p in pairs):
        raise PolmError("a label has no token left after truncation", fix="Raise data.max_length.")
    pairs = [final_answer_only(p) for p in pairs]   # k-shot exemplars' answers are context, not the score
    shared = getattr(runner, "score_shared_prefix", None)
    if shared is not None:
        n = len(labels)
        return torch.stack([shared(pairs[i * n:(i + 1) * n]) for i in range(len(records))])
    return full_sequence_logliks(runner, pairs, batch_size).view(len(records), len(labels))


def final_answer_only(example: dict) -> dict:
    """The example with labels on its last run of target tokens only (the final answer)."""
    labels = list(example["labels"])
    end = max(t for t, lab in enumerate(labels) if lab != IGNORE_INDEX)
    start = end
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return {**example, "labels": [lab if start <= t <= end else IGNORE_INDEX for t, lab in enumerate(labels)]}


def full_sequence_logliks(runner, pairs: list[dict], batch_size: int) -> torch.Tensor:
    """Σ log p over each encoded example's target tokens [n], whole sequences `batch_size` at a time."""
    scores = []
    for chunk in _batches(pairs, batch_size):
        batch = runner.collate(chunk)
        targets = causal_targets(batch["labels"])
        per_token = token_logprobs(runner.logits(batch), targets)
        scores.append(per_token.masked_fill(targets == IGNORE_INDEX, 0.0).sum(-1).cpu())
    return torch.cat(scores)


def confusion_matrix(truth: list[str], predicted: list[str | None], classes: list[str]) -> np.ndarray:
    """counts[i, j] = items of class i predicted as class j; the last column counts answers outside `classes`."""
    index = {c: i for i, c in enumerate(classes)}
    counts = np.zeros((len(classes), len(classes) + 1), dtype=np.int64)
    for t, p in zip(truth, predicted):
        counts[index[t], index.get(p, len(classes)) if p is not None else len(classes)] += 1
    return counts


def plot_confusion(counts: np.ndarray, classes: list[str], title: str, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(classes)
    fig = Figure(figsize=(1.2 + 0.6 * (n + 1), 1.0 + 0.6 * n), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(n + 1), [*classes, "other"], rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    for (i, j), value in np.ndenumerate(counts):
        ax.text(j, i, str(value), ha="center", va="center", fontsize=8,
                color="white" if value > counts.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def evaluate_classification(runner, test: list[dict], pool: list[dict], out_dir: Path, *, shots: list[int], methods: list[str], labels: list[str] | None = None,
                            max_length: int = 512, max_new_tokens: int = 16, batch_size: int = 8,
                            seed: int = 0) -> dict[str, Any]:
    """Every (method, k): accuracy with CI -> out_dir/eval/vlm_<method>_<k>shot.json and
    out_dir/plots/confusion_<method>_<k>shot.png. Returns {"<method>/<k>shot": summary}."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise PolmError(f"unknown eval method '{unknown[0]}'", where="eval.methods", fix=f"Use {' or '.join(METHODS)}.")
    test = [{**r, "label": label_of(r)} for r in test]
    if any(r["label"] is None for r in test):
        raise PolmError("every evaluation record needs a 'label' or an answer (its class name)", where="eval.data")
    classes = labels or sorted({r["label"] for r in test})
    outside = sorted({r["label"] for r in test} - set(classes))
    if outside:
        raise PolmError(f"{len(outside)} test label(s) are not in eval.labels, e.g. {outside[0]!r}", where="eval.labels",
                        fix="List every class of eval.data in eval.labels, or set eval.labels=null to use the test set's.")
    kept_pool, removed = exemplar_pool(pool, test)
    runner.eval()
    results = {}
    for k in shots:
        exemplars = pick_exemplars(kept_pool, len(test), k, seed + k)
        queries = [few_shot_record(r, ex) for r, ex in zip(test, exemplars)]
        for method in methods:
            if method == "exact_match":
                answers = predict_greedy(runner, queries, max_length=max_length, max_new_tokens=max_new_tokens,
                                         batch_size=batch_size)
                by_norm = {normalize_answer(c): c for c in classes}
                predicted = [by_norm.get(normalize_answer(a)) for a in answers]
            else:
                scores = label_logliks(runner, queries, classes, max_length=max_length, batch_size=batch_size)
                answers = predicted = [classes[i] for i in scores.argmax(dim=1).tolist()]
            correct = [float(p == r["label"]) for p, r in zip(predicted, test)]
            summary = {**summarize(correct, seed=seed), "method": method, "shots": k, "classes": classes,
                       "pool_removed_test_images": removed}
            name = f"{method}_{k}shot"
            counts = confusion_matrix([r["label"] for r in test], predicted, classes)
            plot_confusion(counts, classes, f"{method}, {k}-shot: accuracy {summary['value']:.1%}",
                           Path(out_dir) / "plots" / f"confusion_{name}.png")
            items = [{"where": r.get("where"), "label": r["label"], "answer": a, "predicted": p, "correct": c,
                      "exemplars": [e.get("where") for e in ex]}
                     for r, a, p, c, ex in zip(test, answers, predicted, correct, exemplars)]
            atomic_write_json(Path(out_dir) / "eval" / f"vlm_{name}.json",
                              {**summary, "confusion": counts.tolist(), "items": items})
            results[f"{method}/{k}shot"] = summary
    return results


def references_of(record: dict) -> list[str]:
    """The reference captions of a record: its 'references' list, else its final assistant turn."""
    refs = record.get("references")
    if isinstance(refs, list) and refs and all(isinstance(r, str) for r in refs):
        return refs
    label = label_of(record)
    if label is None:
        raise PolmError("a captioning record needs 'references' (a list of strings) or an answer",
                        where=record.get("where"))
    return [label]


def evaluate_captioning(runner, test: list[dict], pool: list[dict], out_dir: Path, *, shots: list[int], max_length: int = 512, max_new_tokens: int = 32,
                        batch_size: int = 8, seed: int = 0) -> dict[str, Any]:
    """Greedy captions, zero- and k-shot: CIDEr-D (mean with a bootstrap CI over images) and corpus BLEU ->
    out_dir/eval/vlm_caption_<k>shot.json. Returns {"caption/<k>shot": summary}."""
    from polm.vlm.caption import cider_d, corpus_bleu

    references = [references_of(r) for r in test]
    kept_pool, removed = exemplar_pool(pool, test)
    runner.eval()
    results = {}
    for k in shots:
        exemplars = pick_exemplars(kept_pool, len(test), k, seed + k)
        queries = [few_shot_record(r, ex) for r, ex in zip(test, exemplars)]
        captions = predict_greedy(runner, queries, max_length=max_length, max_new_tokens=max_new_tokens,
                                  batch_size=batch_size)
        per_item = cider_d(captions, references)
        summary = {**summarize(per_item, seed=seed), "metric": "cider_d", "bleu": corpus_bleu(captions, references),
                   "shots": k, "pool_removed_test_images": removed}
        items = [{"where": r.get("where"), "references": refs, "caption": c, "cider_d": s,
                  "exemplars": [e.get("where") for e in ex]}
                 for r, refs, c, s, ex in zip(test, references, captions, per_item, exemplars)]
        atomic_write_json(Path(out_dir) / "eval" / f"vlm_caption_{k}shot.json", {**summary, "items": items})
        results[f"caption/{k}shot"] = summary
    return results
