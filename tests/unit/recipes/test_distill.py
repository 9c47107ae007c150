"""The distillation recipe's pieces: the cached teacher equals the live one, the cache key, the
per-example alignment of cached rows, and one clear error per bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_llama

from polm.config import load_config
from polm.errors import PolmError
from polm.recipes.distill import DistillConfig, run_distill

ROWS = [{"prompt": f"What is {a} + {b}?", "completion": f"The answer is {a + b}."} for a in range(4) for b in range(3)]


def save_teacher(path: Path, tokenizer, seed: int = 1) -> Path:
    """A tiny teacher with the student's tokenizer and peaked next-token distributions (norm scaled ×8)."""
    model = build_tiny_llama(len(tokenizer), seed=seed)
    with torch.no_grad():
        model.model.norm.weight.mul_(8.0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tiny_tokenizer):
    return save_teacher(tmp_path_factory.mktemp("teacher"), tiny_tokenizer)


@pytest.fixture()
def data(tmp_path):
    path = tmp_path / "kd.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def config(student, teacher, data, out, *extra) -> DistillConfig:
    return load_config(DistillConfig, None, [
        f"model.name={student}", f"teacher.model={teacher}", f"data.train={data}", f"output_dir={out}",
        "model.device=cpu", "method=full", "data.max_length=64", "train.max_steps=4", "train.micro_batch_size=4",
        "train.lr=0.01", "train.schedule=constant", "train.progress=false", "train.tensorboard=false",
        "loss_chunk_size=5", *extra])


def test_cached_teacher_gives_the_live_teachers_losses_and_its_key_tracks_settings(
        tiny_model_dir, teacher_dir, data, tmp_path):
    cache = tmp_path / "cache"
    topk = ["loss=topk_kl", "teacher.top_k=6", "temperature=1.5", f"teacher.cache_dir={cache}"]
    live = run_distill(config(tiny_model_dir, teacher_dir, data, tmp_path / "live", *topk))
    cached = run_distill(config(tiny_model_dir, teacher_dir, data, tmp_path / "cached", *topk, "teacher.cache=true"))
    assert cached["teacher_cache"]["cache_hit"] is False and len(list(cache.glob("*.safetensors"))) == 1
    assert live["losses"][0] > 0.1
    assert cached["losses"] == pytest.approx(live["losses"], abs=1e-6)
    again = run_distill(config(tiny_model_dir, teacher_dir, data, tmp_path / "again", *topk, "teacher.cache=true"))
    assert again["teacher_cache"]["cache_hit"] is True
    assert again["teacher_cache"]["cache_key"] == cached["teacher_cache"]["cache_key"]
    assert again["losses"] == cached["losses"]
    changed = run_distill(config(tiny_model_dir, teacher_dir, data, tmp_path / "changed", *topk, "teacher.cache=true",
                                 "temperature=2.0"))
    assert changed["teacher_cache"]["cache_hit"] is False
    assert changed["teacher_cache"]["cache_key"] != cached["teacher_cache"]["cache_key"]
    assert len(list(cache.glob("*.safetensors"))) == 2


def test_cache_rows_count_the_target_tokens(tiny_model_dir, teacher_dir, data, tmp_path, tiny_tokenizer):
    from polm.data.templating import encode_records

    examples, _ = encode_records(ROWS, tiny_tokenizer, max_length=64, chat=True)
    expected = sum(sum(label != -100 for label in ex["labels"][1:]) for ex in examples)
    out = run_distill(config(tiny_model_dir, teacher_dir, data, tmp_path / "run", "loss=topk_kl", "teacher.cache=true",
                             f"teacher.cache_dir={tmp_path / 'cache'}", "train.max_steps=1"))
    assert out["teacher_cache"]["rows"] == expected


def test_a_live_teacher_loss_falls_with_training(tiny_model_dir, teacher_dir, data, tmp_path):
    out = run_distill(config(tiny_model_dir, teacher_dir, data, tmp_path / "run", "loss=reverse_kl", "train.max_steps=12"))
    assert out["losses"][-1] < 0.7 * out["losses"][0]


def test_chunked_and_plain_logits_paths_train_alike_for_a_lora_student(tiny_model_dir, teacher_dir, data, tmp_path):
    runs = [run_distill(config(tiny_model_dir, teacher_dir, data, tmp_path / f"run{chunk}", "method=lora", "loss=jsd",
                               "train.lr=0.002", f"loss_chunk_size={chunk}", "hidden_loss=mse", "hidden_weight=0.5",
                               "ce_weight=0.1"))
            for chunk in (0, 3)]
    assert runs[1]["losses"] == pytest.approx(runs[0]["losses"], abs=1e-6)


BAD = [
    (["loss=forward_kll"], "loss: unknown distillation loss 'forward_kll'. Did you mean 'forward_kl'?"),
    (["loss=jsd", "loss_options={beta: 1.5}"], "loss_options.beta: beta must be in [0, 1], got 1.5"),
    (["loss=jsd", "loss_options={betta: 0.5}"], "loss_options.betta: loss 'jsd' has no parameter 'betta'"),
    (["temperature=0"], "temperature: the temperature τ must be > 0, got 0.0"),
    (["teacher.model="], "teacher.model: no teacher model is given"),
    (["hidden_loss=cos"], "hidden_loss: unknown hidden-state loss 'cos'"),
    (["teacher.cache=true"], "teacher.cache: teacher.cache=true stores the teacher's top-k"),
    (["lmbda=1.5"], "lmbda: lmbda (the on-policy probability) must be in [0, 1], got 1.5"),
]


@pytest.mark.parametrize(("extra", "message"), BAD)
def test_bad_settings_are_one_error_each(extra, message, tmp_path):
    with pytest.raises(PolmError) as err:
        config("student", "teacher", tmp_path / "d.jsonl", tmp_path / "run", *extra)
    assert message in err.value.message


def test_a_teacher_with_another_tokenizer_is_refused(tiny_model_dir, tiny_tokenizer, data, tmp_path):
    other_tok = type(tiny_tokenizer).from_pretrained(tiny_model_dir)
    other_tok.add_tokens(["<polm-extra-token>"])
    other = tmp_path / "other"
    model = build_tiny_llama(len(other_tok), seed=2)
    model.save_pretrained(other)
    other_tok.save_pretrained(other)
    with pytest.raises(PolmError) as err:
        run_distill(config(tiny_model_dir, other, data, tmp_path / "run"))
    message = err.value.message
    n = len(tiny_tokenizer)
    assert message.startswith(f"teacher.model: the teacher '{other}' ({n + 1} tokens) and the student "
                              f"'{tiny_model_dir}' ({n} tokens) have different tokenizers")
    assert "<polm-extra-token>" in message and "polm has no cross-tokenizer distillation" in message
    assert not (tmp_path / "run").exists()


def test_a_teacher_with_another_output_size_is_refused(tiny_model_dir, tiny_tokenizer, data, tmp_path):
    wide = tmp_path / "wide"
    build_tiny_llama(len(tiny_tokenizer) + 8, seed=2).save_pretrained(wide)
    tiny_tokenizer.save_pretrained(wide)
    with pytest.raises(PolmError, match=f"the teacher '{wide}' has {len(tiny_tokenizer) + 8} output logits and the "
                                        f"student '{tiny_model_dir}' {len(tiny_tokenizer)}"):
        run_distill(config(tiny_model_dir, wide, data, tmp_path / "run"))


def test_a_teacher_that_does_not_load_is_one_error(tiny_model_dir, data, tmp_path):
    with pytest.raises(PolmError) as err:
        run_distill(config(tiny_model_dir, tmp_path / "no-such-teacher", data, tmp_path / "run"))
    assert err.value.message.startswith(f"teacher.model: the teacher does not load: model '{tmp_path / 'no-such-teacher'}'"
                                        " is not a local directory")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    with pytest.raises(PolmError, match="teacher.model: the teacher does not load"):
        run_distill(config(tiny_model_dir, broken, data, tmp_path / "run"))
