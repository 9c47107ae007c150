"""Heads on a language model: PPO's value head, and the reward (score) model of `polm rm` with the
reward function it becomes.

    V(s_t) = w · h_t + b                   ValueHead on the policy's last hidden state
    r(x, y) = score(h[last real token])    a one-output AutoModelForSequenceClassification
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from polm.data.collate import pad_collate
from polm.data.preferences import encode_completion
from polm.errors import PolmError
from polm.models.load import ModelConfig, load_tokenizer, resolve_device, resolve_dtype, resolve_path
from polm.models.peft import LoraConfig, attach_adapter

VALUE_HEAD_FILE = "value_head.safetensors"


class ValueHead(nn.Module):
    """V(s_t) = w · h_t + b on the policy's last hidden state; starts at 0 so early advantages are the rewards."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B,T,H] -> values [B,T]."""
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1)


def value_head_bytes(head: ValueHead) -> bytes:
    """The head's weight [1,H] and bias [1] as safetensors bytes (the content of value_head.safetensors)."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()})


def save_value_head(head: ValueHead, directory: str | Path) -> Path:
    """Write `directory/value_head.safetensors` (`save_final(..., extra_files=...)` writes it with the model)."""
    path = Path(directory) / VALUE_HEAD_FILE
    path.write_bytes(value_head_bytes(head))
    return path


def load_value_head(directory: str | Path, device: str | torch.device = "cpu") -> ValueHead:
    """The value head saved by `save_value_head` in `directory`."""
    from safetensors.torch import load_file

    path = Path(directory) / VALUE_HEAD_FILE
    if not path.is_file():
        raise PolmError(f"'{directory}' has no {VALUE_HEAD_FILE}", fix="Point to the final/ directory of a `polm ppo` run.")
    state = load_file(str(path))
    head = ValueHead(state["linear.weight"].shape[1])
    head.load_state_dict(state)
    return head.to(device)


def load_score_model(cfg: ModelConfig, pad_token_id: int):
    """AutoModelForSequenceClassification with one output on top of the LM (the head starts random)."""
    from transformers import AutoModelForSequenceClassification

    device = resolve_device(cfg.device)
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_path(cfg.name), num_labels=1, dtype=resolve_dtype(cfg.dtype, device),
        trust_remote_code=cfg.trust_remote_code)
    model.config.pad_token_id = pad_token_id
    return model.to(device)


def attach_score_adapter(model, cfg: LoraConfig):
    """LoRA on the LM's linear layers; the new score head is trained in full (modules_to_save)."""
    return attach_adapter(model, cfg, task_type="SEQ_CLS", modules_to_save=["score"])


def sequence_scores(model: nn.Module, batch: dict) -> torch.Tensor:
    """r = score(h[last real token]) for each right-padded row: [N]. The last token is found from the
    attention mask, not from pad ids (the pad token is often also the end-of-turn token)."""
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    body = getattr(base, base.base_model_prefix)
    hidden = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
    last = batch["attention_mask"].sum(-1) - 1
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    return base.score(pooled).squeeze(-1).float()


class RewardModel:
    """A trained reward model as a reward function: `score(items) -> list[float]`.

    An item is a string (scored as it is) or {'prompt': ..., 'completion': ...}, formatted with the
    chat template exactly as in training.
    """

    def __init__(self, model, tokenizer, chat: bool = True, max_length: int = 2048):
        self.model, self.tokenizer, self.chat, self.max_length = model.eval(), tokenizer, chat, max_length

    def _ids(self, item: Any) -> list[int]:
        if isinstance(item, str):
            return self.tokenizer(item, add_special_tokens=False)["input_ids"][:self.max_length]
        prompt = item["prompt"]
        turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        return encode_completion(turns, item["completion"], self.tokenizer, self.chat)[0][:self.max_length]

    @torch.no_grad()
    def score(self, items: list, batch_size: int = 8) -> list[float]:
        device = next(self.model.parameters()).device
        out: list[float] = []
        for start in range(0, len(items), batch_size):
            seqs = [{"input_ids": ids, "labels": ids} for ids in map(self._ids, items[start:start + batch_size])]
            batch = pad_collate(seqs, self.tokenizer.pad_token_id)
            out += sequence_scores(self.model, {k: batch[k].to(device) for k in ("input_ids", "attention_mask")}).tolist()
        return out


def load_reward_model(path: str | Path, device: str = "auto", chat: bool = True) -> RewardModel:
    """Load a `polm rm` output directory (or any single-output sequence classifier) as a RewardModel."""
    from transformers import AutoModelForSequenceClassification

    if not (Path(path) / "config.json").is_file():
        raise PolmError(f"'{path}' is not a reward model directory (no config.json)",
                        fix="Point to the final/ directory of a `polm rm` run.")
    tokenizer = load_tokenizer(str(path))
    model = AutoModelForSequenceClassification.from_pretrained(path).to(resolve_device(device))
    if model.config.num_labels != 1:
        raise PolmError(f"'{path}' has {model.config.num_labels} outputs; a reward model has 1",
                        fix="Train one with `polm rm`.")
    return RewardModel(model, tokenizer, chat=chat)
