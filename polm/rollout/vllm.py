"""Generation with vLLM (optional, GPU): same Generator interface, weights copied from the policy before sampling."""

from __future__ import annotations

from collections.abc import Callable

from polm.errors import require
from polm.rollout.base import Completion, SamplingConfig


class VLLMGenerator:
    """A vLLM engine on the policy's base checkpoint; `sync_weights` loads the policy's current weights
    (LoRA merged into the base weights first) so samples come from the model being trained."""

    def __init__(self, model, tokenizer, model_path: str, gpu_memory_utilization: float = 0.3):
        vllm = require("vllm", "vllm", "the vLLM rollout backend (rollout.backend=vllm)")
        self.model, self.tokenizer, self._vllm = model, tokenizer, vllm
        self.llm = vllm.LLM(model=model_path, gpu_memory_utilization=gpu_memory_utilization,
                            enable_prefix_caching=True)   # the prompt of a group is prefilled once

    def sync_weights(self) -> None:
        merged = getattr(self.model, "merge_and_unload", None)
        state = self._merged_state() if callable(merged) else self.model.state_dict()
        runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
        runner.model.load_weights(state.items())

    def _merged_state(self) -> dict:
        """Base weights with the LoRA deltas folded in, under the base model's parameter names."""
        self.model.merge_adapter()
        try:
            prefix, state = "base_model.model.", {}
            for name, tensor in self.model.state_dict().items():
                if "lora_" in name:
                    continue
                state[name.removeprefix(prefix).replace(".base_layer", "")] = tensor.detach().clone()
            return state
        finally:
            self.model.unmerge_adapter()

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig, seed: int,
                 on_progress: Callable[[int], None] | None = None) -> list[Completion]:
        sampling.validate()
        params = self._vllm.SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                                           top_k=sampling.top_k or -1, max_tokens=sampling.max_new_tokens,
                                           stop=list(sampling.stop) or None, logprobs=0, seed=seed,
                                           min_tokens=sampling.min_new_tokens)
        prompts = [{"prompt_token_ids": p} for p in prompt_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        result = []
        for i, out in enumerate(outputs):
            for c in out.outputs:
                ids = list(c.token_ids)
                logps = [step[t].logprob for step, t in zip(c.logprobs, ids)]
                reason = "stop" if c.finish_reason == "stop" else "length"
                result.append(Completion(i, ids, logps, c.text, reason))
        if on_progress is not None:
            on_progress(len(prompt_ids))   # vLLM schedules all prompts at once: done all together
        return result
