"""What a probe writes: per-fact results (facts.jsonl), category counts and shares (counts.json) and a PNG
bar chart of the categories (categories.png), all atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from polm.io import atomic_file, atomic_write_json, atomic_write_text
from polm.knowledge.categories import CATEGORIES, category_counts


def counts_summary(results: list[dict]) -> dict[str, Any]:
    """{facts, counts: {category: n}, shares: {category: n / facts}}."""
    counts = category_counts([r["category"] for r in results])
    n = len(results)
    return {"facts": n, "counts": counts, "shares": {c: counts[c] / n if n else 0.0 for c in CATEGORIES}}


def write_probe(out_dir: str | Path, results: list[dict], meta: dict[str, Any]) -> dict[str, Any]:
    """facts.jsonl + counts.json (with `meta`) + categories.png in `out_dir`; returns the counts JSON."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "facts.jsonl", "".join(json.dumps(r) + "\n" for r in results))
    summary = {**meta, **counts_summary(results)}
    atomic_write_json(out / "counts.json", summary)
    plot_categories(summary["counts"], out / "categories.png", title=str(meta.get("model", "")))
    return summary


def plot_categories(counts: dict[str, int], path: Path, title: str = "") -> Path:
    """A bar chart of facts per SliCK category (matplotlib Agg, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    values = [counts.get(c, 0) for c in CATEGORIES]
    bars = ax.bar(CATEGORIES, values, color=["#2b8a3e", "#74b816", "#f59f00", "#c92a2a"])
    ax.bar_label(bars)
    ax.set(ylabel="facts", title=f"SliCK categories {title}".strip())
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
