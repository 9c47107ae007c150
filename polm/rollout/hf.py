"""Generation with transformers models: batched sampling on a KV cache, the prompt prefilled once per group.

Each prompt is run through the model once; its KV cache is then repeated n times and the n samples
decode together. Rows that finish (EOS or a stop string) leave the batch, so the remaining ones run
faster. Sampling draws from a private torch.Generator seeded per call: completions depend only on the
seed and the weights, never on the global RNG. Greedy decoding (temperature 0) gives the same tokens
as `model.generate(do_sample=False)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from polm.errors import PolmError
from polm.rollout.base import Completion, SamplingConfig


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Keep the top-k logits, then the smallest set whose probability reaches top_p; others -inf.  [B,V] -> [B,V]."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= top_p   # tokens entirely beyond the nucleus
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def left_pad(prompts: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), both [B, max len]: each sequence right-aligned after `pad_id`s."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids.to(device), mask.to(device)


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (left padding).  [B,T] -> [B,T]."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def _eos_ids(model, tokenizer) -> list[int]:
    """Every id that ends a completion: the tokenizer's EOS and the model config's / generation config's."""
    found = [tokenizer.eos_token_id, getattr(model.config, "eos_token_id", None),
             getattr(getattr(model, "generation_config", None), "eos_token_id", None)]
    return sorted({e for x in found for e in (x if isinstance(x, list) else [x]) if e is not None})


class HFGenerator:
    """The default backend: the model itself (shares its weights, so `sync_weights` has nothing to do).
    `prompts_per_batch` prompts (each with its n samples) are decoded together. `kv_cache`:
    "preallocated" (each layer's KV buffers sized for prompt + max_new_tokens once, written in place)
    or "dynamic" (transformers' DynamicCache, which re-concatenates every layer's cache each step);
    both give the same tokens."""

    def __init__(self, model, tokenizer, prompts_per_batch: int = 16,
                 kv_cache: Literal["preallocated", "dynamic"] = "preallocated"):
        if kv_cache not in ("preallocated", "dynamic"):
            raise PolmError(f"unknown kv_cache '{kv_cache}'", fix="Use preallocated (the default) or dynamic.")
        self.model, self.tokenizer, self.prompts_per_batch = model, tokenizer, max(1, prompts_per_batch)
        self.kv_cache = kv_cache
        eos = _eos_ids(model, tokenizer)
        self.eos_ids = torch.tensor(eos, dtype=torch.long)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]

    def sync_weights(self) -> None:
        return None

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig, seed: int,
                 on_progress: Callable[[int], None] | None = None) -> list[Completion]:
        sampling.validate()
        device = next(self.model.parameters()).device
        rng = torch.Generator(device=device).manual_seed(seed)
        was_training = self.model.training
        self.model.eval()
        try:
            out: list[Completion] = []
            for start in range(0, len(prompt_ids), self.prompts_per_batch):
                chunk = prompt_ids[start:start + self.prompts_per_batch]
                out += [Completion(c.prompt_index + start, c.token_ids, c.logprobs, c.text, c.finish_reason)
                        for c in self._generate_chunk(chunk, sampling, rng, device)]
                if on_progress is not None:
                    on_progress(start + len(chunk))
            return out
        finally:
            self.model.train(was_training)

    @torch.no_grad()
    def _generate_chunk(self, prompts: list[list[int]], s: SamplingConfig, rng: torch.Generator,
                        device: torch.device) -> list[Completion]:
        """Decode `s.n` samples per prompt. Tokens and logprobs go into preallocated [rows, max_new_tokens]
        buffers, the attention mask into a [rows, prompt + max_new_tokens] one, the KV cache into
        preallocated layers (`kv_cache="preallocated"`). The only host sync per step is finding the rows
        still running, and only once a row can end (from min_new_tokens on); with stop strings the
        running rows' text is decoded each step too."""
        ids, attn = left_pad(prompts, self.pad_id, device)
        pos = positions(attn)
        width = ids.shape[1]
        from polm.rollout.kv_cache import preallocated_cache  # imports transformers: only when generating

        cache = preallocated_cache(self.model.config, width + s.max_new_tokens) \
            if self.kv_cache == "preallocated" else None
        out = self.model(input_ids=ids, attention_mask=attn, position_ids=pos, past_key_values=cache,
                         use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        cache.batch_repeat_interleave(s.n)          # prefill once, decode n samples per prompt
        logits = out.logits[:, -1].float().repeat_interleave(s.n, 0)
        rows = len(prompts) * s.n
        attn = torch.cat([attn.repeat_interleave(s.n, 0), attn.new_ones((rows, s.max_new_tokens))], dim=1)
        next_pos = pos[:, -1:].repeat_interleave(s.n, 0) + 1
        tokens = torch.full((rows, s.max_new_tokens), self.pad_id, dtype=torch.long, device=device)
        logps = torch.zeros((rows, s.max_new_tokens), dtype=torch.float32, device=device)
        lengths = torch.zeros(rows, dtype=torch.long, device=device)
        stopped = torch.zeros(rows, dtype=torch.bool, device=device)
        active = torch.arange(rows, device=device)   # original row of each row still in the batch
        eos = self.eos_ids.to(device)
        for step in range(s.max_new_tokens):
            token, logp = self._sample(logits, s, rng, blocked=eos if step < s.min_new_tokens else None)
            tokens[active, step], logps[active, step] = token, logp
            if step + 1 >= s.min_new_tokens:          # before, EOS is blocked and stop strings don't count
                lengths[active] = step + 1
                done = torch.isin(token, eos)
                if s.stop:
                    done |= self._hit_stop(tokens[active, :step + 1], s.stop)
                stopped[active] = done
                keep = (~done).nonzero().squeeze(1)   # the one sync of the step
                if keep.numel() == 0:
                    break
                if keep.numel() < active.numel():       # finished rows leave the batch
                    cache.batch_select_indices(keep)
                    active, token, attn, next_pos = active[keep], token[keep], attn[keep], next_pos[keep]
            out = self.model(input_ids=token[:, None], attention_mask=attn[:, :width + step + 1],
                             position_ids=next_pos, past_key_values=cache, use_cache=True)
            logits, next_pos = out.logits[:, -1].float(), next_pos + 1
        return self._completions(tokens.tolist(), logps.tolist(), lengths.tolist(), stopped.tolist(), s)

    @staticmethod
    def _sample(logits: torch.Tensor, s: SamplingConfig, rng: torch.Generator,
                blocked: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(token [B], its log-probability under softmax(logits / T) [B]); greedy scores at T = 1.

        `blocked` token ids (EOS before min_new_tokens) are never drawn, but the log-probability is the
        policy's own, unmasked one: the one the training forward recomputes for the importance ratio.
        logits / T is taken once (not at T = 1: x / 1 is x), and blocking it then is blocking first."""
        if s.temperature == 0:
            allowed = logits if blocked is None else logits.index_fill(-1, blocked, float("-inf"))
            token = allowed.argmax(-1)
            return token, logits.log_softmax(-1).gather(-1, token[:, None]).squeeze(1)
        scaled = logits if s.temperature == 1 else logits / s.temperature
        allowed = scaled if blocked is None else scaled.index_fill(-1, blocked, float("-inf"))
        probs = filter_logits(allowed, s.top_k, s.top_p).softmax(-1)
        token = torch.multinomial(probs, 1, generator=rng).squeeze(1)
        return token, scaled.log_softmax(-1).gather(-1, token[:, None]).squeeze(1)

    def _hit_stop(self, tokens: torch.Tensor, stop: list[str]) -> torch.Tensor:
        """Whether each row's text so far contains a stop string.  tokens [B,t] -> [B] bool."""
        texts = self.tokenizer.batch_decode(tokens.tolist(), skip_special_tokens=True)
        return torch.tensor([any(x in t for x in stop) for t in texts], device=tokens.device)

    def _completions(self, tokens: list[list[int]], logps: list[list[float]], lengths: list[int],
                     stopped: list[bool], s: SamplingConfig) -> list[Completion]:
        out = []
        for row, (ids, lps, length, stop) in enumerate(zip(tokens, logps, lengths, stopped)):
            ids, lps = ids[:length], lps[:length]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            for x in s.stop:
                cut = text.find(x)
                text = text[:cut] if cut >= 0 else text
            out.append(Completion(row // s.n, ids, lps, text, "stop" if stop else "length"))
        return out
