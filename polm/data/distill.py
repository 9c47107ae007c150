"""Sequence-level knowledge distillation (Kim & Rush 2016): a teacher's generations written as an SFT
dataset (JSONL, one prompt/completion record per kept generation, with provenance).

    polm data distill configs/distill_data.yaml teacher=runs/sft-lora/final
    polm sft configs/sft_lora.yaml data.train=runs/data/seqkd.jsonl     # the student learns the teacher's outputs

Generation goes through the shared generator (polm.rollout: HFGenerator + generate_text), greedy
(temperature 0) or sampled (n per prompt). With `verify` and records that carry an answer (GSM8K,
reasoning-gym), only generations the record's verifier (polm.verify.score_response) scores at least
`min_score` are kept. The file and its `.stats.json` are written atomically.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from polm.config import config_from_args
from polm.data.loaders import load_records
from polm.data.templating import prompt_of, with_suffix
from polm.errors import PolmError
from polm.io import atomic_write_json, atomic_write_text


@dataclass
class SequenceKDConfig:
    teacher: str = ""                  # a polm output (runs/sft/final), local directory, embedded name or hub id
    data: str = "builtin:reasoning-gym/basic_arithmetic?n=500&seed=7"
    out: str = "runs/data/seqkd.jsonl"
    limit: int = 0                     # use the first N records (0: all)
    chat: bool = True                  # the teacher's chat template around each prompt
    prompt_suffix: str = ""            # appended to each prompt on a new line (also in the written prompt)
    n: int = 1                         # generations per prompt
    temperature: float = 0.0           # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    seed: int = 0
    batch_size: int = 16               # prompts decoded together
    verify: bool = True                # keep only verified generations when a record carries an answer
    min_score: float = 1.0
    device: str = "auto"

    def validate(self) -> None:
        if not self.teacher:
            raise PolmError("no teacher model is given", where="teacher",
                            fix="Set teacher=<a polm output such as runs/sft/final, a directory or a model name>")
        self.sampling().validate()

    def sampling(self):
        from polm.rollout.base import SamplingConfig

        return SamplingConfig(n=self.n, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                              top_p=self.top_p, top_k=self.top_k)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(SequenceKDConfig, args)
    rows, stats = sequence_kd(cfg)
    print(f"wrote {len(rows)} teacher completions to {cfg.out} ({stats})")
    return 0


def teacher_fingerprint(ref: str) -> str:
    """sha256 of the teacher's `polm.models.frozen.model_fingerprint` (files, sizes, mtimes; or the hub id)."""
    from polm.models.frozen import model_fingerprint
    from polm.models.load import resolve_path

    return hashlib.sha256(json.dumps(model_fingerprint(resolve_path(ref)), sort_keys=True).encode()).hexdigest()


def sequence_kd(cfg: SequenceKDConfig) -> tuple[list[dict], dict]:
    """(the records written, stats): generate from the teacher, filter by verifier, write JSONL."""
    from polm.models.frozen import FrozenModel
    from polm.rollout import build_generator
    from polm.rollout.text import generate_text

    records = load_records(cfg.data, require_targets=False, allowed={"prompt_completion", "messages"}).records
    records = records[:cfg.limit] if cfg.limit else records
    prompts = [prompt_of(r, f"{cfg.data}: record {i + 1}") for i, r in enumerate(records)]
    if cfg.prompt_suffix:
        prompts = [with_suffix(p, cfg.prompt_suffix) for p in prompts]
    teacher = FrozenModel.load(cfg.teacher, device=cfg.device)
    generator = build_generator("hf", teacher.model, teacher.tokenizer, prompts_per_batch=cfg.batch_size)
    outputs = generate_text(generator, teacher.tokenizer, prompts, cfg.sampling(), seed=cfg.seed, chat=cfg.chat,
                            progress=True)
    provenance = {"teacher": cfg.teacher, "teacher_sha256": teacher_fingerprint(cfg.teacher), "data": cfg.data,
                  "sampling": asdict(cfg.sampling()), "seed": cfg.seed, "chat": cfg.chat}
    rows, stats = keep_verified(records, prompts, outputs, cfg, provenance)
    if not rows:
        raise PolmError(f"no teacher completion was kept from {len(records)} records ({stats})",
                        fix="Check the teacher, raise max_new_tokens, sample more (n, temperature) or set verify=false")
    atomic_write_text(Path(cfg.out), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    atomic_write_json(Path(cfg.out).with_suffix(".stats.json"), {**provenance, **stats})
    return rows, stats


def keep_verified(records: list[dict], prompts: list, outputs: list[list[str]], cfg: SequenceKDConfig,
                  provenance: dict) -> tuple[list[dict], dict]:
    """One SFT record per generation (prompt/completion, or messages for a chat prompt), each with its
    provenance, the source record's id and, when verified, its score; failed ones are counted."""
    from polm.verify import score_response

    rows, rejected, empty, verified = [], 0, 0, 0
    for i, (record, prompt, texts) in enumerate(zip(records, prompts, outputs)):
        checkable = cfg.verify and ("answer" in record or ("task" in record and "entry" in record))
        verified += bool(checkable)
        for j, text in enumerate(texts):
            if not text.strip():
                empty += 1
                continue
            score = score_response(text, record) if checkable else None
            if score is not None and score < cfg.min_score:
                rejected += 1
                continue
            sft = ({"prompt": prompt, "completion": text} if isinstance(prompt, str)
                   else {"messages": [*prompt, {"role": "assistant", "content": text}]})
            rows.append({**sft, "builder": "sequence_kd", **provenance, "record": record.get("id", i),
                         "record_source": record.get("source"), "sample": j, "score": score,
                         **({"answer": record["answer"]} if "answer" in record else {})})
    return rows, {"prompts": len(records), "generations": sum(len(t) for t in outputs), "kept": len(rows),
                  "rejected_by_verifier": rejected, "empty": empty, "verified_prompts": verified}
