"""`polm distill` and `polm data distill` end to end on tiny models: offline KD that learns the teacher,
on-policy GKD with exact resume, sequence KD into an SFT dataset, and one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_tiny_llama

from polm.cli import main
from polm.train.metrics import read_metrics

ROWS = [{"prompt": f"What is {a} + {b}?", "completion": f"The answer is {a + b}.", "answer": str(a + b)}
        for a in range(4) for b in range(3)]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny teacher with the student's tokenizer and peaked next-token distributions (norm scaled ×8)."""
    path = tmp_path_factory.mktemp("teacher")
    model = build_tiny_llama(len(tiny_tokenizer), seed=1)
    with torch.no_grad():
        model.model.norm.weight.mul_(8.0)
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture()
def data(tmp_path):
    path = tmp_path / "kd.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def distill_args(student, teacher, data, out, *extra) -> list[str]:
    return ["distill", f"model.name={student}", f"teacher.model={teacher}", f"data.train={data}", f"output_dir={out}",
            "model.device=cpu", "data.max_length=64", "train.micro_batch_size=4", "train.lr=0.01",
            "train.schedule=constant", "train.progress=false", "train.tensorboard=false", *extra]


def losses(run_dir) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir) if "loss" in r]


@pytest.mark.parametrize(("loss", "method"), [("forward_kl", "lora"), ("jsd", "full"), ("tv", "full")])
def test_offline_kd_learns_the_teacher_and_saves_like_sft(tiny_model_dir, teacher_dir, data, tmp_path, loss, method):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    lr = "train.lr=0.002" if method == "lora" else "train.lr=0.01"
    assert main(distill_args(tiny_model_dir, teacher_dir, data, out, f"loss={loss}", f"method={method}",
                             "train.max_steps=15", "train.micro_batch_size=12", lr)) == 0   # the whole set each step
    curve = losses(out)
    assert len(curve) == 15
    if method == "full":
        assert sum(curve[-3:]) / 3 < 0.8 * curve[0], curve
    else:   # a fresh LoRA adapter on a random 2-layer model moves slowly, but every step lowers the loss
        assert all(b < a for a, b in zip(curve, curve[1:])), curve
    card = (out / "final" / "README.md").read_text()
    assert f"Distilled from the teacher `{teacher_dir}`" in card and f"loss: `{loss}`" in card
    assert json.loads((out / "run.json").read_text())["status"] == "completed"
    if method == "full":
        AutoModelForCausalLM.from_pretrained(out / "final")   # a standard, loadable output
    else:
        assert (out / "final" / "adapter_config.json").is_file()


def test_on_policy_gkd_resumes_with_the_same_losses(tiny_model_dir, teacher_dir, data, tmp_path):
    # a rollout = 4 prompts × 2 samples = 4 steps of 2; checkpoints every 3 steps: step 6 is mid-rollout
    common = ["method=full", "loss=jsd", "loss_options={beta: 0.5}", "lmbda=0.5", "data.chat=false",
              "rollout.prompts_per_rollout=4", "rollout.group_size=2", "rollout.max_new_tokens=4",
              "train.micro_batch_size=2", "train.save_every=3"]
    straight, part = tmp_path / "straight", tmp_path / "part"
    assert main(distill_args(tiny_model_dir, teacher_dir, data, straight, *common, "train.max_steps=12")) == 0
    assert main(distill_args(tiny_model_dir, teacher_dir, data, part, *common, "train.max_steps=6")) == 0
    (part / "run.json").write_text(json.dumps({"status": "running"}))   # continue that directory to 12 steps
    (part / "final").rename(tmp_path / "old-final")
    assert main(distill_args(tiny_model_dir, teacher_dir, data, part, *common, "train.max_steps=12")) == 0
    keys = ("loss", "grad_norm", "onpolicy", "completion/length")
    a = [{k: r[k] for k in keys} for r in read_metrics(straight) if "loss" in r]
    b = [{k: r[k] for k in keys} for r in read_metrics(part) if "loss" in r]
    assert len(a) == len(b) == 12 and a == b
    assert {r["onpolicy"] for r in a} == {0.0, 1.0}          # both the student's samples and the dataset's
    assert any(r["completion/length"] != a[0]["completion/length"] for r in a)


def test_sequence_kd_writes_an_sft_dataset_with_provenance(tiny_model_dir, teacher_dir, data, tmp_path):
    out = tmp_path / "seqkd.jsonl"
    assert main(["data", "distill", f"teacher={teacher_dir}", f"data={data}", f"out={out}", "max_new_tokens=6",
                 "n=2", "temperature=1.0", "device=cpu", "verify=false", "limit=5"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 10 and [r["record"] for r in rows] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    first = rows[0]
    assert first["prompt"] == ROWS[0]["prompt"] and first["teacher"] == str(teacher_dir)
    assert len(first["teacher_sha256"]) == 64 and first["sampling"]["temperature"] == 1.0
    assert first["sampling"]["n"] == 2 and first["score"] is None and first["answer"] == "0"
    stats = json.loads(out.with_suffix(".stats.json").read_text())
    assert stats["kept"] == 10 and stats["generations"] == 10
    sft = tmp_path / "sft"
    assert main(["sft", f"model.name={tiny_model_dir}", f"data.train={out}", f"output_dir={sft}", "train.max_steps=2",
                 "train.progress=false", "train.tensorboard=false", "model.device=cpu"]) == 0
    again = tmp_path / "again.jsonl"
    assert main(["data", "distill", f"teacher={teacher_dir}", f"data={data}", f"out={again}", "max_new_tokens=6",
                 "n=2", "temperature=1.0", "device=cpu", "verify=false", "limit=5"]) == 0
    assert again.read_text() == out.read_text()              # the same seed samples the same dataset


def test_one_line_errors(tiny_model_dir, teacher_dir, data, tmp_path, capsys):
    out = tmp_path / "run"
    cases = [
        (distill_args(tiny_model_dir, teacher_dir, data, out, "loss=rkl"), "loss: unknown distillation loss 'rkl'"),
        (distill_args(tiny_model_dir, teacher_dir, data, out, "temperature=-1"), "temperature: the temperature τ must be > 0"),
        (distill_args(tiny_model_dir, tmp_path / "nope", data, out), "teacher.model: the teacher does not load"),
        (["data", "distill", f"data={data}"], "teacher: no teacher model is given"),
        # a random teacher answers no sum right: the verifier keeps nothing
        (["data", "distill", f"teacher={teacher_dir}", f"data={data}", f"out={tmp_path / 'x.jsonl'}",
          "max_new_tokens=4", "device=cpu"], "no teacher completion was kept from 12 records"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]                     # after the teacher's loading / sampling bars
        assert message in last and "Traceback" not in err and last.startswith("polm "), err
    assert not out.exists() and not (tmp_path / "x.jsonl").exists()
