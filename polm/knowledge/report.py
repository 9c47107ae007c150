"""What a probe writes: per-fact results (facts.jsonl), category counts and shares (counts.json) and a PNG
bar chart of the categories (categories.png); and what a retention comparison of two probes writes
(retention.json, retention.png). All atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from polm.io import atomic_file, atomic_write_json, atomic_write_text
from polm.knowledge.categories import (
    CATEGORIES,
    category_counts,
    retained_accuracy,
    transition_matrix,
    transition_summary,
)

COLORS = ["#2b8a3e", "#74b816", "#f59f00", "#c92a2a"]   # one per category, most known first
RETENTION_METRIC = "mean P(T=0) after, over the facts HighlyKnown before"


def counts_summary(results: list[dict]) -> dict[str, Any]:
    """{facts, counts: {category: n}, shares: {category: n / facts}}."""
    counts = category_counts([r["category"] for r in results])
    n = len(results)
    return {"facts": n, "counts": counts, "shares": {c: counts[c] / n if n else 0.0 for c in CATEGORIES}}


def write_probe(out_dir: str | Path, results: list[dict], meta: dict[str, Any]) -> dict[str, Any]:
    """facts.jsonl + counts.json (with `meta`) + categories.png in `out_dir`; returns the counts JSON."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "facts.jsonl", "".join(json.dumps(r) + "\n" for r in results))
    summary = {**meta, **counts_summary(results)}
    atomic_write_json(out / "counts.json", summary)
    plot_categories(summary["counts"], out / "categories.png", title=str(meta.get("model", "")))
    return summary


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def plot_categories(counts: dict[str, int], path: Path, title: str = "") -> Path:
    """A bar chart of facts per SliCK category (matplotlib Agg, no display)."""
    fig = _figure(6, 3.5)
    ax = fig.add_subplot()
    values = [counts.get(c, 0) for c in CATEGORIES]
    bars = ax.bar(CATEGORIES, values, color=COLORS)
    ax.bar_label(bars)
    ax.set(ylabel="facts", title=f"SliCK categories {title}".strip())
    return _save(fig, path)


# --- retention: two probes of the same facts ------------------------------------------------------------

def retention_report(before: list[dict], after: list[dict], meta: dict[str, Any]) -> dict[str, Any]:
    """retention.json of two probes' per-fact rows (as facts.jsonl holds them), over the facts both hold:
    category counts before and after, the before -> after transition matrix and its summary, HighlyKnown
    -> lower, and the retention (categories.retained_accuracy) with a bootstrap 95% CI over those facts
    (n = 0 and nan when none was HighlyKnown before)."""
    from polm.eval.stats import summarize

    cat_a = {r["key"]: r["category"] for r in before}
    cat_b = {r["key"]: r["category"] for r in after}
    shared = sorted(cat_a.keys() & cat_b.keys())
    matrix = transition_matrix(cat_a, cat_b)
    summary = transition_summary(matrix)
    scores = retained_accuracy(cat_a, {r["key"]: r["p_greedy"] for r in after})
    return {**meta, "facts": len(shared),
            "counts_before": category_counts([cat_a[k] for k in shared]),
            "counts_after": category_counts([cat_b[k] for k in shared]),
            "highly_known_before": len(scores), "highly_known_kept": matrix["HighlyKnown"]["HighlyKnown"],
            "highly_known_lost": summary["highly_known_lost"],
            "retention": summarize(scores), "retention_metric": RETENTION_METRIC,
            "matrix": matrix, "transitions": summary, "plot": "retention.png"}


def write_retention(out_dir: str | Path, report: dict[str, Any]) -> dict[str, Any]:
    """retention.json + retention.png (category bars before/after beside the matrix) in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_retention(report, out / report["plot"])
    atomic_write_json(out / "retention.json", report)
    return report


def plot_retention(report: dict[str, Any], path: Path) -> Path:
    """Left: facts per category before and after; right: the transition matrix as a heatmap of counts."""
    fig = _figure(10, 4)
    bars, heat = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    xs = range(len(CATEGORIES))
    for shift, key, label, alpha in ((-0.2, "counts_before", "before", 0.45), (0.2, "counts_after", "after", 1.0)):
        drawn = bars.bar([x + shift for x in xs], [report[key][c] for c in CATEGORIES], width=0.4, color=COLORS,
                         alpha=alpha, edgecolor="#222", label=label)
        bars.bar_label(drawn, fontsize=8)
    bars.set_xticks(list(xs), CATEGORIES, fontsize=8)
    ret = report["retention"]
    bars.set(ylabel="facts", title=f"retention {ret['value']:.3f} [{ret['ci_low']:.3f}, {ret['ci_high']:.3f}], "
                                   f"n={ret['n']}")
    bars.legend(fontsize=8)
    grid = [[report["matrix"][a][b] for b in CATEGORIES] for a in CATEGORIES]
    heat.imshow(grid, cmap="Blues")
    dark = max(max(row) for row in grid) / 2            # white text on the darker cells
    for i, row in enumerate(grid):
        for j, n in enumerate(row):
            if i == 0 and j > 0 and n > 0:             # HighlyKnown -> lower: red on a white box
                heat.text(j, i, str(n), ha="center", va="center", color="#c92a2a", fontweight="bold",
                          bbox={"facecolor": "white", "edgecolor": "#c92a2a"})
            else:
                heat.text(j, i, str(n), ha="center", va="center", color="white" if n > dark else "#222")
    heat.set_xticks(list(xs), CATEGORIES, fontsize=8)
    heat.set_yticks(list(xs), CATEGORIES, fontsize=8)
    lost, known = report["highly_known_lost"], report["highly_known_before"]
    heat.set(xlabel="after", ylabel="before", title=f"transitions: HighlyKnown -> lower {lost} of {known}")
    return _save(fig, path)
