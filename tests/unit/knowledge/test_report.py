"""What a retention comparison writes: retention.json's numbers from two hand-made probes, and its PNG."""

from __future__ import annotations

import json
import math

from polm.knowledge.report import retention_report, write_retention


def row(key: str, category: str, p_greedy: float) -> dict:
    return {"key": key, "category": category, "p_greedy": p_greedy}


BEFORE = [row("a", "HighlyKnown", 1.0), row("b", "HighlyKnown", 1.0), row("c", "HighlyKnown", 1.0),
          row("d", "MaybeKnown", 0.5), row("e", "Unknown", 0.0), row("only-before", "HighlyKnown", 1.0)]
AFTER = [row("a", "HighlyKnown", 1.0), row("b", "MaybeKnown", 0.5), row("c", "Unknown", 0.0),
         row("d", "HighlyKnown", 1.0), row("e", "WeaklyKnown", 0.0), row("only-after", "HighlyKnown", 1.0)]


def test_retention_report_by_hand():
    r = retention_report(BEFORE, AFTER, {"before": "base", "after": "tuned"})
    # shared facts a..e. HighlyKnown before: a, b, c -> after HK, MK (P(T=0) 0.5), UNK: retention (1 + 0.5 + 0) / 3
    assert r["before"] == "base" and r["after"] == "tuned" and r["facts"] == 5
    assert r["counts_before"] == {"HighlyKnown": 3, "MaybeKnown": 1, "WeaklyKnown": 0, "Unknown": 1}
    assert r["counts_after"] == {"HighlyKnown": 2, "MaybeKnown": 1, "WeaklyKnown": 1, "Unknown": 1}
    assert r["highly_known_before"] == 3 and r["highly_known_kept"] == 1 and r["highly_known_lost"] == 2
    assert r["matrix"]["HighlyKnown"] == {"HighlyKnown": 1, "MaybeKnown": 1, "WeaklyKnown": 0, "Unknown": 1}
    # unchanged a; upgraded d (MK -> HK), e (UNK -> WK); downgraded b, c
    assert r["transitions"] == {"facts": 5, "unchanged": 1, "upgraded": 2, "downgraded": 2, "highly_known_lost": 2,
                                "agreement": 0.2}
    # bootstrap over the scores [1, 0.5, 0]: a resample of all three the 0 (or the 1) has probability 1/27 = 3.7%,
    # above the 2.5% tails, so the 95% interval is the whole [0, 1]
    assert r["retention"] == {"value": 0.5, "ci_low": 0.0, "ci_high": 1.0, "n": 3}
    assert r["retention_metric"] == "mean P(T=0) after, over the facts HighlyKnown before"


def test_nothing_known_before_gives_no_retention():
    r = retention_report([row("a", "Unknown", 0.0)], [row("a", "HighlyKnown", 1.0)], {})
    assert r["highly_known_before"] == 0 and r["retention"]["n"] == 0 and math.isnan(r["retention"]["value"])


def test_write_retention_writes_the_json_and_the_png(tmp_path):
    report = write_retention(tmp_path / "retention", retention_report(BEFORE, AFTER, {"before": "b", "after": "a"}))
    assert json.loads((tmp_path / "retention" / "retention.json").read_text()) == report
    png = (tmp_path / "retention" / report["plot"]).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
