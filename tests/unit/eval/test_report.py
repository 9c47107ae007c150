"""The report's retention section: the numbers of retention.json, links to it and its PNG, from any run."""

from __future__ import annotations

import json

import pytest

from polm.errors import PolmError
from polm.eval.report import build_report
from polm.knowledge.report import retention_report, write_retention

BEFORE = [{"key": k, "category": "HighlyKnown", "p_greedy": 1.0} for k in "abcd"]
AFTER = [{"key": "a", "category": "HighlyKnown", "p_greedy": 1.0}, {"key": "b", "category": "MaybeKnown", "p_greedy": 0.5},
         {"key": "c", "category": "Unknown", "p_greedy": 0.0}, {"key": "d", "category": "WeaklyKnown", "p_greedy": 0.0}]


def cells(page: str) -> list[str]:
    return [c.split("</td>")[0] for c in page.split("<td>")[1:]]


def test_a_run_with_retention_shows_its_numbers_and_links(tmp_path):
    run = tmp_path / "sft"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 2.0 / s}) + "\n" for s in (1, 2)))
    write_retention(run / "retention", retention_report(BEFORE, AFTER, {"before": "base", "after": "sft/final"}))
    page = build_report([run], run).read_text()
    assert "<h2>Training" in page and "<h2>Retention" in page
    # 4 known before; kept a, lost b (-> MK), c (-> UNK), d (-> WK); retention (1 + 0.5 + 0 + 0) / 4
    row = cells(page)[:9]
    assert row[:7] + row[8:] == ["base", "sft/final", "4", "4", "3", "1 / 1 / 1", "0.375", "4"]
    # a resample of the two 0 scores only has probability (1/2)^4 = 6.25%, above the 2.5% tail: the CI starts at 0
    assert row[7].startswith("[0, ")
    assert 'href="retention/retention.json"' in page and 'href="retention/retention.png"' in page
    assert '<img src="retention/retention.png"' in page


def test_a_retention_directory_alone_is_a_report_and_links_stay_relative(tmp_path):
    write_retention(tmp_path / "ret", retention_report(BEFORE, AFTER, {"before": "base", "after": "x"}))
    page = build_report([tmp_path / "ret"], tmp_path / "out").read_text()
    assert 'href="../ret/retention.json"' in page and '<img src="../ret/retention.png"' in page
    with pytest.raises(PolmError, match="neither metrics.jsonl, evaluation results nor retention/retention.json"):
        build_report([tmp_path / "out"], tmp_path / "out2")
