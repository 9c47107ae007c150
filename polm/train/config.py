"""The `train:` section shared by every recipe: what the shared loop needs to run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from polm.errors import PolmError


@dataclass
class TrainConfig:
    max_steps: int = 100               # optimizer steps (wins over epochs when > 0)
    epochs: float = 0.0                # used when max_steps == 0
    micro_batch_size: int = 4          # examples per forward pass
    grad_accum: int = 1                # micro-batches per optimizer step
    lr: float = 2e-4
    weight_decay: float = 0.0
    adam_betas: list[float] | None = None   # default (0.9, 0.999)
    adam_eps: float = 1e-8
    # auto: torch's fused AdamW kernel where it has one for the params' device and dtype, else foreach
    optimizer_impl: Literal["auto", "fused", "foreach", "for-loop"] = "auto"
    schedule: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0          # used when warmup_steps == 0
    min_lr_ratio: float = 0.0          # floor of linear/cosine decay, as a fraction of lr
    max_grad_norm: float = 1.0         # 0 disables clipping
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"   # auto: bf16 autocast on CUDA, fp32 on CPU
    seed: int = 0
    log_every: int = 1
    eval_every: int = 0                # 0: only at the end (when the recipe has an eval set)
    save_every: int = 50               # checkpoint every N steps (and on SIGTERM/SIGINT); 0: only on a signal
    keep_checkpoints: int = 2          # newest N step-* directories kept (0: all)
    resume: bool = True                # continue from the newest checkpoint in the run directory
    malloc_mmap_threshold_mb: int = 0  # glibc: pin the mmap threshold (MiB) so freed tensors return (RL: 1)
    deterministic: bool = False        # torch.use_deterministic_algorithms (+ CUBLAS_WORKSPACE_CONFIG on CUDA)
    progress: bool = True              # rich progress bar on a terminal, plain lines otherwise
    tensorboard: bool = True

    def validate(self) -> None:
        if self.max_steps <= 0 and self.epochs <= 0:
            raise PolmError("train.max_steps and train.epochs are both 0", fix="Set one of them above 0.")
        for key in ("micro_batch_size", "grad_accum"):
            if getattr(self, key) < 1:
                raise PolmError(f"train.{key} must be at least 1, got {getattr(self, key)}")
        if self.lr <= 0:
            raise PolmError(f"train.lr must be positive, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise PolmError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
