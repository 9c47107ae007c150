"""The shared loop on the tiny Llama: learning, accumulation invariance, exact resume (after a kill or a
signal), default checkpoints, NaN guard, eval, progress lines, deterministic mode."""

from __future__ import annotations

import json
import math
import os
import signal
import time
from functools import partial
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_llama
from safetensors.torch import load_file

from polm.data.collate import pad_collate
from polm.errors import PolmError, TrainingDiverged, TrainingInterrupted
from polm.ops import causal_lm_loss
from polm.train import BatchStream, StepOutput, TrainConfig, train
from polm.train.checkpoint import list_checkpoints
from polm.train.loop import build_optimizer
from polm.train.metrics import read_metrics

VOCAB = 397


def counting_examples(n: int, seed: int = 0) -> list[dict]:
    """Sequences s, s+1, s+2, ... of different lengths (5..12): a pattern a tiny model can learn."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        start = int(torch.randint(4, 300, (1,), generator=gen))
        length = 5 + i % 8
        ids = list(range(start, start + length))
        out.append({"input_ids": ids, "labels": [-100, -100] + ids[2:]})   # first two are "prompt"
    return out


def stream(examples: list[dict], mbs: int, seed: int = 0) -> BatchStream:
    return BatchStream(examples, partial(pad_collate, pad_id=0), micro_batch_size=mbs, seed=seed)


def sft_step(model, fail_at: int | None = None, poison: str = "loss"):
    """A causal-LM step_fn; on call number `fail_at` it raises (a kill), signals its own process
    (poison "SIGTERM"/"SIGINT", twice for "SIGINTx2") or poisons the loss/grad."""
    calls = {"n": 0}

    def step(batch: dict) -> StepOutput:
        calls["n"] += 1
        loss_sum, count = causal_lm_loss(model, batch, chunk_size=8)
        if calls["n"] == fail_at and poison == "kill":
            raise RuntimeError("simulated kill")
        if calls["n"] == fail_at and poison.startswith("SIG"):
            name, _, times = poison.partition("x")
            sig = getattr(signal, name)
            for _ in range(int(times or 1)):
                before = signal.getsignal(sig)
                os.kill(os.getpid(), sig)
                # Two signals sent back to back can coalesce into one Python-level call (the kernel may
                # deliver them to another thread first); wait until polm's handler has run before the next.
                deadline = time.monotonic() + 5
                while signal.getsignal(sig) is before and time.monotonic() < deadline:
                    time.sleep(0.001)
        if calls["n"] == fail_at and poison == "loss":
            loss_sum = loss_sum * float("nan")
        if calls["n"] == fail_at and poison == "grad":
            # finite loss (sqrt(0) = 0) whose gradient is NaN (d sqrt / dx at 0 is inf, times 0)
            loss_sum = loss_sum + (model.lm_head.weight * 0).sum().sqrt()
        return StepOutput(loss_sum, count, {"seq_len": float(batch["input_ids"].shape[1])})

    return step


def config(**overrides) -> TrainConfig:
    base = dict(max_steps=8, micro_batch_size=4, lr=3e-3, schedule="constant", max_grad_norm=1.0,
                progress=False, tensorboard=False)
    return TrainConfig(**{**base, **overrides})


def run(run_dir: Path, cfg: TrainConfig, examples: list[dict], model=None, fail_at=None, poison="loss"):
    model = model if model is not None else build_tiny_llama(VOCAB)
    result = train(model=model, step_fn=sft_step(model, fail_at, poison), batches=stream(examples, cfg.micro_batch_size),
                   cfg=cfg, run_dir=run_dir)
    return model, result


def train_lines(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir) if "loss" in r and "event" not in r]


def test_loss_goes_down_and_metrics_are_logged(tmp_path):
    cfg = config(max_steps=30, lr=1e-2, schedule="cosine", warmup_steps=3)
    _, result = run(tmp_path, cfg, counting_examples(16))
    first, last = sum(result.losses[:3]) / 3, sum(result.losses[-3:]) / 3
    assert result.steps == 30 and len(result.losses) == 30
    assert last < first - 2.0, (first, last)          # ln(397) ≈ 6 at init
    lines = train_lines(tmp_path)
    assert [r["step"] for r in lines] == list(range(1, 31))
    assert [r["loss"] for r in lines] == result.losses
    # the lr each step used: warmup k/3, then cosine over the remaining 27 steps
    assert [r["lr"] for r in lines[:5]] == pytest.approx(
        [0.0, 1e-2 / 3, 2e-2 / 3, 1e-2, 1e-2 * 0.5 * (1 + math.cos(math.pi / 27))])
    assert all(r["grad_norm"] > 0 and r["tokens_per_s"] > 0 and r["target_tokens"] > 0 for r in lines)
    assert {"elapsed_s", "seq_len"} <= lines[0].keys()


def per_batch_mean_step(model):
    """The classic bug: each micro-batch's MEAN loss, so short examples weigh as much as long ones."""
    def step(batch: dict) -> StepOutput:
        loss_sum, count = causal_lm_loss(model, batch)
        return StepOutput(loss_sum / count, 1)

    return step


def one_step_params(run_dir: Path, examples, mbs: int, accum: int, step_factory=sft_step):
    # adam_eps=1 makes the first AdamW update ≈ lr·g/(|g|+1): sensitive to the gradient's scale and
    # free of the g/|g| amplification of float noise in near-zero gradients
    cfg = config(max_steps=1, micro_batch_size=mbs, grad_accum=accum, max_grad_norm=0.0, lr=1.0, adam_eps=1.0)
    model = build_tiny_llama(VOCAB)
    train(model=model, step_fn=step_factory(model), batches=stream(examples, mbs), cfg=cfg, run_dir=run_dir)
    return dict(model.named_parameters()), train_lines(run_dir)[0]


def test_micro_batch_1_x_accum_4_equals_micro_batch_4(tmp_path):
    examples = counting_examples(4)           # lengths 5, 6, 7, 8: per-token normalisation matters
    p1, line1 = one_step_params(tmp_path / "1x4", examples, mbs=1, accum=4)
    p4, line4 = one_step_params(tmp_path / "4x1", examples, mbs=4, accum=1)
    assert line1["target_tokens"] == line4["target_tokens"] == (5 + 6 + 7 + 8) - 4 * 2   # two prompt tokens each
    assert line1["loss"] == pytest.approx(line4["loss"], rel=1e-6)
    assert line1["seq_len"] == (5 + 6 + 7 + 8) / 4 and line4["seq_len"] == 8   # step_fn metrics: mean over micro-batches
    assert line1["grad_norm"] == pytest.approx(line4["grad_norm"], rel=1e-5)
    for name in p1:
        torch.testing.assert_close(p1[name], p4[name], atol=1e-6, rtol=0, msg=name)
    # control: averaging per micro-batch instead gives a measurably different update
    naive, _ = one_step_params(tmp_path / "naive", examples, mbs=1, accum=4, step_factory=per_batch_mean_step)
    assert max((naive[n] - p4[n]).abs().max().item() for n in p4) > 1e-4


def add_attention_dropout(model, p: float = 0.1):
    """Dropout makes the loss depend on the torch RNG, so the resume must restore it."""
    for module in model.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = p
    return model


def test_resume_after_a_kill_reproduces_the_uninterrupted_losses(tmp_path):
    examples = counting_examples(12)          # 3 steps per epoch: step 4 is mid-epoch 2
    cfg = config(save_every=4, keep_checkpoints=1)
    _, full = run(tmp_path / "full", cfg, examples, model=add_attention_dropout(build_tiny_llama(VOCAB)))

    killed = tmp_path / "killed"
    with pytest.raises(RuntimeError, match="simulated kill"):
        run(killed, cfg, examples, model=add_attention_dropout(build_tiny_llama(VOCAB)), fail_at=6, poison="kill")
    assert [p.name for p in list_checkpoints(killed)] == ["step-4"]
    assert len(train_lines(killed)) == 5

    # a differently initialised model: everything must come from the checkpoint
    model = add_attention_dropout(build_tiny_llama(VOCAB, seed=123))
    model, resumed = run(killed, cfg, examples, model=model)
    assert resumed.resumed_from == 4 and resumed.steps == 8
    assert resumed.losses == full.losses[4:]                      # exactly, not approximately
    lines = train_lines(killed)
    assert [r["step"] for r in lines] == list(range(1, 9))
    assert [r["loss"] for r in lines] == full.losses
    assert [p.name for p in list_checkpoints(killed)] == ["step-8"]


def test_by_default_a_run_checkpoints_every_50_steps_and_keeps_the_last_2(tmp_path):
    defaults = TrainConfig()
    assert (defaults.save_every, defaults.keep_checkpoints, defaults.resume) == (50, 2, True)
    run(tmp_path, config(max_steps=150), counting_examples(8))      # config() leaves the save settings alone
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-100", "step-150"]


def test_keep_checkpoints_keeps_the_newest_k(tmp_path):
    run(tmp_path, config(max_steps=10, save_every=2, keep_checkpoints=3), counting_examples(8))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-6", "step-8", "step-10"]


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_checkpoints_the_step_stops_and_the_rerun_continues_exactly(tmp_path, capsys, sig):
    examples = counting_examples(12)
    cfg = config(save_every=4, keep_checkpoints=2)
    _, full = run(tmp_path / "full", cfg, examples, model=add_attention_dropout(build_tiny_llama(VOCAB)))
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)

    stopped = tmp_path / "stopped"
    with pytest.raises(TrainingInterrupted) as err:        # the signal arrives during step 6 of 8
        run(stopped, cfg, examples, model=add_attention_dropout(build_tiny_llama(VOCAB)), fail_at=6, poison=sig)
    assert str(err.value) == (f"{stopped}: {sig} stopped training after step 6 of 8; checkpoint "
                              f"{stopped / 'checkpoints' / 'step-6'} saved. Rerun the same command to resume from it")
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers
    assert [p.name for p in list_checkpoints(stopped)] == ["step-4", "step-6"]
    assert [r["step"] for r in train_lines(stopped)] == [1, 2, 3, 4, 5, 6]
    capsys.readouterr()

    model = add_attention_dropout(build_tiny_llama(VOCAB, seed=123))
    _, resumed = run(stopped, cfg, examples, model=model)
    assert capsys.readouterr().err == f"polm: resuming {stopped} from checkpoints/step-6 (step 6 of 8)\n"
    assert resumed.resumed_from == 6 and resumed.losses == full.losses[6:]   # exactly
    assert [r["loss"] for r in train_lines(stopped)] == full.losses


def test_a_signal_during_the_last_step_lets_the_run_finish(tmp_path):
    _, result = run(tmp_path, config(max_steps=4, save_every=0), counting_examples(8), fail_at=4, poison="SIGTERM")
    assert result.steps == 4 and list_checkpoints(tmp_path) == []


def test_a_second_sigint_stops_at_once(tmp_path):
    """From a process whose SIGINT does what Python's does by default (a fresh `polm` command): polm
    restores that handler on the first signal, so the second raises KeyboardInterrupt at once. (Other
    libraries imported earlier in a test session may leave a different handler; polm restores whatever
    was there.)"""
    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path, config(max_steps=4), counting_examples(8), fail_at=2, poison="SIGINTx2")
        assert list_checkpoints(tmp_path) == []
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, saved)


def test_deterministic_mode_is_on_while_training_only(tmp_path):
    model = build_tiny_llama(VOCAB)
    inner, seen = sft_step(model), []

    def step(batch: dict) -> StepOutput:
        seen.append(torch.are_deterministic_algorithms_enabled())
        return inner(batch)

    examples = counting_examples(8)
    result = train(model=model, step_fn=step, batches=stream(examples, 4), cfg=config(max_steps=3, deterministic=True),
                   run_dir=tmp_path / "det")
    assert seen == [True] * 3 and not torch.are_deterministic_algorithms_enabled()
    _, plain = run(tmp_path / "plain", config(max_steps=3), examples)
    assert result.losses == plain.losses                          # CPU kernels were deterministic already


def test_progress_off_a_terminal_is_plain_lines(tmp_path, capsys):
    run(tmp_path, config(max_steps=20, progress=True), counting_examples(8))
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[2] for line in lines] == [f"{k}/20" for k in range(2, 21, 2)]   # a tenth of the run each
    assert all(line.startswith("train: step ") and " tokens/s  elapsed " in line for line in lines)


def test_resume_false_starts_over_and_rewrites_history(tmp_path):
    examples = counting_examples(8)
    _, first = run(tmp_path, config(max_steps=4, save_every=2), examples)
    _, again = run(tmp_path, config(max_steps=4, save_every=2, resume=False), examples)
    assert again.resumed_from == 0 and again.losses == first.losses
    assert [r["step"] for r in train_lines(tmp_path)] == [1, 2, 3, 4]


@pytest.mark.parametrize("poison", ["loss", "grad"])
def test_nan_guard_stops_before_the_bad_update_and_keeps_the_checkpoint(tmp_path, poison):
    model = build_tiny_llama(VOCAB)
    with pytest.raises(TrainingDiverged) as err:
        run(tmp_path, config(save_every=2), counting_examples(12), model=model, fail_at=3, poison=poison)
    message = str(err.value)
    assert "step 3" in message and "step-2" in message
    saved = load_file(tmp_path / "checkpoints" / "step-2" / "trainable.safetensors")
    for name, param in model.named_parameters():
        assert torch.equal(param, saved[name]), name               # step 3 changed nothing
    assert all(p.grad is None for p in model.parameters())
    event = read_metrics(tmp_path)[-1]
    assert event["event"] == "diverged" and event["step"] == 3
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1]) == event  # strict JSON


def test_eval_runs_in_eval_mode_every_n_steps_and_at_the_end(tmp_path):
    model = build_tiny_llama(VOCAB)
    examples = counting_examples(8)
    held_out = pad_collate(counting_examples(4, seed=1), pad_id=0)
    seen = []

    def eval_fn() -> dict[str, float]:
        seen.append((model.training, torch.is_grad_enabled()))
        loss_sum, count = causal_lm_loss(model, held_out)
        return {"loss": loss_sum.item() / count}

    train(model=model, step_fn=sft_step(model), batches=stream(examples, 4), run_dir=tmp_path,
          cfg=config(max_steps=5, eval_every=2), eval_fn=eval_fn)
    evals = [r for r in read_metrics(tmp_path) if "eval/loss" in r]
    assert [r["step"] for r in evals] == [2, 4, 5]
    assert seen == [(False, False)] * 3
    assert evals[-1]["eval/loss"] < evals[0]["eval/loss"]
    assert model.training is False                                 # the fixture's mode is restored


def test_epochs_set_the_number_of_steps(tmp_path):
    # 10 examples, micro-batch 4 -> 3 micro-batches per epoch; accum 2 -> 2 steps per epoch
    _, result = run(tmp_path, config(max_steps=0, epochs=2.0, grad_accum=2), counting_examples(10))
    assert result.steps == 4


def test_tensorboard_scalars_match_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, result = run(tmp_path, config(max_steps=3, tensorboard=True), counting_examples(8))
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    logged = [e.value for e in events.Scalars("train/loss")]
    assert logged == pytest.approx(result.losses, rel=1e-6)


def test_no_weight_decay_on_biases_and_norm_weights():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    optimizer = build_optimizer(list(model.parameters()), config(weight_decay=0.1, adam_betas=[0.8, 0.9]))
    decayed, plain = optimizer.param_groups
    assert [p.shape for p in decayed["params"]] == [(4, 4)] and decayed["weight_decay"] == 0.1
    assert len(plain["params"]) == 3 and plain["weight_decay"] == 0.0   # bias, norm weight, norm bias
    assert decayed["betas"] == (0.8, 0.9)
    with pytest.raises(PolmError, match="two numbers"):
        build_optimizer(list(model.parameters()), config(adam_betas=[0.9]))


class MeteredStream(BatchStream):
    """A BatchSource whose metrics channel reports the micro-batches served since the last step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.since_last = 0

    def __next__(self) -> dict:
        self.since_last += 1
        return super().__next__()

    def step_metrics(self) -> dict[str, float]:
        out, self.since_last = {"source/batches": float(self.since_last), "seq_len": -1.0, "loss": -1.0}, 0
        return out


def test_source_metrics_are_logged_with_their_step(tmp_path):
    cfg = config(max_steps=3, micro_batch_size=2, grad_accum=2)
    model = build_tiny_llama(VOCAB)
    source = MeteredStream(counting_examples(8), partial(pad_collate, pad_id=0), micro_batch_size=2, seed=0)
    result = train(model=model, step_fn=sft_step(model), batches=source, cfg=cfg, run_dir=tmp_path)
    lines = train_lines(tmp_path)
    assert [r["source/batches"] for r in lines] == [2.0, 2.0, 2.0]     # asked once per step, after its micro-batches
    assert [r["seq_len"] for r in lines] == [-1.0] * 3                 # the source's value over the step_fn's
    assert [r["loss"] for r in lines] == result.losses                 # the loop's own numbers win
    assert stream(counting_examples(2), 1).step_metrics() == {}


def test_batches_must_be_a_batch_source(tmp_path):
    model = build_tiny_llama(VOCAB)
    with pytest.raises(TypeError, match="must implement polm.train.batches.BatchSource, got list_iterator"):
        train(model=model, step_fn=sft_step(model), batches=iter([{}]), cfg=config(), run_dir=tmp_path)


def run_with_impl(run_dir: Path, impl: str, examples: list[dict], fail_at=None, **overrides):
    """`run` under train.optimizer_impl=impl, with a run.json so the loop can note the implementation."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "run.json").is_file():
        (run_dir / "run.json").write_text(json.dumps({"status": "running", "attempts": [{}]}))
    cfg = config(**{"max_steps": 5, "weight_decay": 0.1, **overrides}, optimizer_impl=impl)
    return run(run_dir, cfg, examples, fail_at=fail_at, poison="kill")


def attempts(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "run.json").read_text())["attempts"]


def test_fused_foreach_and_for_loop_adamw_train_alike(tmp_path):
    examples = counting_examples(12)
    runs = {impl: run_with_impl(tmp_path / impl, impl, examples) for impl in ("fused", "foreach", "for-loop")}
    fused_model, fused = runs["fused"]
    fused_params = dict(fused_model.named_parameters())
    for impl, (model, result) in runs.items():
        assert attempts(tmp_path / impl) == [{"optimizer_impl": impl}]
        assert result.losses == pytest.approx(fused.losses, rel=1e-5)
        for name, p in model.named_parameters():
            torch.testing.assert_close(p, fused_params[name], rtol=1e-5, atol=1e-5, msg=f"{impl}: {name}")
    # the fused kernel really ran: its optimizer differs from the loop's in the last bits of some weight
    loop_params = dict(runs["for-loop"][0].named_parameters())
    assert any(not torch.equal(p, loop_params[n]) for n, p in fused_params.items())


def test_auto_picks_fused_for_float32_and_bf16_on_cpu_and_foreach_where_torch_has_no_kernel():
    from polm.train.loop import optimizer_impl

    linear = torch.nn.Linear(4, 4)
    for dtype in (torch.float32, torch.bfloat16):
        optimizer = build_optimizer(list(linear.to(dtype).parameters()), config())
        assert optimizer_impl(optimizer) == "fused"
        assert all(g["fused"] is True and g["foreach"] is False for g in optimizer.param_groups)
    assert optimizer_impl(build_optimizer(list(linear.parameters()), config(optimizer_impl="for-loop"))) == "for-loop"
    on_meta = [torch.nn.Parameter(torch.empty(2, 2, device="meta"))]    # no fused AdamW kernel on meta
    assert optimizer_impl(build_optimizer(on_meta, config())) == "foreach"
    with pytest.raises(PolmError, match="no fused AdamW kernel for parameters on meta/float32") as err:
        build_optimizer(on_meta, config(optimizer_impl="fused"))
    assert "optimizer_impl=auto" in err.value.fix


def test_an_unknown_optimizer_impl_says_what_was_meant():
    from polm.config import load_config

    with pytest.raises(PolmError, match="expects one of 'auto', 'fused', 'foreach', 'for-loop'") as err:
        load_config(TrainConfig, overrides=["optimizer_impl=fussed"])
    assert err.value.fix == "Did you mean 'fused'?"
    with pytest.raises(PolmError, match="unknown train.optimizer_impl 'forloop'") as err:
        build_optimizer(list(torch.nn.Linear(2, 2).parameters()), config(optimizer_impl="forloop"))
    assert err.value.fix == "Did you mean 'for-loop'?"


def test_a_checkpoint_of_one_optimizer_impl_resumes_under_another(tmp_path):
    examples = counting_examples(12)
    _, fused = run_with_impl(tmp_path / "fused", "fused", examples, max_steps=8)
    _, for_loop = run_with_impl(tmp_path / "loop", "for-loop", examples, max_steps=8)
    # the same optimizer.pt format: identical state keys, shapes and dtypes after a step of each
    params = list(torch.nn.Linear(4, 4).parameters())
    shapes = []
    for impl in ("fused", "for-loop"):
        optimizer = build_optimizer(params, config(optimizer_impl=impl))
        for p in params:
            p.grad = torch.ones_like(p)
        optimizer.step()
        state = optimizer.state_dict()["state"]
        shapes.append({i: {k: (v.shape, v.dtype, v.device) for k, v in s.items()} for i, s in state.items()})
    assert shapes[0] == shapes[1]

    for saved, resumed, same in (("for-loop", "fused", fused), ("fused", "for-loop", for_loop)):
        run_dir = tmp_path / f"{saved}-then-{resumed}"
        with pytest.raises(RuntimeError, match="simulated kill"):
            run_with_impl(run_dir, saved, examples, fail_at=6, max_steps=8, save_every=4)
        _, result = run_with_impl(run_dir, resumed, examples, max_steps=8, save_every=4)
        assert result.resumed_from == 4
        assert attempts(run_dir)[-1]["optimizer_impl"] == resumed      # not the checkpoint's flags
        assert result.losses == pytest.approx(same.losses[4:], rel=1e-5)
    # the same implementation resumes exactly
    run_dir = tmp_path / "fused-then-fused"
    with pytest.raises(RuntimeError, match="simulated kill"):
        run_with_impl(run_dir, "fused", examples, fail_at=6, max_steps=8, save_every=4)
    _, result = run_with_impl(run_dir, "fused", examples, max_steps=8, save_every=4)
    assert result.losses == fused.losses[4:]
