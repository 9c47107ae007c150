"""Rollout engines behind one Generator protocol: transformers (default, CPU/GPU) or vLLM (optional)."""

from __future__ import annotations

from polm.errors import PolmError, did_you_mean
from polm.rollout.base import Completion, Generator, SamplingConfig
from polm.rollout.hf import HFGenerator

BACKENDS = ("hf", "vllm")


def build_generator(backend: str, model, tokenizer, *, model_path: str | None = None,
                    prompts_per_batch: int = 16) -> Generator:
    """The rollout backend named `backend` for `model` (the policy being trained)."""
    if backend == "hf":
        return HFGenerator(model, tokenizer, prompts_per_batch=prompts_per_batch)
    if backend == "vllm":
        from polm.rollout.vllm import VLLMGenerator

        return VLLMGenerator(model, tokenizer, model_path or model.name_or_path)
    raise PolmError(f"unknown rollout backend '{backend}'", where="rollout.backend", fix=did_you_mean(backend, BACKENDS))


__all__ = ["BACKENDS", "Completion", "Generator", "HFGenerator", "SamplingConfig", "build_generator"]
