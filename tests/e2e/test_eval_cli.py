"""`polm eval` through the CLI on tiny model directories: table, JSON, paired differences, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import build_tiny_llama


def polm(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "polm.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def second_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama-b")
    build_tiny_llama(len(tiny_tokenizer), seed=1).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def test_eval_two_models_writes_results_and_paired_differences(tiny_model_dir, second_model_dir, tmp_path):
    out = tmp_path / "ev"
    proc = polm("eval", "--model", str(tiny_model_dir), "--model", str(second_model_dir),
                "--task", "gpqa-diamond", "--task", "arith:chain_sum", "--limit", "6",
                "--max-new-tokens", "8", "--chat", "false", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "polm eval" in proc.stdout and "paired difference" in proc.stdout
    summary = json.loads((out / "results.json").read_text())
    assert summary["models"] == [str(tiny_model_dir), str(second_model_dir)]
    per_model = []
    for result in summary["results"]:
        entry = result["tasks"]["gpqa-diamond"]
        records = json.loads((out / _slug(result["model"]) / "gpqa-diamond.json").read_text())["records"]
        scores = [r["metrics"]["accuracy"] for r in records]
        assert entry["n"] == len(records) == 6
        assert entry["metrics"]["accuracy"]["value"] == pytest.approx(sum(scores) / 6)
        per_model.append(scores)
    diff = summary["comparisons"][0]["tasks"]["gpqa-diamond"]
    assert diff["diff"] == pytest.approx((sum(per_model[1]) - sum(per_model[0])) / 6)
    assert diff["ci_low"] <= diff["diff"] <= diff["ci_high"]


def test_eval_matches_the_in_process_runner(tiny_model_dir, tmp_path):
    from polm.eval.model import ModelAdapter
    from polm.eval.runner import evaluate

    proc = polm("eval", "--model", str(tiny_model_dir), "--task", "perplexity?n=4", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    cli = json.loads((tmp_path / "results.json").read_text())["results"][0]["tasks"]["perplexity?n=4"]
    here = evaluate(ModelAdapter.load(str(tiny_model_dir)), ["perplexity?n=4"])["tasks"]["perplexity?n=4"]
    assert cli["metrics"]["perplexity"]["value"] == pytest.approx(here["metrics"]["perplexity"]["value"], rel=1e-5)


def _slug(ref: str) -> str:
    from polm.eval.runner import slug

    return slug(ref)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("polm eval: error:")]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0]


def test_unknown_task_suggests_the_closest(tiny_model_dir, tmp_path):
    proc = polm("eval", "--model", str(tiny_model_dir), "--task", "gsm8", "--out", str(tmp_path))
    assert_one_line_error(proc, "unknown eval task 'gsm8'", "Did you mean 'gsm8k'?")


def test_malformed_task_file(tiny_model_dir, tmp_path):
    task = tmp_path / "task.yaml"
    task.write_text("data: q.jsonl\nprompt: [unclosed\n")
    proc = polm("eval", "--model", str(tiny_model_dir), "--task", str(task), "--out", str(tmp_path / "o"))
    assert_one_line_error(proc, f"{task}:", "not valid YAML")
    (tmp_path / "q.jsonl").write_text('{"question": "hi", "answer": "x"}\nnot json\n')
    task.write_text("data: q.jsonl\n")
    proc = polm("eval", "--model", str(tiny_model_dir), "--task", str(task), "--out", str(tmp_path / "o"))
    assert_one_line_error(proc, "q.jsonl:2", "not valid JSON")
    assert not (tmp_path / "o").exists()   # nothing ran, nothing written


def test_model_that_cannot_load(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama"}')
    proc = polm("eval", "--model", str(broken), "--task", "gsm8k", "--out", str(tmp_path / "o"))
    assert_one_line_error(proc, str(broken))
    proc = polm("eval", "--model", str(tmp_path / "missing"), "--task", "gsm8k", "--out", str(tmp_path / "o"))
    assert_one_line_error(proc, str(tmp_path / "missing"))


class _Page(HTMLParser):
    """Collects <img src> and table cells of the report."""

    def __init__(self):
        super().__init__()
        self.images, self.cells, self._in_cell = [], [], False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        self._in_cell = tag == "td"

    def handle_data(self, data):
        if self._in_cell:
            self.cells.append(data)


def test_report_html_with_training_curves_and_eval_bars(tiny_model_dir, tmp_path):
    from polm.eval.model import ModelAdapter
    from polm.eval.runner import evaluate

    run = tmp_path / "run"
    rows = [{"step": s, "loss": 3.0 / s, "lr": 1e-3, "grad_norm": 0.5} for s in range(1, 11)]
    rows += [{"step": s, "eval/gpqa-diamond/accuracy": s / 20} for s in (5, 10)]
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = evaluate(ModelAdapter.load(str(tiny_model_dir), chat="false"), ["gpqa-diamond"], limit=8,
                      out_dir=run / "eval")
    proc = polm("report", str(run))
    assert proc.returncode == 0, proc.stderr
    page = _Page()
    page.feed((run / "report.html").read_text())
    assert len(page.images) >= 5   # loss, lr, grad_norm, eval curves, metric bars, categories
    for src in page.images:
        png = run / src
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", src
    acc = result["tasks"]["gpqa-diamond"]["metrics"]["accuracy"]
    assert f"{acc['value']:.4g}" in page.cells and "8" in page.cells


def test_report_of_a_missing_directory(tmp_path):
    proc = polm("report", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("polm report: error: run directory") and len(proc.stderr.strip().splitlines()) == 1


def test_judge_win_rate_through_the_cli(tiny_model_dir, second_model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["What is 12 + 7?", "hello", "thanks"]))
    out = tmp_path / "judged"
    proc = polm("eval", "--model", str(tiny_model_dir), "--model", str(second_model_dir), "--judge",
                str(tiny_model_dir), "--judge-prompts", str(prompts), "--max-new-tokens", "4", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "win rate" in proc.stdout
    judged = json.loads((out / "judge.json").read_text())
    assert judged["n"] == 3 and judged["wins"] + judged["ties"] + judged["losses"] == 3
    assert judged["win_rate"] == pytest.approx(sum(r["score_a"] for r in judged["records"]) / 3)
    assert all(r["verdict_a_first"] in ("A", "B", "tie") and r["verdict_b_first"] in ("A", "B", "tie")
               for r in judged["records"])
    assert json.loads((out / "results.json").read_text())["judge"]["win_rate"] == judged["win_rate"]
    assert polm("report", str(out)).returncode == 0
    assert "LLM-as-judge" in (out / "report.html").read_text()
