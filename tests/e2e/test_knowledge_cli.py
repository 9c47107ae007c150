"""`polm knowledge probe | compare | curriculum` through the CLI on a tiny model and a tiny fact set."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import build_tiny_llama

import polm.knowledge.probe as probe_mod
import polm.knowledge.training as training_mod
from polm.cli import main

TYPES = ("year", "number", "entity")


def facts() -> list[dict]:
    """12 train, 6 dev (exemplars and early stopping), 4 test facts, each split from its own documents."""
    out = []
    for split, n in (("train", 12), ("dev", 6), ("test", 4)):
        for i in range(n):
            t = TYPES[i % 3]
            out.append({"question": f"Which {t} goes with {split} item {i}?", "answer": f"{split[0]}{i}",
                        "type": t, "split": split, "doc_id": f"{split}-{i}"})
    return out


def fake_correct(prediction: str, fact: dict) -> bool:
    """Train item 4m is always right, 4m+1 never, the others for ~40% of (answer, fact) pairs."""
    item = int(fact["question"].split()[-1].rstrip("?"))
    if fact["split"] == "train" and item % 4 in (0, 1):
        return item % 4 == 0
    return hashlib.md5(f"{prediction}|{fact['question']}".encode()).digest()[0] < 100


@pytest.fixture()
def setup(tmp_path: Path, tiny_tokenizer, monkeypatch) -> dict:
    model_dir = tmp_path / "model"
    build_tiny_llama(len(tiny_tokenizer), initializer_range=0.5).save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    data = tmp_path / "facts.jsonl"
    data.write_text("".join(json.dumps(f) + "\n" for f in facts()))
    monkeypatch.setattr(probe_mod, "is_correct", fake_correct)
    monkeypatch.chdir(tmp_path)
    return {"model": str(model_dir), "data": str(data), "tmp": tmp_path}


PROBE = ["probe.n_prompts=3", "probe.k_shot=1", "probe.n_samples=4", "probe.max_new_tokens=4"]


def test_probe_twice_with_two_seeds_then_compare(setup, capsys):
    tmp = setup["tmp"]
    args = ["knowledge", "probe", "--model", setup["model"], "--data", setup["data"], *PROBE]
    assert main([*args, "--out", str(tmp / "a")]) == 0
    counts = json.loads((tmp / "a" / "counts.json").read_text())
    assert counts["facts"] == 12 and sum(counts["counts"].values()) == 12 and not counts["cache_hit"]
    assert counts["counts"]["HighlyKnown"] >= 3 and counts["counts"]["Unknown"] >= 3
    assert (tmp / "a" / "categories.png").stat().st_size > 1000
    rows = [json.loads(line) for line in (tmp / "a" / "facts.jsonl").read_text().splitlines()]
    assert {r["split"] for r in rows} == {"train"} and all(len(r["greedy_answers"]) == 3 for r in rows)
    assert main([*args, "--out", str(tmp / "a-again")]) == 0            # same model, data, settings: cached
    assert json.loads((tmp / "a-again" / "counts.json").read_text())["cache_hit"]
    assert main([*args, "--out", str(tmp / "b"), "--seed", "1"]) == 0   # the noise control
    capsys.readouterr()
    assert main(["knowledge", "compare", str(tmp / "a"), str(tmp / "b"), "--out", str(tmp / "ab.json")]) == 0
    printed = capsys.readouterr().out
    matrix = json.loads((tmp / "ab.json").read_text())
    b = {r["key"]: r["category"] for r in map(json.loads, (tmp / "b" / "facts.jsonl").read_text().splitlines())}
    for cat_a in matrix["matrix"]:
        for cat_b, n in matrix["matrix"][cat_a].items():
            assert n == sum(r["category"] == cat_a and b[r["key"]] == cat_b for r in rows)
    assert matrix["facts"] == 12 and "before\\after" in printed


def test_teacher_forced_probe_writes_its_validation(setup):
    out = setup["tmp"] / "tf"
    assert main(["knowledge", "probe", "--model", setup["model"], "--data", setup["data"], "--out", str(out),
                 *PROBE, "probe.method=teacher_forced", "probe.validate_facts=4"]) == 0
    check = json.loads((out / "validate.json").read_text())
    assert check["facts"] == 4 and 0 <= check["agreement"] <= 1


@pytest.mark.parametrize("override, message", [
    ("exemplar_split=test", "exemplars must never come from the test facts"),
    ("probe.k_shot=2", "2-shot prompts need at least 3"),
    ("probe.n_prompts=0", "probe.n_prompts must be at least 1"),
    ("splits=[dev]", "exemplar_split 'dev' is also a probed split"),
])
def test_probe_bad_input_is_one_line(setup, capsys, override, message):
    code = main(["knowledge", "probe", "--model", setup["model"], "--data", setup["data"], *PROBE, override])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_probe_refuses_overlapping_dev_and_test(setup, capsys):
    data = setup["tmp"] / "overlap.jsonl"
    rows = facts()
    rows[-1]["question"] = rows[12]["question"]   # a test question that is also a dev question
    data.write_text("".join(json.dumps(f) + "\n" for f in rows))
    assert main(["knowledge", "probe", "--model", setup["model"], "--data", str(data), *PROBE]) == 2
    assert "the dev and test splits overlap" in capsys.readouterr().err


def curriculum_args(setup, out: Path) -> list[str]:
    steps = ["max_steps=4", "eval_every=2", "micro_batch_size=4", "progress=false", "tensorboard=false",
             "save_every=0", "warmup_steps=0"]
    return ["knowledge", "curriculum", f"model.name={setup['model']}", f"data={setup['data']}",
            f"output_dir={out}", *PROBE, "lora.r=4", "lora.alpha=8", "max_length=64",
            "stage1.lr=0.01", "stage2.lr=0.003", *(f"stage1.{s}" for s in steps), *(f"stage2.{s}" for s in steps)]


def test_curriculum_runs_every_condition_and_resumes_after_the_last_finished_stage(setup, monkeypatch, capsys):
    out = setup["tmp"] / "study"
    real = training_mod.train_stage
    calls: list[str] = []

    def crash_on_stage2(model, tokenizer, facts, dev, cfg, run_dir, **kw):
        calls.append(run_dir.name)
        if run_dir.name == "two_stage" and calls.count("two_stage") == 1:
            raise KeyboardInterrupt
        return real(model, tokenizer, facts, dev, cfg, run_dir, **kw)

    import polm.knowledge.curriculum as curriculum_mod
    monkeypatch.setattr(curriculum_mod, "train_stage", crash_on_stage2)
    assert main(curriculum_args(setup, out)) == 130
    stages = json.loads((out / "stages.json").read_text())
    assert list(stages) == ["probe_base", "probe_noise", "stage1"]
    stage1_weights = (out / "stage1" / "final" / "adapter_model.safetensors").read_bytes()
    assert main(curriculum_args(setup, out)) == 0          # resumes: stage 1 is not trained again
    assert calls == ["stage1", "two_stage", "two_stage", "two_stage_no_replay", "one_stage_all", "one_stage_maybe"]
    assert (out / "stage1" / "final" / "adapter_model.safetensors").read_bytes() == stage1_weights
    report = json.loads((out / "report.json").read_text())
    stages = json.loads((out / "stages.json").read_text())
    base = {r["key"]: r for r in map(json.loads, (out / "probe_base" / "facts.jsonl").read_text().splitlines())}
    train_base = {k: r["category"] for k, r in base.items() if r["split"] == "train"}
    maybe = sorted(k for k, c in train_base.items() if c == "MaybeKnown")
    highly = sorted(k for k, c in train_base.items() if c == "HighlyKnown")
    assert sorted(stages["stage1"]["trained_keys"]) == maybe
    assert sorted(stages["one_stage_maybe"]["trained_keys"]) == maybe
    assert len(stages["one_stage_all"]["trained_keys"]) == 12
    # stage 2: MaybeKnown + upgraded WK/UNK + round(0.5 x HighlyKnown) replayed; without replay, none replayed
    replayed = set(stages["two_stage"]["trained_keys"]) & set(highly)
    assert len(replayed) == round(0.5 * len(highly)) and not set(stages["two_stage_no_replay"]["trained_keys"]) & set(highly)
    assert set(maybe) <= set(stages["two_stage_no_replay"]["trained_keys"])
    assert stages["one_stage_all"]["steps"] == 8 and stages["two_stage"]["steps"] == 4   # same budget: 4 + 4
    for cond, row in report["conditions"].items():
        assert sum(row["transitions"].values()) > 0 and row["test_accuracy"]["n"] == 4
        after = {r["key"]: r["category"] for r in
                 map(json.loads, (out / cond / "probe" / "facts.jsonl").read_text().splitlines())}
        assert row["acquired"] == sum(c == "HighlyKnown" for c in after.values())
        assert row["forgotten"] == sum(train_base[k] == "HighlyKnown" != after[k] for k in after)
    assert report["noise_summary"]["facts"] == 12
    assert json.loads((out / "run.json").read_text())["status"] == "completed"
    assert "two_stage" in capsys.readouterr().out


def test_the_example_configs_load_and_run(setup):
    from polm.config import load_config
    from polm.knowledge.curriculum import CurriculumConfig

    root = Path(__file__).resolve().parents[2]
    study = load_config(CurriculumConfig, root / "configs/knowledge_curriculum.yaml")
    study.validate()
    assert study.max_facts == {"train": 150, "dev": 50, "test": 50} and study.stage2.lr < study.stage1.lr
    out = setup["tmp"] / "from-config"
    assert main(["knowledge", "probe", str(root / "configs/knowledge_probe.yaml"), *PROBE, "--model", setup["model"],
                 "--data", setup["data"], "--out", str(out)]) == 0
    assert json.loads((out / "counts.json").read_text())["settings"]["n_samples"] == 4
