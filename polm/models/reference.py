"""The reference policy of DPO-style training: a LoRA model's base with adapters disabled, a frozen
copy of a fully fine-tuned model, or reference log-probs precomputed once and cached on disk.

    adapter     `with model.disable_adapter():` — no second copy in memory
    copy        a frozen deep copy of the policy before its first update
    precompute  one pass over the data; log-probs cached under a hash of (model, data, template),
                then training runs no reference forward at all
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from polm.errors import PolmError
from polm.ops import IGNORE_INDEX, causal_targets, model_logprobs

MODEL_KEYS = ("input_ids", "attention_mask", "position_ids")


def completion_logps(model: nn.Module, batch: dict, chunk_size: int | None = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ_t log π(target_t) per sequence [N], number of target tokens per sequence [N]).

    A padded batch has one sequence per row; a packed batch is one row whose position_ids restart at
    0 for each sequence, and the sums are taken per segment (seq = cumsum(position_ids == 0) - 1).
    """
    targets = causal_targets(batch["labels"], batch.get("position_ids"))
    inputs = {k: batch[k] for k in MODEL_KEYS if k in batch}
    per_token = model_logprobs(model, inputs, targets, chunk_size).logprobs   # no [N,T,V] logits on a plain head
    valid = (targets != IGNORE_INDEX).to(per_token.dtype)
    if "position_ids" not in batch:
        return per_token.sum(-1), valid.sum(-1)
    starts = batch["position_ids"][0] == 0
    seq = starts.long().cumsum(0) - 1
    n = int(starts.sum())
    zeros = torch.zeros(n, dtype=per_token.dtype, device=per_token.device)
    return zeros.index_add(0, seq, per_token[0]), zeros.index_add(0, seq, valid[0])


class Reference:
    """Reference log-probs for a batch: `ref(batch) -> [N]`, computed without gradients."""

    def __init__(self, mode: str, policy: nn.Module, chunk_size: int | None = 1024):
        self.mode, self.chunk_size = mode, chunk_size
        self.policy = policy
        self.frozen: nn.Module | None = None
        if mode == "copy":
            self.frozen = copy.deepcopy(policy).eval().requires_grad_(False)
        elif mode == "adapter" and not callable(getattr(policy, "disable_adapter", None)):
            raise PolmError("reference.mode=adapter needs a LoRA/DoRA policy (a PEFT model)",
                            fix="Use method=lora, or reference.mode=copy / precompute for full fine-tuning.")

    @torch.no_grad()
    def __call__(self, batch: dict) -> torch.Tensor:
        if "ref_logps" in batch:     # precomputed
            return batch["ref_logps"]
        if self.mode in ("adapter", "initial"):
            was_training = self.policy.training
            self.policy.eval()       # no dropout in the reference
            try:
                with self.policy.disable_adapter() if self.mode == "adapter" else contextlib.nullcontext():
                    return completion_logps(self.policy, batch, self.chunk_size)[0]
            finally:
                self.policy.train(was_training)
        if self.frozen is None:
            raise PolmError(f"reference mode '{self.mode}' has no reference model and the batch carries no "
                            "precomputed log-probs", fix="Use reference.mode=adapter, copy or precompute.")
        return completion_logps(self.frozen, batch, self.chunk_size)[0]


def model_fingerprint(path: str) -> dict:
    """Name, size and modification time of every weight/config file of a local model (cheap to compute,
    and a model rewritten in place changes it); a hub id is its own fingerprint."""
    root = Path(path)
    if not root.is_dir():
        return {"ref": path}
    files = sorted(p for p in root.iterdir() if p.suffix in {".safetensors", ".json", ".bin"})
    return {"ref": str(root.resolve()), "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]}


def cache_key(model: dict, sequences: list[list[int]], template: str | None, extra: dict | None = None) -> str:
    """sha256 over (model fingerprint, every encoded token sequence, chat template, extra settings)."""
    digest = hashlib.sha256(json.dumps({"model": model, "template": template, "extra": extra or {}},
                                       sort_keys=True).encode())
    for ids in sequences:
        digest.update(json.dumps(ids).encode())
    return digest.hexdigest()


def cached_reference_logps(key: str, cache_dir: Path, compute: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, bool]:
    """(log-probs [N], whether they came from the cache): load `cache_dir/key.safetensors` or compute
    and write it atomically (temp + rename)."""
    from safetensors.torch import load_file, save_file

    path = Path(cache_dir) / f"{key}.safetensors"
    if path.is_file():
        return load_file(path)["logps"], True
    values = compute().detach().float().cpu().contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"logps": values}, str(tmp))
    tmp.replace(path)
    return values, False


@torch.no_grad()
def reference_pass(ref: Reference, sequences: list[dict], collate: Callable[[list], dict], batch_size: int,
                   device: torch.device) -> torch.Tensor:
    """Reference log-probs of every sequence, in order, `batch_size` sequences per forward: [N]."""
    out = []
    for start in range(0, len(sequences), batch_size):
        batch = collate(sequences[start:start + batch_size])
        out.append(ref({k: v.to(device) for k, v in batch.items()}).float().cpu())
    return torch.cat(out)
