"""The model side of evaluation: `loglikelihood` and `generate` over any model polm loads.

Tasks only ever call these two methods (the lm-evaluation-harness split), so a task written once runs
on a base model, a PEFT adapter, a merged or a quantized model alike.

A model directory that records its training prompt format (`polm_prompt.json`) is evaluated with its
chat-or-plain choice (under chat=auto), its system prompt and its end-of-turn stop; the recorded suffix
is NOT added: each task writes its own answer instruction, and that wins (the demo's recorded suffix is
the same answer-format line, which would otherwise appear twice). Models without a record: unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from polm.data.templating import TrainedPromptFormat
from polm.errors import PolmError

Prompt = str | list[dict]
ChatMode = Literal["auto", "true", "false"]


@dataclass
class _Row:
    """One scoring request as token ids: the model reads `context + continuation` and we sum the
    logprobs of the continuation tokens."""

    context: list[int]
    continuation: list[int]


class ModelAdapter:
    """A causal LM + tokenizer seen through the two calls evaluation needs.

    `chat`: "auto" applies the tokenizer's chat template when it has one, "true" requires one, "false"
    feeds prompts as raw text. `max_length`: the most positions one forward pass may see (default: the
    model's `max_position_embeddings`, else 2048). `prompt_format`: the recorded training format whose
    system prompt `format_prompt` applies (its suffix is left to the tasks' own instructions).
    """

    def __init__(self, model, tokenizer, *, batch_size: int = 8, chat: ChatMode = "auto",
                 max_length: int | None = None, name: str = "model",
                 prompt_format: TrainedPromptFormat | None = None):
        if chat == "true" and not getattr(tokenizer, "chat_template", None):
            raise PolmError(f"chat=true but the tokenizer of '{name}' has no chat template",
                            fix="Use chat=auto (plain text when there is no template) or chat=false.")
        self.model, self.tokenizer, self.name, self.prompt_format = model, tokenizer, name, prompt_format
        self.batch_size = max(1, batch_size)
        self.chat = chat != "false" and bool(getattr(tokenizer, "chat_template", None))
        config_len = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        self.max_length = max_length or config_len or 2048

    @classmethod
    def load(cls, ref: str, *, device: str = "auto", dtype: str = "auto", batch_size: int = 8,
             chat: ChatMode = "auto", prompt_format: bool = True) -> ModelAdapter:
        """Load an embedded name, a local (adapter) directory or a hub id; failures are one PolmError.
        `prompt_format`: apply the format recorded in the directory (chat choice when chat=auto, system
        prompt, end-of-turn stop), if it records one."""
        from polm.generate import load_for_inference, recorded_prompt_format, stop_at

        try:
            model, tokenizer = load_for_inference(ref, device=device, dtype=dtype)
        except PolmError:
            raise
        except (OSError, ValueError, KeyError) as err:  # e.g. a config.json that is not a model config
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise PolmError(f"model '{ref}' could not be loaded ({first})",
                            fix="Point --model at a directory with config.json + safetensors weights, "
                                "an adapter directory, or an embedded name (`polm assets list`).") from None
        model.eval()
        fmt = recorded_prompt_format(ref, use=prompt_format)
        if fmt is not None:
            stop_at(model, tokenizer, list(fmt.stop))   # special end-of-turn tokens; tasks keep their own stops
            chat = ("true" if fmt.chat else "false") if chat == "auto" else chat
        return cls(model, tokenizer, batch_size=batch_size, chat=chat, name=ref, prompt_format=fmt)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # --- prompts --------------------------------------------------------------------------------

    def format_prompt(self, prompt: Prompt) -> str:
        """A user string or a message list → the exact text the model continues (chat template or plain)."""
        from polm.data.templating import format_prompt

        if self.prompt_format is not None:
            prompt = self.prompt_format.wrap(prompt, suffix=False)
        return format_prompt(self.tokenizer, prompt, self.chat)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _prefix_token(self) -> int:
        """The token an empty context stands for (BOS if the model has one, else EOS), as lm-eval does."""
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    def _encode_pair(self, context: str, continuation: str) -> _Row:
        """Tokenize `context + continuation` jointly and split it where `context` ends, so the token
        boundary is the one the model would really see (lm-eval's rule); trailing spaces of the context
        move to the continuation for the same reason."""
        stripped = context.rstrip(" ")
        continuation = context[len(stripped):] + continuation
        if not stripped:
            return _Row([self._prefix_token()], self._encode(continuation))
        whole, ctx = self._encode(stripped + continuation), self._encode(stripped)
        return _Row(ctx, whole[len(ctx):])

    # --- loglikelihood --------------------------------------------------------------------------

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """For each (context, continuation): (Σ_t log p(cont_t | context, cont_<t), is_greedy), where
        is_greedy says every continuation token is the argmax of its distribution."""
        rows = [self._encode_pair(c, x) for c, x in requests]
        for (context, _), row in zip(requests, rows):
            if not row.continuation:
                raise PolmError(f"empty continuation after context {context[-40:]!r}",
                                fix="Every loglikelihood request needs a non-empty continuation.")
        return self._score_rows(rows)

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[tuple[float, int]]:
        """For each text: (Σ log p(token_t | tokens_<t) over all its tokens, number of tokens).

        The first token is conditioned on BOS/EOS; texts longer than `max_length` are scored in
        consecutive windows, each seeing up to `max_length` previous tokens as context."""
        rows, owner = [], []
        for i, text in enumerate(texts):
            tokens = [self._prefix_token(), *self._encode(text)]
            for start in range(1, len(tokens), self.max_length):
                cont = tokens[start:start + self.max_length]
                rows.append(_Row(tokens[max(0, start - self.max_length + len(cont) - 1):start], cont))
                owner.append(i)
        totals = [[0.0, 0] for _ in texts]
        for i, row, (logprob, _) in zip(owner, rows, self._score_rows(rows)):
            totals[i][0] += logprob
            totals[i][1] += len(row.continuation)
        return [(lp, n) for lp, n in totals]

    @torch.no_grad()
    def _score_rows(self, rows: list[_Row]) -> list[tuple[float, bool]]:
        out: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(tuple(row.context), []).append(i)
        # Several continuations of one context (multiple choice): read the context once.
        shared, rest = [], []
        for ctx, idx in groups.items():
            fits = len(ctx) + max(len(rows[i].continuation) for i in idx) <= self.max_length
            if len(idx) > 1 and fits:
                shared.append(idx)
            else:
                rest += idx
        shared.sort(key=lambda idx: -len(rows[idx[0]].context))
        for start in range(0, len(shared), self.batch_size):
            chunk = shared[start:start + self.batch_size]
            flat = [i for idx in chunk for i in idx]
            for i, result in zip(flat, self._score_shared_contexts([[rows[i] for i in idx] for idx in chunk])):
                out[i] = result
        # Longest first: batches hold similar lengths, and an out-of-memory shows on the first batch.
        rest.sort(key=lambda i: -(len(rows[i].context) + len(rows[i].continuation)))
        for start in range(0, len(rest), self.batch_size):
            chunk = rest[start:start + self.batch_size]
            for i, result in zip(chunk, self._score_batch([rows[i] for i in chunk])):
                out[i] = result
        return out

    def _score_shared_contexts(self, groups: list[list[_Row]]) -> list[tuple[float, bool]]:
        """B groups, each = continuations of one context. One forward over the B contexts (left-padded,
        KV cache kept), then all N = Σ|group| continuations (right-padded, [N, K-1]) on the cache rows
        of their context. Same numbers as scoring each context + continuation alone, with the context
        read once instead of once per continuation."""
        width = max(len(g[0].context) for g in groups)
        ids = torch.tensor([[self._pad_id()] * (width - len(g[0].context)) + g[0].context for g in groups])
        ctx_mask = torch.tensor([[0] * (width - len(g[0].context)) + [1] * len(g[0].context) for g in groups])
        positions = (ctx_mask.cumsum(-1) - 1).clamp(min=0)
        first_out = self.model(input_ids=ids.to(self.device), attention_mask=ctx_mask.to(self.device),
                               position_ids=positions.to(self.device), use_cache=True, logits_to_keep=1)
        owner = torch.tensor([b for b, g in enumerate(groups) for _ in g])         # row -> its context
        conts = [r.continuation for g in groups for r in g]
        k = max(len(c) for c in conts)
        logits = first_out.logits[:, -1:].float().cpu()[owner]                     # [N,1,V]
        if k > 1:
            cache = first_out.past_key_values
            cache.batch_select_indices(owner.to(self.device))
            feed = torch.tensor([c[:-1] + [self._pad_id()] * (k - len(c)) for c in conts])
            cont_mask = torch.tensor([[1] * (len(c) - 1) + [0] * (k - len(c)) for c in conts])
            mask = torch.cat([ctx_mask[owner], cont_mask], dim=1)
            start = ctx_mask.sum(-1)[owner][:, None]                               # real context length
            rest = self.model(input_ids=feed.to(self.device), attention_mask=mask.to(self.device),
                              position_ids=(start + torch.arange(k - 1)).to(self.device), past_key_values=cache)
            logits = torch.cat([logits, rest.logits.float().cpu()], dim=1)          # [N,K,V]
        targets = torch.tensor([c + [-100] * (k - len(c)) for c in conts])         # [N,K]
        return self._reduce(logits, targets)

    def _pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def _score_batch(self, rows: list[_Row]) -> list[tuple[float, bool]]:
        """Left-pad so every continuation ends at the last position; then only the last K positions'
        logits are needed (K = longest continuation), which keeps [B,K,V] small for big vocabularies."""
        from polm.ops.logprobs import causal_targets

        batch = self._left_padded(rows)
        keep = max(len(r.continuation) for r in rows)
        logits = self._forward(batch, keep)                                    # [B,K,V]
        targets = causal_targets(batch["labels"])[:, :-1][:, -keep:]           # [B,K]
        return self._reduce(logits, targets)

    @staticmethod
    def _reduce(logits: torch.Tensor, targets: torch.Tensor) -> list[tuple[float, bool]]:
        """logits [B,K,V], targets [B,K] (-100 = not scored) → per row (Σ logprob, all argmax)."""
        from polm.ops.logprobs import token_logprobs

        logprobs = token_logprobs(logits, targets)                             # [B,K], 0 where ignored
        greedy = ((logits.argmax(-1) == targets) | (targets == -100)).all(-1)
        return [(float(lp), bool(g)) for lp, g in zip(logprobs.sum(-1).tolist(), greedy.tolist())]

    def _left_padded(self, rows: list[_Row]) -> dict[str, torch.Tensor]:
        """Rows → input_ids/attention_mask/position_ids [B,T] (the last token dropped: it predicts
        nothing) and labels [B,T+1] over the full sequence (-100 on context and padding)."""
        seqs, labels = [], []
        for r in rows:
            full = (r.context + r.continuation)[-(self.max_length + 1):]
            n_cont = min(len(r.continuation), len(full) - 1)
            seqs.append(full)
            labels.append([-100] * (len(full) - n_cont) + full[len(full) - n_cont:])
        width = max(len(s) for s in seqs)
        pad = self._pad_id()
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs])
        lab = torch.tensor([[-100] * (width - len(s)) + lb for s, lb in zip(seqs, labels)])
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
        # Positions count real tokens only, so a left-padded row sees the same positions as unpadded.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return {"input_ids": ids[:, :-1], "attention_mask": mask[:, :-1], "position_ids": positions[:, :-1],
                "labels": lab}

    def _forward(self, batch: dict[str, torch.Tensor], keep: int) -> torch.Tensor:
        inputs = {k: v.to(self.device) for k, v in batch.items() if k != "labels"}
        try:
            logits = self.model(**inputs, logits_to_keep=keep).logits
        except TypeError:  # a model without `logits_to_keep`: compute all positions and slice
            logits = self.model(**inputs).logits
        return logits[:, -keep:].float().cpu()

    # --- generation ---------------------------------------------------------------------------

    def generate(self, prompts: Sequence[Prompt], *, max_new_tokens: int = 256, temperature: float = 0.0,
                 top_p: float = 1.0, stop: Sequence[str] = (), n: int = 1, seed: int = 0,
                 formatted: bool = False) -> list[list[str]]:
        """`n` completions per prompt (greedy when temperature is 0), each cut at the first stop string.

        Batched with left padding and the KV cache (polm.rollout). `formatted=True` means the prompts
        are already final text (e.g. from `format_prompt`) and are not templated again."""
        from polm.rollout import HFGenerator, SamplingConfig
        from polm.rollout.text import generate_text

        texts = list(prompts) if formatted else [self.format_prompt(p) for p in prompts]
        sampling = SamplingConfig(n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                  stop=list(stop))
        generator = HFGenerator(self.model, self.tokenizer, prompts_per_batch=self.batch_size)
        return generate_text(generator, self.tokenizer, texts, sampling, seed=seed, chat=False)
