"""SliCK estimation (Gekhman et al. 2024): for each fact, `n_prompts` random k-shot prompts with same-type
exemplars; per prompt one greedy answer and `n_samples` answers at T=0.5, top-40; exact match after
normalisation gives P(T=0), P(T>0) and the category. Results are cached by (model, data, settings) hash.

All generation goes through the one Generator path (`polm.rollout`): greedy answers of all prompts in
batches, then one sampled call per fact whose prompts are each prefilled once and their KV cache expanded
to the n samples (HFGenerator). `method=teacher_forced` scores the gold answer's exact probability instead.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from polm.errors import PolmError
from polm.io import atomic_write_text, file_sha256, records_sha256
from polm.knowledge.categories import categorize, transition_matrix, transition_summary
from polm.knowledge.facts import (
    answer_text,
    draw_exemplars,
    exemplar_pools,
    fact_key,
    fewshot_prompt,
    gold_answers,
    is_correct,
)
from polm.rollout import SamplingConfig, build_generator
from polm.rollout.hf import filter_logits, left_pad, positions
from polm.rollout.text import generate_text


@dataclass
class ProbeConfig:
    n_prompts: int = 10               # N_ex: k-shot prompts per fact
    k_shot: int = 4                   # exemplars per prompt, same type, from the exemplar split
    n_samples: int = 16               # sampled answers per prompt
    temperature: float = 0.5
    top_k: int = 40
    max_new_tokens: int = 16          # an answer ends at the first newline or EOS
    method: Literal["sampling", "teacher_forced"] = "sampling"
    early_exit: bool = False          # sample only facts whose greedy answers are never correct
    validate_facts: int = 0           # teacher_forced: also sample the first N facts and report agreement
    seed: int = 0                     # draws the prompts' exemplars and the samples
    greedy_batch: int = 32            # prompts per greedy batch
    sample_batch: int = 10            # prompts per sampled batch (times n_samples rows)
    cache_dir: str = "runs/.knowledge-cache"   # "" = no cache

    def validate(self) -> None:
        for key in ("n_prompts", "k_shot", "n_samples", "max_new_tokens", "greedy_batch", "sample_batch"):
            if getattr(self, key) < 1:
                raise PolmError(f"probe.{key} must be at least 1, got {getattr(self, key)}")
        if self.temperature <= 0:
            raise PolmError(f"probe.temperature must be > 0 (the sampled answers), got {self.temperature}")

    def measured(self) -> dict[str, Any]:
        """The settings that decide the results (the cache key's part); where the cache lives does not."""
        return {k: v for k, v in asdict(self).items() if k != "cache_dir"}


def fact_seed(seed: int, fact: dict) -> int:
    """A per-fact seed: a fact's prompts and samples do not depend on which other facts are probed."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{fact_key(fact)}".encode()).digest()[:4], "little")


def build_prompts(facts: list[dict], pool: list[dict], cfg: ProbeConfig) -> list[list[str]]:
    """prompts[i][j]: the j-th k-shot prompt of facts[i], exemplars drawn from `pool` facts of its type."""
    pools = exemplar_pools(pool, cfg.k_shot, {f["type"] for f in facts})
    out = []
    for fact in facts:
        rng = random.Random(fact_seed(cfg.seed, fact))
        out.append([fewshot_prompt(fact, draw_exemplars(fact, pools[fact["type"]], cfg.k_shot, rng))
                    for _ in range(cfg.n_prompts)])
    return out


def probe_facts(model, tokenizer, facts: list[dict], pool: list[dict], cfg: ProbeConfig) -> list[dict]:
    """One result per fact: {key, question, answer, type, split, p_greedy, p_sample, category,
    greedy_answers, samples_drawn}; with `validate_facts`, the first rows also carry `sampling_category`."""
    cfg.validate()
    prompts = build_prompts(facts, pool, cfg)
    if cfg.method == "teacher_forced":
        results = teacher_forced_probe(model, tokenizer, facts, prompts, cfg)
        if cfg.validate_facts:
            n = min(cfg.validate_facts, len(facts))
            for row, check in zip(results, sampling_probe(model, tokenizer, facts[:n], prompts[:n], cfg)):
                row["sampling_category"] = check["category"]
        return results
    return sampling_probe(model, tokenizer, facts, prompts, cfg)


def _row(fact: dict) -> dict:
    return {"key": fact_key(fact), "question": fact["question"], "answer": fact["answer"], "type": fact["type"],
            "split": fact["split"]}


def sampling_probe(model, tokenizer, facts: list[dict], prompts: list[list[str]], cfg: ProbeConfig) -> list[dict]:
    """P(T=0) from one greedy answer per prompt, P(T>0) from n_samples per prompt (a fact's samples are
    one seeded call: the same whichever other facts are probed, so `early_exit` only skips calls)."""
    greedy_gen = build_generator("hf", model, tokenizer, prompts_per_batch=cfg.greedy_batch)
    flat = [p for fact_prompts in prompts for p in fact_prompts]
    greedy = SamplingConfig(n=1, temperature=0.0, max_new_tokens=cfg.max_new_tokens, stop=["\n"])
    answers = [answer_text(c[0]) for c in generate_text(greedy_gen, tokenizer, flat, greedy, seed=cfg.seed, chat=False)]
    sample_gen = build_generator("hf", model, tokenizer, prompts_per_batch=cfg.sample_batch)
    sampled = SamplingConfig(n=cfg.n_samples, temperature=cfg.temperature, top_k=cfg.top_k,
                             max_new_tokens=cfg.max_new_tokens, stop=["\n"])
    results = []
    for i, fact in enumerate(facts):
        mine = answers[i * cfg.n_prompts:(i + 1) * cfg.n_prompts]
        p_greedy = sum(is_correct(a, fact) for a in mine) / cfg.n_prompts
        p_sample, drawn = None, 0
        if not (cfg.early_exit and p_greedy > 0):   # HighlyKnown and MaybeKnown need no samples
            texts = generate_text(sample_gen, tokenizer, prompts[i], sampled, seed=fact_seed(cfg.seed, fact), chat=False)
            hits = [is_correct(answer_text(t), fact) for per_prompt in texts for t in per_prompt]
            p_sample, drawn = sum(hits) / len(hits), len(hits)
        results.append({**_row(fact), "p_greedy": p_greedy, "p_sample": p_sample,
                        "category": categorize(p_greedy, p_sample), "greedy_answers": mine, "samples_drawn": drawn})
    return results


@torch.no_grad()
def gold_scores(model, prompt_ids: list[list[int]], gold_ids: list[list[int]], temperature: float, top_k: int,
                pad_id: int, batch_size: int = 32) -> tuple[list[bool], list[float]]:
    """Per (prompt, gold) pair: whether greedy decoding emits the gold tokens (each is the argmax), and
    log P(gold | prompt) = Σ_t log softmax(top_k(logits_t / T))[gold_t], the probability that sampling at
    T with top-k (as the Generator does) emits exactly the gold tokens; -inf when one falls outside top-k."""
    device = next(model.parameters()).device
    greedy_ok, logps = [], []
    for start in range(0, len(prompt_ids), batch_size):
        seqs = [p + g for p, g in zip(prompt_ids[start:start + batch_size], gold_ids[start:start + batch_size])]
        golds = gold_ids[start:start + batch_size]
        ids, attn = left_pad(seqs, pad_id, device)
        keep = max(len(g) for g in golds) + 1
        logits = model(input_ids=ids, attention_mask=attn, position_ids=positions(attn),
                       logits_to_keep=keep).logits.float()       # [B, keep, V]; position -1 predicts nothing
        for row, gold in enumerate(golds):
            z = logits[row, keep - 1 - len(gold):keep - 1]         # [L, V]: the logits that predict gold
            target = torch.tensor(gold, device=device)
            greedy_ok.append(bool((z.argmax(-1) == target).all()))
            scaled = filter_logits(z / temperature, top_k, 1.0).log_softmax(-1)
            logps.append(float(scaled.gather(-1, target[:, None]).sum()))
    return greedy_ok, logps


def teacher_forced_probe(model, tokenizer, facts: list[dict], prompts: list[list[str]], cfg: ProbeConfig) -> list[dict]:
    """P(T=0) = fraction of prompts whose greedy decoding starts with the answer (or an alias);
    P(T>0) = mean over prompts of max over golds of P(gold | prompt) at T, top-k. WeaklyKnown when
    P(T>0) >= 1 / (n_prompts * n_samples): at least one correct answer expected in the sampling budget."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pairs = [(i, j, g) for i, fact in enumerate(facts) for j in range(cfg.n_prompts) for g in gold_answers(fact)]
    enc = {text: tokenizer(text, add_special_tokens=False)["input_ids"]
           for text in {p for per in prompts for p in per} | {" " + g for _, _, g in pairs}}
    ok, logps = gold_scores(model, [enc[prompts[i][j]] for i, j, _ in pairs], [enc[" " + g] for _, _, g in pairs],
                            cfg.temperature, cfg.top_k, pad, cfg.greedy_batch)
    best_ok = [[False] * cfg.n_prompts for _ in facts]
    best_p = [[0.0] * cfg.n_prompts for _ in facts]
    for (i, j, _), hit, lp in zip(pairs, ok, logps):
        best_ok[i][j] |= hit
        best_p[i][j] = max(best_p[i][j], math.exp(lp))
    threshold = 1.0 / (cfg.n_prompts * cfg.n_samples)
    results = []
    for i, fact in enumerate(facts):
        p_greedy, p_sample = sum(best_ok[i]) / cfg.n_prompts, sum(best_p[i]) / cfg.n_prompts
        category = categorize(p_greedy, p_sample if p_sample >= threshold else 0.0)
        results.append({**_row(fact), "p_greedy": p_greedy, "p_sample": p_sample, "category": category,
                        "greedy_answers": None, "samples_drawn": 0})
    return results


def validation_report(results: list[dict]) -> dict[str, Any]:
    """How often teacher-forced categories agree with full sampling on the validated facts."""
    rows = [r for r in results if "sampling_category" in r]
    matrix = transition_matrix({r["key"]: r["sampling_category"] for r in rows}, {r["key"]: r["category"] for r in rows})
    return {"facts": len(rows), "agreement": transition_summary(matrix)["agreement"],
            "matrix_sampling_to_teacher_forced": matrix}


# --- the cache ------------------------------------------------------------------------------------------

def model_sha256(path: str) -> str:
    """sha256 over the name and content hash of every weight, config and tokenizer file of a local model
    (an adapter adds its base's hash); a hub id hashes as its name."""
    from polm.models.load import adapter_base, resolve_path

    root = Path(resolve_path(path))
    if not root.is_dir():
        return hashlib.sha256(path.encode()).hexdigest()
    digest = hashlib.sha256()
    for p in sorted(root.iterdir()):
        if p.is_file() and p.suffix in {".safetensors", ".json", ".txt", ".model", ".jinja"}:
            digest.update(f"{p.name}:{file_sha256(p)}\n".encode())
    base = adapter_base(str(root))
    if base is not None:
        digest.update(model_sha256(base).encode())
    return digest.hexdigest()


def probe_cache_key(model_hash: str, facts: list[dict], pool: list[dict], cfg: ProbeConfig) -> str:
    """sha256 of (model hash, data hash of the probed facts and the exemplar pool, settings)."""
    data = records_sha256(facts) + records_sha256(pool)
    return hashlib.sha256(json.dumps({"model": model_hash, "data": data, "settings": cfg.measured()},
                                     sort_keys=True).encode()).hexdigest()


def cached_probe(model_ref: str, facts: list[dict], pool: list[dict], cfg: ProbeConfig, *,
                 model=None, tokenizer=None) -> tuple[list[dict], bool]:
    """(results, whether they came from the cache) of probing the model at `model_ref` (loaded only on a
    miss, unless `model` and `tokenizer` are given: then they must be the model stored at `model_ref`)."""
    cfg.validate()
    key = probe_cache_key(model_sha256(model_ref), facts, pool, cfg)
    path = Path(cfg.cache_dir) / f"probe-{key}.jsonl" if cfg.cache_dir else None
    if path is not None and path.is_file():
        return read_results(path), True
    if model is None:
        from polm.models import ModelConfig, load_model, load_tokenizer

        model, tokenizer = load_model(ModelConfig(name=model_ref)), load_tokenizer(model_ref)
    results = probe_facts(model, tokenizer, facts, pool, cfg)
    if path is not None:
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in results))
    return results, False


def read_results(path: str | Path) -> list[dict]:
    """Per-fact results from a facts.jsonl file, or from the probe directory holding one."""
    p = Path(path)
    p = p / "facts.jsonl" if p.is_dir() else p
    if not p.is_file():
        raise PolmError(f"no probe results at '{path}'", fix="Give a directory written by `polm knowledge probe` "
                                                             "or its facts.jsonl.")
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
