"""Generation behind one Generator protocol, for every caller (RL, eval, `polm generate`, data builders):
backends from the GENERATORS registry, transformers ("hf", default) or vLLM ("vllm", optional)."""

from __future__ import annotations

from polm.registry import Registry
from polm.rollout.base import Completion, Generator, SamplingConfig
from polm.rollout.hf import HFGenerator

GENERATORS = Registry("generation backend")


@GENERATORS.register("hf")
def hf_generator(model, tokenizer, *, model_path: str | None = None, prompts_per_batch: int = 16) -> Generator:
    """The model itself on a KV cache; `prompts_per_batch` prompts (times n samples) decode together."""
    return HFGenerator(model, tokenizer, prompts_per_batch=prompts_per_batch)


@GENERATORS.register("vllm")
def vllm_generator(model, tokenizer, *, model_path: str | None = None, prompts_per_batch: int = 16) -> Generator:
    """A vLLM engine on `model_path` (default: the model's own name); vLLM batches by itself."""
    from polm.rollout.vllm import VLLMGenerator

    return VLLMGenerator(model, tokenizer, model_path or model.name_or_path)


def build_generator(backend: str, model, tokenizer, *, model_path: str | None = None,
                    prompts_per_batch: int = 16) -> Generator:
    """The generation backend registered as `backend` (or a 'package.module:factory' plug-in) for `model`."""
    factory = GENERATORS.get(backend)
    return factory(model, tokenizer, model_path=model_path, prompts_per_batch=prompts_per_batch)


__all__ = ["GENERATORS", "Completion", "Generator", "HFGenerator", "SamplingConfig", "build_generator"]
