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
def workspace(tmp_path: Path, tiny_tokenizer, monkeypatch) -> dict:
    """A tiny model directory and the fact set, in a fresh working directory (and so a fresh probe cache)."""
    model_dir = tmp_path / "model"
    build_tiny_llama(len(tiny_tokenizer), initializer_range=0.5).save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    data = tmp_path / "facts.jsonl"
    data.write_text("".join(json.dumps(f) + "\n" for f in facts()))
    monkeypatch.chdir(tmp_path)
    return {"model": str(model_dir), "data": str(data), "tmp": tmp_path}


@pytest.fixture()
def setup(workspace: dict, monkeypatch) -> dict:
    """The workspace with `fake_correct` deciding correctness: every category occurs."""
    monkeypatch.setattr(probe_mod, "is_correct", fake_correct)
    return workspace


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


RETENTION_PROBE = ["probe.n_prompts=2", "probe.k_shot=1", "probe.n_samples=2", "probe.max_new_tokens=4"]


def rows_by_key(path: Path) -> dict[str, dict]:
    return {r["key"]: r for r in map(json.loads, path.read_text().splitlines())}


@pytest.fixture()
def known(workspace: dict) -> dict:
    """Facts the tiny model really knows (real exact match): each even train item gets the model's own two
    greedy answers as aliases, so both its prompts answer correctly (HighlyKnown; aliases change neither the
    prompts nor the seeds); the odd items keep only their gold answer, which it never says."""
    tmp = workspace["tmp"]
    assert main(["knowledge", "probe", "--model", workspace["model"], "--data", workspace["data"], *RETENTION_PROBE,
                 "--out", str(tmp / "plain")]) == 0
    said = {r["question"]: r["greedy_answers"] for r in rows_by_key(tmp / "plain" / "facts.jsonl").values()}
    rows = [{**f, "aliases": said[f["question"]]} if f["split"] == "train" and int(f["doc_id"][6:]) % 2 == 0 else f
            for f in facts()]
    data = tmp / "known.jsonl"
    data.write_text("".join(json.dumps(f) + "\n" for f in rows))
    return {**workspace, "data": str(data)}


def retention_args(setup: dict, before: str, after: str, *extra: str) -> list[str]:
    return ["knowledge", "retention", "--before", before, "--after", after, "--data", setup["data"],
            *RETENTION_PROBE, *extra]


def test_retention_of_a_checkpoint_against_itself_loses_nothing(known, capsys):
    out = known["tmp"] / "self"
    assert main(retention_args(known, known["model"], known["model"], "--out", str(out))) == 0
    r = json.loads((out / "retention.json").read_text())
    counts = {"HighlyKnown": 6, "MaybeKnown": 0, "WeaklyKnown": 0, "Unknown": 6}   # 6 even train items known
    assert r["facts"] == 12 and r["counts_before"] == r["counts_after"] == counts
    assert r["highly_known_before"] == r["highly_known_kept"] == 6 and r["highly_known_lost"] == 0
    assert r["retention"] == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0, "n": 6}
    assert r["transitions"]["agreement"] == 1.0 and r["matrix"]["HighlyKnown"]["HighlyKnown"] == 6
    assert r["cache_hit"] == {"before": False, "after": True}       # the second probe is the first one, cached
    assert rows_by_key(out / "before" / "facts.jsonl") == rows_by_key(out / "after" / "facts.jsonl")
    assert (out / "retention.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "retention 1.000 [1.000, 1.000]" in printed and "HighlyKnown -> lower 0" in printed


def test_retention_after_training_on_other_answers_loses_known_facts_and_shows_in_the_report(known):
    from polm.knowledge.facts import load_facts
    from polm.knowledge.training import train_stage
    from polm.models import ModelConfig, load_model, load_tokenizer
    from polm.train.config import TrainConfig

    rows = load_facts(known["data"])
    other = [{**f, "answer": "hello world", "aliases": []} for f in rows if f["split"] == "train"]
    run = known["tmp"] / "sft"
    cfg = TrainConfig(lr=1e-3, max_steps=4, micro_batch_size=4, save_every=0, progress=False, tensorboard=False)
    train_stage(load_model(ModelConfig(name=known["model"]), trainable=True), load_tokenizer(known["model"]), other,
                [f for f in rows if f["split"] == "dev"], cfg, run, max_length=64)
    assert main(retention_args(known, known["model"], str(run / "final"))) == 0    # no --out: the run's retention/
    r = json.loads((run / "retention" / "retention.json").read_text())
    before = rows_by_key(run / "retention" / "before" / "facts.jsonl")
    after = rows_by_key(run / "retention" / "after" / "facts.jsonl")
    known_keys = [k for k, row in before.items() if row["category"] == "HighlyKnown"]
    assert len(known_keys) == r["highly_known_before"] == 6
    now = [after[k]["category"] for k in known_keys]
    kept, maybe, lost = now.count("HighlyKnown"), now.count("MaybeKnown"), 6 - now.count("HighlyKnown")
    assert 0 < lost < 6 and r["highly_known_lost"] == lost and r["highly_known_kept"] == kept
    assert r["matrix"]["HighlyKnown"] == {c: now.count(c) for c in ("HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown")}
    # a kept fact scores 1, a MaybeKnown one 1/2 (one of its two prompts right), a WeaklyKnown/Unknown one 0
    assert r["retention"]["value"] == pytest.approx((kept + maybe / 2) / 6) and r["retention"]["n"] == 6
    assert r["retention"]["ci_low"] < r["retention"]["value"] < r["retention"]["ci_high"]
    assert r["after"] == str(run / "final") and r["cache_hit"] == {"before": False, "after": False}

    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "<h2>Training" in page and "<h2>Retention" in page
    assert f"<td>{r['retention']['value']:.4g}</td>" in page and f"<td>{lost}</td>" in page
    assert 'href="retention/retention.json"' in page and 'href="retention/retention.png"' in page
    assert 'img src="retention/retention.png"' in page


def test_retention_bad_input_is_one_message(known, capsys):
    tmp, model = known["tmp"], known["model"]
    (tmp / "run" / "final").mkdir(parents=True)
    cases = [
        (retention_args(known, model, str(tmp / "nope"), "--out", "x"), f"--after checkpoint '{tmp / 'nope'}' does not exist"),
        (retention_args(known, str(tmp / "run"), model, "--out", "x"),
         f"is a directory without a model (no config.json or adapter_config.json); its checkpoint is {tmp / 'run' / 'final'}"),
        (retention_args(known, model, model), f"--after '{model}' is not a run's final/ checkpoint"),
        (["knowledge", "retention", "--before", model, "--data", known["data"]], "no --after checkpoint"),
        (retention_args({**known, "data": str(tmp / "facts.jsonl")}, model, model, "--out", "x"),
         "knows none of the 12 probed facts well (HighlyKnown 0, MaybeKnown 0, WeaklyKnown 0, Unknown 12)"),
    ]
    for args, message in cases:
        code = main(args)
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp / "x").exists()


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
        # its retention/ holds what `polm knowledge retention` writes, from the study's own two probes
        ret = json.loads((out / cond / "retention" / "retention.json").read_text())
        p_after = {k: r["p_greedy"] for k, r in rows_by_key(out / cond / "probe" / "facts.jsonl").items()}
        scores = [p_after[k] for k in highly]
        assert ret["highly_known_before"] == len(highly) and ret["highly_known_lost"] == row["forgotten"]
        assert ret["retention"]["value"] == pytest.approx(sum(scores) / len(scores)) and ret["retention"] == row["retention"]
        assert ret["before_probe"] == str(out / "probe_base") and ret["after_probe"] == str(out / cond / "probe")
        assert (out / cond / "retention" / "retention.png").is_file()
    assert report["noise_summary"]["facts"] == 12
    assert json.loads((out / "run.json").read_text())["status"] == "completed"
    assert "two_stage" in capsys.readouterr().out
    assert main(["report", str(out / "one_stage_all")]) == 0      # a condition's run report shows its retention
    page = (out / "one_stage_all" / "report.html").read_text()
    assert "<h2>Retention" in page and 'href="retention/retention.json"' in page


def test_idk_condition_trains_the_base_unknown_facts_on_i_dont_know(setup, monkeypatch, capsys):
    import polm.knowledge.curriculum as curriculum_mod

    trained: dict[str, list[dict]] = {}
    real = training_mod.train_stage

    def record(model, tokenizer, facts, dev, cfg, run_dir, **kw):
        trained[run_dir.name] = facts
        return real(model, tokenizer, facts, dev, cfg, run_dir, **kw)

    monkeypatch.setattr(curriculum_mod, "train_stage", record)
    out = setup["tmp"] / "idk"
    assert main([*curriculum_args(setup, out), "conditions=[one_stage_all,one_stage_all_idk]"]) == 0
    assert sorted(trained) == ["one_stage_all", "one_stage_all_idk"]          # no stage 1: no two-stage condition
    base = {r["question"]: r for r in rows_by_key(out / "probe_base" / "facts.jsonl").values() if r["split"] == "train"}
    unknown = {q for q, r in base.items() if r["category"] == "Unknown"}
    assert len(unknown) >= 3                                                    # train items 4m + 1, never right
    assert {f["question"]: f["answer"] for f in trained["one_stage_all_idk"]} == {
        q: "I don't know" if q in unknown else r["answer"] for q, r in base.items()}
    assert all(f["answer"] == base[f["question"]]["answer"] for f in trained["one_stage_all"])
    stages = json.loads((out / "stages.json").read_text())
    assert sorted(stages["one_stage_all_idk"]["idk_keys"]) == sorted(base[q]["key"] for q in unknown)
    assert stages["one_stage_all"]["idk_keys"] == []
    row = json.loads((out / "report.json").read_text())["conditions"]["one_stage_all_idk"]
    correct, idk = stages["one_stage_all_idk"]["test_correct"], stages["one_stage_all_idk"]["test_idk"]
    answered = [c for c, i in zip(correct, idk) if not i]
    assert row["idk_facts"] == len(unknown) and row["test_idk"]["value"] == pytest.approx(sum(idk) / 4)
    assert row["test_accuracy_answered"]["n"] == len(answered) == 4 - sum(idk)
    assert (out / "one_stage_all_idk" / "retention" / "retention.json").is_file()
    printed = capsys.readouterr().out
    assert "answers 'I don't know' on" in printed.split("one_stage_all_idk")[-1]
    code = main([*curriculum_args(setup, setup["tmp"] / "idk-empty"), "conditions=[one_stage_all_idk]", 'idk_answer=""'])
    err = capsys.readouterr().err
    assert code == 2 and "idk_answer is empty" in err and not (setup["tmp"] / "idk-empty").exists()


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
    retention = setup["tmp"] / "retention-from-config"
    assert main(["knowledge", "retention", str(root / "configs/knowledge_retention.yaml"), *PROBE, "--before",
                 setup["model"], "--after", setup["model"], "--data", setup["data"], "--out", str(retention)]) == 0
    report = json.loads((retention / "retention.json").read_text())
    assert report["max_facts"] == 200 and report["settings"]["early_exit"] and report["highly_known_lost"] == 0
