"""The one frozen model of polm: a reference policy (DPO, the KL term of RL), a teacher or a judge,
always run in eval mode without gradients, and an atomic on-disk cache of what it computed.

    FrozenModel.adapter_disabled(policy)   the policy with its PEFT adapter off — no second copy
    FrozenModel.copy_of(policy)            a frozen deep copy of the policy before its first update
    FrozenModel.initial(policy)            the policy itself, valid only until its first update
    FrozenModel.load(ref)                  a separate model with its own tokenizer (a distillation teacher)
    cached_outputs(key, dir, compute)      a dict of tensors computed once, keyed by `FrozenModel.cache_key`
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from polm.errors import PolmError
from polm.io import atomic_file
from polm.ops import IGNORE_INDEX, causal_targets, model_logprobs
from polm.ops.divergence import TargetRows, target_rows

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


class FrozenModel:
    """A model that is only read: every call runs in eval mode under `torch.no_grad()` and gives the
    wrapped model its training mode back (the policy keeps training between calls).

    `kind` is how it was made: adapter (the policy, adapter off), copy, initial (the policy as it is)
    or loaded; `source` is the model reference its cache key is fingerprinted from; `tokenizer` is
    set for a loaded model, which may not share the policy's vocabulary.
    """

    def __init__(self, model: nn.Module, kind: str, *, source: str | None = None, tokenizer=None):
        self.model, self.kind, self.source, self.tokenizer = model, kind, source, tokenizer

    @classmethod
    def adapter_disabled(cls, policy: nn.Module, *, source: str | None = None) -> FrozenModel:
        """The base of a PEFT policy: `with policy.disable_adapter():` on each call."""
        if not callable(getattr(policy, "disable_adapter", None)):
            raise PolmError("a reference with the adapter disabled needs a LoRA/DoRA policy (a PEFT model)",
                            fix="Use method=lora, or reference.mode=copy / precompute for full fine-tuning.")
        return cls(policy, "adapter", source=source)

    @classmethod
    def copy_of(cls, policy: nn.Module, *, source: str | None = None) -> FrozenModel:
        """A deep copy of the policy as it is now, in eval mode with every parameter frozen."""
        return cls(copy.deepcopy(policy).eval().requires_grad_(False), "copy", source=source)

    @classmethod
    def initial(cls, policy: nn.Module, *, source: str | None = None) -> FrozenModel:
        """The policy itself: equal to the reference only before the first update (a precompute pass)."""
        return cls(policy, "initial", source=source)

    @classmethod
    def load(cls, ref: str, *, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False) -> FrozenModel:
        """A separate model (embedded name, directory or hub id) with its own tokenizer."""
        from polm.models.load import ModelConfig, load_model, load_tokenizer, resolve_path

        model = load_model(ModelConfig(name=ref, device=device, dtype=dtype, trust_remote_code=trust_remote_code))
        model.eval().requires_grad_(False)
        return cls(model, "loaded", source=resolve_path(ref), tokenizer=load_tokenizer(ref, trust_remote_code))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @contextlib.contextmanager
    def active(self) -> Iterator[nn.Module]:
        """The model to call: eval mode (no dropout), no gradients, the adapter off for kind 'adapter'."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self.model.disable_adapter() if self.kind == "adapter" else contextlib.nullcontext():
                yield self.model
        finally:
            self.model.train(was_training)

    def token_logprobs(self, inputs: dict, targets: torch.Tensor, *, chunk_size: int | None = 1024,
                       temperature: float = 1.0, offset: int = 0) -> torch.Tensor:
        """log softmax(logits / T)[target] [B,K] (0 where the target is -100) via `polm.ops.model_logprobs`:
        targets[:, k] is predicted by position L - K - offset + k, as there."""
        with self.active() as model:
            return model_logprobs(model, inputs, targets, chunk_size, temperature, offset=offset).logprobs

    def sequence_logps(self, batch: dict, chunk_size: int | None = 1024) -> tuple[torch.Tensor, torch.Tensor]:
        """(Σ_t log p(target_t) [N], target tokens [N]) per sequence of a padded or packed batch (`completion_logps`)."""
        with self.active() as model:
            return completion_logps(model, batch, chunk_size)

    def sequence_logps_of(self, sequences: list[dict], collate: Callable[[list], dict], batch_size: int,
                          chunk_size: int | None = 1024) -> torch.Tensor:
        """Σ log p per sequence of every sequence, in order, `batch_size` sequences per forward: [N] fp32 on CPU."""
        out = []
        for start in range(0, len(sequences), batch_size):
            batch = collate(sequences[start:start + batch_size])
            out.append(self.sequence_logps({k: v.to(self.device) for k, v in batch.items()}, chunk_size)[0].float().cpu())
        return torch.cat(out)

    def target_rows(self, inputs: dict, targets: torch.Tensor, *, states: bool = False) -> TargetRows:
        """The rows of this model's output that predict each target (`polm.ops.divergence.target_rows`),
        without gradients: a teacher's last hidden state [K,H] and output layer, never its [B,T,V] logits."""
        with self.active() as model:
            return target_rows(model, inputs, targets, states=states)

    def topk_logprobs(self, inputs: dict, targets: torch.Tensor, k: int, *, temperature: float = 1.0,
                      chunk_size: int | None = 1024) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [K,k] long, log softmax(z / T) of those ids [K,k] fp32), on CPU: the k most likely next tokens at
        each of the K target positions (row-major), `chunk_size` rows of logits at a time."""
        rows = self.target_rows(inputs, targets)
        n = rows.hidden.shape[0]
        step = max(1, chunk_size or n)
        ids, logps = [torch.zeros((0, k), dtype=torch.long)], [torch.zeros((0, k))]
        with torch.no_grad():
            for i in range(0, n, step):
                top = torch.log_softmax(rows.logits(i, i + step).float() / temperature, dim=-1).topk(k, dim=-1)
                ids.append(top.indices.cpu())
                logps.append(top.values.cpu())
        return torch.cat(ids), torch.cat(logps)

    def check_vocabulary(self, tokenizer, student_model: nn.Module | None = None, *, teacher: str,
                         student: str) -> None:
        """Refuse a teacher whose tokenizer is not the student's (the same token -> id map), or whose output
        layer has another size: divergences compare distributions over the same token ids."""
        ours, theirs = self.tokenizer.get_vocab(), tokenizer.get_vocab()
        if ours != theirs:
            differ = sorted(set(ours.items()) ^ set(theirs.items()), key=lambda kv: kv[1])[:2]
            raise PolmError(f"the teacher '{teacher}' ({len(ours)} tokens) and the student '{student}' ({len(theirs)} "
                            f"tokens) have different tokenizers (first differences: {differ})", where="teacher.model",
                            fix="Distil from a teacher of the student's family (the same tokenizer); polm has no "
                                "cross-tokenizer distillation")
        sizes = output_size(self.model), output_size(student_model) if student_model is not None else None
        if None not in sizes and sizes[0] != sizes[1]:
            raise PolmError(f"the teacher '{teacher}' has {sizes[0]} output logits and the student '{student}' "
                            f"{sizes[1]}", where="teacher.model",
                            fix="Use a teacher and student with output layers of the same size")

    def cache_key(self, sequences: list[list[int]], template: str | None, extra: dict | None = None) -> str:
        """The key of this model's outputs on `sequences` (see `cache_key`), fingerprinted from `source`."""
        if self.source is None:
            raise PolmError("this frozen model has no source to fingerprint for its cache",
                            fix="Pass source=<model reference> when building it.")
        return cache_key(model_fingerprint(self.source), sequences, template, extra)


def output_size(model: nn.Module) -> int | None:
    """The size of the model's output layer (its vocabulary of logits), or None when it has no config."""
    return getattr(getattr(model, "config", None), "vocab_size", None)


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


def cached_outputs(key: str, cache_dir: Path, compute: Callable[[], dict[str, torch.Tensor]]
                   ) -> tuple[dict[str, torch.Tensor], bool]:
    """(named tensors, whether they came from the cache): load `cache_dir/key.safetensors`, or compute
    them and write the file atomically (temp + rename), stored as contiguous CPU tensors."""
    from safetensors.torch import load_file, save_file

    path = Path(cache_dir) / f"{key}.safetensors"
    if path.is_file():
        return load_file(path), True
    values = {name: t.detach().cpu().contiguous() for name, t in compute().items()}
    with atomic_file(path) as tmp:
        save_file(values, str(tmp))
    return values, False
