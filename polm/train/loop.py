"""The shared training loop: every recipe passes its `step_fn(batch) -> StepOutput` and a
`BatchSource` of micro-batches to `train`.

One optimizer step = `grad_accum` micro-batches, each `loss_sum.backward()`; the summed gradients
are then divided by the TRUE number of units (target tokens, pairs, ...) across the micro-batches,
so the update does not depend on how a step is split:  g = Σ_b ∇ loss_sum_b / Σ_b count_b.
Then clipping, AdamW, the lr schedule, logging, eval, and atomic checkpoints for exact resume: every
`save_every` steps and, on SIGTERM/SIGINT, at the next step boundary before stopping.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from polm.errors import PolmError, TrainingDiverged, TrainingInterrupted, did_you_mean
from polm.ops import IGNORE_INDEX, causal_targets
from polm.rundir import record_attempt, record_resume
from polm.train.batches import BatchSource
from polm.train.checkpoint import (
    TrainState,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    named_trainable,
    save_checkpoint,
)
from polm.train.config import TrainConfig
from polm.train.memory import set_mmap_threshold
from polm.train.metrics import METRICS_FILE, MetricsLogger, ProgressBar
from polm.train.schedule import build_scheduler
from polm.train.stop import StopRequest


@dataclass
class StepOutput:
    loss_sum: torch.Tensor        # scalar: loss SUMMED over `count` units (target tokens for SFT, pairs for DPO)
    count: int                    # number of units in this micro-batch
    metrics: dict[str, float] = field(default_factory=dict)   # extra per-micro-batch metrics (averaged over the step)


@dataclass
class TrainResult:
    steps: int                    # optimizer steps done in total (a resumed run counts the earlier ones)
    final_loss: float | None      # loss of the last step run in this call
    losses: list[float]           # loss of every step run in this call
    elapsed_s: float              # wall time of this call
    tokens_per_s: float           # input tokens per second in this call
    resumed_from: int = 0         # checkpoint step this call started from (0: fresh)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool, device: torch.device) -> Iterator[None]:
    """While active (when enabled): torch.use_deterministic_algorithms(True, warn_only=False), so an op
    without a deterministic kernel raises instead of varying run to run, and on CUDA
    CUBLAS_WORKSPACE_CONFIG=:4096:8 (unless already set), which deterministic cuBLAS needs."""
    if not enabled:
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=False)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def total_steps(cfg: TrainConfig, batches: BatchSource) -> int:
    """cfg.max_steps, or ceil(epochs × optimizer steps per epoch)."""
    if cfg.max_steps > 0:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * batches.steps_per_epoch(cfg.grad_accum)))


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto → bf16 on a CUDA GPU that supports it, else fp32. fp16 (with loss scaling) needs CUDA."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise PolmError("train.precision=fp16 needs a CUDA GPU", fix="Use train.precision=bf16 or fp32 on CPU.")
    return precision


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


# torch.optim.AdamW's keyword arguments for each train.optimizer_impl (same math, same state_dict)
OPTIMIZER_IMPLS: dict[str, dict[str, bool]] = {
    "fused": {"fused": True, "foreach": False},        # one kernel per device and dtype
    "foreach": {"fused": False, "foreach": True},      # torch._foreach_* ops over the tensor list
    "for-loop": {"fused": False, "foreach": False},    # one tensor at a time
}


def _fused_unsupported(params: list[nn.Parameter]) -> str | None:
    """'device/dtype' of the first param torch has no fused AdamW kernel for, or None when it covers all.
    torch's own test (the kernel checks it at the first step): a floating-point tensor on a supported device."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    devices = _get_fused_kernels_supported_devices()
    for p in params:
        if p.device.type not in devices or not torch.is_floating_point(p):
            return f"{p.device.type}/{str(p.dtype).removeprefix('torch.')}"
    return None


def resolve_optimizer_impl(impl: str, params: list[nn.Parameter]) -> str:
    """auto → fused where torch has the kernel for every param's device and dtype, else foreach."""
    if impl == "auto":
        return "foreach" if _fused_unsupported(params) else "fused"
    if impl not in OPTIMIZER_IMPLS:
        raise PolmError(f"unknown train.optimizer_impl {impl!r}", fix=did_you_mean(impl, ["auto", *OPTIMIZER_IMPLS]))
    unsupported = _fused_unsupported(params) if impl == "fused" else None
    if unsupported:
        raise PolmError(f"train.optimizer_impl=fused: torch {torch.__version__} has no fused AdamW kernel for "
                        f"parameters on {unsupported}", fix="Use train.optimizer_impl=auto (or foreach).")
    return impl


def optimizer_impl(optimizer: torch.optim.Optimizer) -> str:
    """The OPTIMIZER_IMPLS name the optimizer's first param group runs with."""
    group = optimizer.param_groups[0]
    flags = {"fused": bool(group.get("fused")), "foreach": bool(group.get("foreach"))}
    return next(name for name, kwargs in OPTIMIZER_IMPLS.items() if kwargs == flags)


def set_optimizer_impl(optimizer: torch.optim.Optimizer, impl: str) -> None:
    """Run `impl` from the next step on: load_state_dict restores the saved groups' flags with the state.
    The step counters move where `impl` keeps them (fused: the param's device; else the CPU), as float32."""
    for group in optimizer.param_groups:
        group.update(OPTIMIZER_IMPLS[impl])
        for p in group["params"]:
            step = optimizer.state.get(p, {}).get("step")
            if isinstance(step, torch.Tensor):
                device = p.device if group["fused"] or group.get("capturable") else torch.device("cpu")
                optimizer.state[p]["step"] = step.to(device=device, dtype=torch.float32)


ParamGroups = list[nn.Parameter] | list[dict[str, Any]]


def param_groups(params: ParamGroups) -> list[dict[str, Any]]:
    """[{"params": [...], "lr_scale": s}]: a plain parameter list is one group at scale 1; a list of
    {"params", "lr_scale"} dicts trains each group at train.lr × its lr_scale (per-component rates)."""
    if params and isinstance(params[0], dict):
        return [{"params": list(g["params"]), "lr_scale": float(g.get("lr_scale", 1.0))} for g in params]
    return [{"params": list(params), "lr_scale": 1.0}]


def build_optimizer(params: ParamGroups, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW as cfg.optimizer_impl (resolve_optimizer_impl); biases and norm weights (1-D tensors) get
    no weight decay. Each group of `param_groups(params)` runs at lr = cfg.lr × its lr_scale."""
    betas = tuple(cfg.adam_betas) if cfg.adam_betas else (0.9, 0.999)
    if len(betas) != 2:
        raise PolmError(f"train.adam_betas must be two numbers, got {cfg.adam_betas}",
                        fix="Write e.g. train.adam_betas=[0.9,0.95].")
    scaled = param_groups(params)
    impl = resolve_optimizer_impl(cfg.optimizer_impl, [p for g in scaled for p in g["params"]])
    groups = [{"params": [p for p in g["params"] if (p.ndim >= 2) == decay],
               "weight_decay": cfg.weight_decay if decay else 0.0, "lr": cfg.lr * g["lr_scale"],
               "lr_scale": g["lr_scale"]} for g in scaled for decay in (True, False)]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=betas, eps=cfg.adam_eps,
                             **OPTIMIZER_IMPLS[impl])


def _batch_tokens(batch: dict) -> tuple[int, int | None]:
    """(input tokens, target tokens after the causal shift or None without labels), counted on CPU."""
    ids = batch["input_ids"]
    tokens = int(batch["attention_mask"].sum()) if "attention_mask" in batch else ids.numel()
    if "labels" not in batch:
        return tokens, None
    return tokens, int((causal_targets(batch["labels"], batch.get("position_ids")) != IGNORE_INDEX).sum())


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@dataclass
class _Accumulated:
    loss_sum: torch.Tensor
    count: int = 0
    tokens: int = 0
    target_tokens: int = 0
    metrics: dict[str, list[float]] = field(default_factory=dict)


def _rebase_lr(state: TrainState, lr: float) -> None:
    """After a resume, schedule from this run's train.lr (so lowering it after a divergence works)."""
    sched = state.scheduler
    sched.base_lrs = [lr * group.get("lr_scale", 1.0) for group in state.optimizer.param_groups]
    for group, base, fn in zip(state.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
        group["initial_lr"] = base
        group["lr"] = base * fn(sched.last_epoch)


class _Loop:
    """The state of one `train` call; each method is one phase of an optimizer step."""

    def __init__(self, model, step_fn, state: TrainState, cfg: TrainConfig, run_dir: Path, eval_fn, device):
        self.model, self.step_fn, self.state, self.cfg = model, step_fn, state, cfg
        self.run_dir, self.eval_fn, self.device = run_dir, eval_fn, device
        self.precision = resolve_precision(cfg.precision, device)
        self.params = list(state.params.values())
        self.logger: MetricsLogger | None = None

    def accumulate(self) -> _Accumulated:
        acc = _Accumulated(loss_sum=torch.zeros((), dtype=torch.float32, device=self.device))
        for _ in range(self.cfg.grad_accum):
            batch = next(self.state.batches)
            tokens, targets = _batch_tokens(batch)
            with autocast_context(self.precision, self.device):
                out = self.step_fn(_to_device(batch, self.device))
            if not isinstance(out, StepOutput):
                raise TypeError(f"step_fn must return a StepOutput, got {type(out).__name__}")
            scaler = self.state.scaler
            (scaler.scale(out.loss_sum) if scaler is not None else out.loss_sum).backward()
            acc.loss_sum += out.loss_sum.detach().float()
            acc.count += int(out.count)
            acc.tokens += tokens
            acc.target_tokens += targets if targets is not None else int(out.count)
            for key, value in out.metrics.items():
                acc.metrics.setdefault(key, []).append(float(value))
        return acc

    def update(self, count: int) -> float:
        """Divide the summed gradients by the true count and clip; return the norm before clipping."""
        state = self.state
        if state.scaler is not None:
            state.scaler.unscale_(state.optimizer)
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads and count > 0:
            torch._foreach_div_(grads, float(count))
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else math.inf
        return float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))

    def apply(self) -> float:
        """Optimizer + scheduler step; returns the lr that this step used."""
        state = self.state
        lr = state.optimizer.param_groups[0]["lr"]
        if state.scaler is not None:
            state.scaler.step(state.optimizer)  # skips the step itself when fp16 grads overflowed
            state.scaler.update()
        else:
            state.optimizer.step()
        state.scheduler.step()
        state.optimizer.zero_grad(set_to_none=True)
        return lr

    def diverge(self, step: int, loss: float, grad_norm: float | None) -> None:
        self.state.optimizer.zero_grad(set_to_none=True)
        ckpt = latest_checkpoint(self.run_dir)
        self.logger.log({"step": step, "event": "diverged", "loss": loss, "grad_norm": grad_norm,
                         "checkpoint": str(ckpt) if ckpt else None})
        kept = (f"The last good checkpoint {ckpt} is kept: lower train.lr (or add warmup) and rerun to "
                "resume from it" if ckpt else
                "No checkpoint was saved (train.save_every is 0 or not reached): lower train.lr or add warmup")
        raise TrainingDiverged(f"training diverged at step {step}: loss {loss}, grad norm {grad_norm}; "
                               "the bad update was not applied", where=str(self.run_dir / METRICS_FILE), fix=kept)

    def step(self, step: int) -> dict[str, Any]:
        started = time.perf_counter()
        acc = self.accumulate()
        loss = acc.loss_sum.item() / max(acc.count, 1)
        if not math.isfinite(loss):
            self.diverge(step, loss, None)
        grad_norm = self.update(acc.count)
        if not math.isfinite(grad_norm) and self.state.scaler is None:
            self.diverge(step, loss, grad_norm)
        lr = self.apply()
        seconds = time.perf_counter() - started
        extra = {k: sum(v) / len(v) for k, v in acc.metrics.items()}
        extra.update(self.state.batches.step_metrics())   # the source's own numbers (rollout rewards, generation time)
        # the loop's own numbers win over a step_fn metric of the same name
        return {**extra, "step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                "target_tokens": acc.target_tokens, "tokens": acc.tokens,
                "tokens_per_s": acc.tokens / max(seconds, 1e-9)}

    def evaluate(self, step: int) -> None:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), autocast_context(self.precision, self.device):
                results = self.eval_fn()
        finally:
            self.model.train(was_training)
        named = {k if k.startswith("eval/") else f"eval/{k}": float(v) for k, v in results.items()}
        self.logger.log({"step": step, **named})

    def interrupt(self, step: int, total: int, signal_name: str, elapsed: float, saved: bool) -> None:
        """Checkpoint `step` (unless this step already saved one) and stop with a one-line message."""
        ckpt = checkpoint_path(self.run_dir, step) if saved else \
            save_checkpoint(self.run_dir, step, self.state, {"elapsed_s": elapsed}, self.cfg.keep_checkpoints)
        raise TrainingInterrupted(f"{signal_name} stopped training after step {step} of {total}; "
                                  f"checkpoint {ckpt} saved", where=str(self.run_dir),
                                  fix="Rerun the same command to resume from it")


def _resume(run_dir: Path, cfg: TrainConfig, state: TrainState, total: int) -> dict[str, Any]:
    """Load the newest checkpoint (when train.resume), say so in one line and note it in run.json."""
    ckpt = latest_checkpoint(run_dir) if cfg.resume else None
    if ckpt is None:
        return {"step": 0, "elapsed_s": 0.0}
    impl = optimizer_impl(state.optimizer)
    meta = load_checkpoint(ckpt, state)
    set_optimizer_impl(state.optimizer, impl)   # this run's train.optimizer_impl, not the checkpoint's
    _rebase_lr(state, cfg.lr)
    print(f"polm: resuming {run_dir} from {ckpt.relative_to(run_dir)} (step {meta['step']} of {total})",
          file=sys.stderr, flush=True)
    record_resume(run_dir, meta["step"])
    return meta


def _model_device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def train(
    *,
    model: nn.Module,
    step_fn: Callable[[dict], StepOutput],
    batches: BatchSource,
    cfg: TrainConfig,
    run_dir: Path,
    eval_fn: Callable[[], dict[str, float]] | None = None,
    params: ParamGroups | None = None,
) -> TrainResult:
    """Run optimizer steps until cfg.max_steps (or cfg.epochs), resuming from run_dir when asked.

    `batches.step_metrics()` is logged with each step. `params` defaults to the model's parameters with
    requires_grad; groups {"params", "lr_scale"} train at train.lr × lr_scale each (`param_groups`).
    Writes run_dir/metrics.jsonl, run_dir/tb and run_dir/checkpoints/step-N; raises TrainingDiverged on a NaN/inf loss or grad norm, and TrainingInterrupted after checkpointing the step
    at which SIGTERM/SIGINT arrived.
    """
    run_dir = Path(run_dir)
    if not isinstance(batches, BatchSource):
        raise TypeError(f"batches must implement polm.train.batches.BatchSource, got {type(batches).__name__}")
    seed_everything(cfg.seed)
    set_mmap_threshold(cfg.malloc_mmap_threshold_mb)
    params = [p for p in model.parameters() if p.requires_grad] if params is None else params
    flat = [p for group in param_groups(params) for p in group["params"]]
    if not flat:
        raise PolmError("the model has no trainable parameters", fix="Unfreeze some weights or attach an adapter.")
    device = _model_device(model)
    optimizer = build_optimizer(params, cfg)
    total = total_steps(cfg, batches)
    scaler = torch.amp.GradScaler("cuda") if resolve_precision(cfg.precision, device) == "fp16" else None
    state = TrainState(named_trainable(model, flat), optimizer, build_scheduler(optimizer, cfg, total),
                       batches, scaler)
    with StopRequest() as stop, deterministic_algorithms(cfg.deterministic, device):
        meta = _resume(run_dir, cfg, state, total)
        record_attempt(run_dir, optimizer_impl=optimizer_impl(optimizer))
        loop = _Loop(model, step_fn, state, cfg, run_dir, eval_fn, device)
        return _run(loop, start=meta["step"], total=total, elapsed_before=meta.get("elapsed_s", 0.0), stop=stop)


def _run(loop: _Loop, start: int, total: int, elapsed_before: float, stop: StopRequest) -> TrainResult:
    cfg, began = loop.cfg, time.perf_counter()
    loop.logger = MetricsLogger(loop.run_dir, cfg.tensorboard, resume_step=start)
    bar = ProgressBar(total, start, cfg.progress)
    was_training, losses, tokens = loop.model.training, [], 0
    loop.model.train()
    try:
        for step in range(start + 1, total + 1):
            record = loop.step(step)
            elapsed = elapsed_before + time.perf_counter() - began
            losses.append(record["loss"])
            tokens += record["tokens"]
            if step % max(cfg.log_every, 1) == 0 or step == total:
                loop.logger.log({**record, "elapsed_s": elapsed})
            bar.update(step, record["loss"], record["lr"], record["tokens_per_s"])
            if loop.eval_fn is not None and ((cfg.eval_every > 0 and step % cfg.eval_every == 0) or step == total):
                loop.evaluate(step)
            saved = cfg.save_every > 0 and step % cfg.save_every == 0
            if saved:
                save_checkpoint(loop.run_dir, step, loop.state, {"elapsed_s": elapsed}, cfg.keep_checkpoints)
            if stop.requested and step < total:   # after the last step the run simply finishes
                loop.interrupt(step, total, stop.signal_name, elapsed, saved)
    finally:
        bar.close()
        loop.logger.close()
        loop.model.train(was_training)
    seconds = time.perf_counter() - began
    return TrainResult(steps=start + len(losses), final_loss=losses[-1] if losses else None, losses=losses,
                       elapsed_s=seconds, tokens_per_s=tokens / max(seconds, 1e-9), resumed_from=start)
